"""Where a sealed cache's key comes from, and what a key looks like.

One job: turn ``key=``, ``key_file=`` or systemd's credential into a :class:`SecretKey`, or
say clearly why not. The key is 32 bytes (AES-256), given as:

- ``key=``: 32 raw bytes, or text holding 64 hex digits or the base64 of 32 bytes;
- ``key_file=``: a file holding 32 raw bytes, or 64 hex digits, or base64 (surrounding
  white space is ignored): ``head -c 32 /dev/urandom > cache.key`` makes one;
- neither: ``$CREDENTIALS_DIRECTORY/connectorsync.key`` when that file exists (systemd's
  ``LoadCredential=connectorsync.key:/etc/connectorsync/cache.key``
  or ``LoadCredentialEncrypted=``).

No passphrases: a key is random bytes, not something typed (decided for issue 19).

Guarantees (each proved by the test named):

- The key never appears in a repr, a log line, ``status()`` or an error message: a
  :class:`SecretKey` shows only its key id (``test_seal.py::test_the_key_never_shows``).
- A key of the wrong form is refused with what was expected, naming the file
  (``test_seal.py::test_a_key_of_the_wrong_form_is_refused_with_what_is_expected``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import string
from typing import Any

from .errors import ArgumentTypeError, ConfigurationError

#: The name of the systemd credential (a file in ``$CREDENTIALS_DIRECTORY``) a Logger
#: without ``key``/``key_file`` takes its key from, when the file exists.
CREDENTIAL_NAME = "connectorsync.key"
KEY_BYTES = 32
_EXPECTED = (
    "a key is 32 raw bytes, 64 hex digits or the base64 of 32 bytes "
    "(make one with: head -c 32 /dev/urandom > cache.key)"
)


class SecretKey:
    """A 32-byte key; its repr shows only its key id (a hash), never the key."""

    __slots__ = ("_raw", "key_id", "source")

    def __init__(self, raw: bytes, source: str):
        self._raw = raw
        #: Names the key in messages and status without telling anything of it.
        self.key_id = hashlib.sha256(b"connectorsync key id\0" + raw).hexdigest()[:12]
        #: Where it came from (``key=``, a file's path): for messages.
        self.source = source

    @property
    def raw(self) -> bytes:
        return self._raw

    def __repr__(self) -> str:
        return f"<SecretKey id {self.key_id} from {self.source}>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __reduce__(self) -> Any:  # never pickled into a child's arguments by mistake
        raise TypeError("a SecretKey is not pickled")


def parse_key(value: bytes | str, source: str) -> SecretKey:
    """The key ``value`` holds (32 raw bytes; or 64 hex digits or base64, as text or bytes).

    :raises ConfigurationError: any other form; the message says which forms are taken
    """
    if isinstance(value, bytes) and len(value) == KEY_BYTES:
        return SecretKey(value, source)
    try:
        text = value.decode("ascii") if isinstance(value, bytes) else value
    except UnicodeDecodeError:
        text = None
    raw = None if text is None else _decode_text(text.strip())
    if raw is None:
        size = len(value)
        unit = "bytes" if isinstance(value, bytes) else "characters"
        raise ConfigurationError(f"{source} holds {size} {unit}, not a key: {_EXPECTED}")
    return SecretKey(raw, source)


def _decode_text(text: str) -> bytes | None:
    if len(text) == 2 * KEY_BYTES and all(c in string.hexdigits for c in text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_BYTES else None


def read_key_file(path: str) -> SecretKey:
    """The key in the file ``path``.

    :raises ConfigurationError: the file cannot be read, or holds no key
    """
    source = f"key file {path!r}"
    try:
        with open(path, "rb") as f:
            content = f.read(4096)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read {source}: {exc.strerror or exc}; nothing was changed"
        ) from None
    return parse_key(content, source)


def find_key(key: SecretKey | None, key_file: str | None) -> SecretKey | None:
    """The key a Logger uses: ``key``, else the one in ``key_file``, else systemd's
    credential :data:`CREDENTIAL_NAME` when ``$CREDENTIALS_DIRECTORY`` holds it, else None.

    :raises ConfigurationError: both given, or a file that holds no key
    """
    if key is not None and key_file is not None:
        raise ConfigurationError("give key= or key_file=, not both")
    if key is not None:
        return key
    if key_file is not None:
        return read_key_file(key_file)
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = os.path.join(directory, CREDENTIAL_NAME)
        if os.path.exists(path):
            return read_key_file(path)
    return None


# --------------------------------------------------------------------------- option checks


def key_option(name: str, value: Any) -> SecretKey | None:
    """The check of the option ``key``: None, a :class:`SecretKey`, or bytes/text of a key."""
    if value is None or isinstance(value, SecretKey):
        return value
    if not isinstance(value, bytes | str):
        raise ArgumentTypeError(
            f"{name} must be 32 bytes, or text of 64 hex digits or base64; got "
            f"{type(value).__name__}"
        )
    return parse_key(value, f"{name}=")


def key_file_option(name: str, value: Any) -> str | None:
    """The check of the option ``key_file``: None or a path (read when the cache opens)."""
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise ArgumentTypeError(f"{name} must be a path; got {type(value).__name__}")
    return os.fspath(value)
