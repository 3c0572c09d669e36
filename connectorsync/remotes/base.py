"""The contract every remote keeps. The syncer talks to remotes through this and nothing else.

A remote stores datapoints somewhere else. The syncer calls it from one thread at a time,
except ``prepare`` (below). Every method either returns as documented or raises
one of these, and nothing else:

- :class:`~connectorsync.errors.TransientRemoteError`: network trouble, a timeout before the
  request was sent, 408/429/5xx (but 501). Nothing was stored; the syncer retries later.
- :class:`~connectorsync.errors.AmbiguousRemoteError`: the request was sent but no answer came
  back (connection dropped, read timeout). The data may or may not be stored: the syncer asks
  :meth:`Remote.reconcile` before sending it again.
- :class:`~connectorsync.errors.RejectedError`: the remote refused the datapoints themselves.
  Only :meth:`Remote.push` raises it; resending the same batch will fail the same way.
- :class:`~connectorsync.errors.AuthError`: the credentials were refused. Nothing was stored.
- :class:`~connectorsync.errors.RemoteError`: anything else the remote answered with.

Every network call carries a timeout: no method blocks forever. A remote's ``repr`` names
where it delivers and never shows a credential: the Logger records it in the cache file.

Optionally, a remote has ``prepare(stream, batch)``: the syncer calls it, in a second thread,
with the next batch while the current one is on the wire, so that building a request body
overlaps waiting for the remote (:class:`Preparable`). The built-in remotes speak HTTP
through :mod:`connectorsync.remotes._http`, which keeps such bodies for ``push``.

A remote that describes itself (:class:`Describable`) can be built again in another process:
``to_config()`` gives its constructor's arguments as JSON data under a ``kind`` name, the
classmethod ``from_config(config)`` builds the same remote from them, and
:func:`register_remote` puts its class in the registry under that kind. The Logger records
a registered remote's configuration in its cache file, and ``connectorsync sync CACHE``
builds it again from there (:mod:`connectorsync.remotes.config`). These two methods are the
only way a remote becomes data and back. A remote without them works as well, in its own
program only.

Optionally, a remote has ``bytes_sent()`` (:class:`Metered`): what its requests put on the
wire so far. The sync pass reads it around each ``push`` and keeps the difference per stream
in the cache (``Logger.status().bytes_sent``). A remote without it is simply not counted.
"""

from __future__ import annotations

import enum
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

# What a remote receives, re-exported here as part of its contract: a batch (the sync pass
# hands it a Batch) is a Sequence of Datapoint, each the named tuple (id, t in seconds, d:
# the value as JSON text). Remotes that speak JSON can put the text in their body as it is,
# without decoding it. A plain (id, t, d) tuple is a datapoint too: remotes unpack or index,
# they do not require the names. Both live in connectorsync.batch, which the cache shares.
from ..batch import Batch as Batch
from ..batch import Datapoint as Datapoint
from ..errors import ArgumentTypeError, ConfigurationError, ConnectorSyncError

#: The longest span of seconds any timeout or period may give (about 31 years): longer ones
#: are not waits a thread or a socket can make (``threading.TIMEOUT_MAX`` is about 9.2e9 s,
#: and a socket's timeout overflows past it), so every pass would fail with an
#: OverflowError. Options (``options.py``) and remotes' ``timeout=`` refuse them
#: (``test_validation.py::test_seconds_no_wait_can_last_are_refused``).
MAX_SECONDS = 1e9


class DeliveryKind(enum.Enum):
    """How a remote stores a batch; the sync pass settles a batch sent without an answer
    (or cut short by a crash) by this and nothing else.

    - ``ORDERED``: all or nothing, in order, refusing older timestamps (ConnectorDB). The
      remote's newest timestamp says what arrived; the rest is sent again. Exactly once.
    - ``IDEMPOTENT``: may store part of a batch, and storing a datapoint twice changes nothing
      (InfluxDB: same measurement, tags and time overwrite). The whole batch is sent again;
      delivery is never inferred. Exactly once, as stored.
    - ``AT_LEAST_ONCE``: cannot say what it stored (a plain HTTP endpoint). The whole batch is
      sent again: duplicates are possible after a lost answer, never a loss.
    """

    ORDERED = "ordered"
    IDEMPOTENT = "idempotent"
    AT_LEAST_ONCE = "at_least_once"


@runtime_checkable
class Remote(Protocol):
    """What the syncer needs of a remote database."""

    #: How the remote stores a batch (see :class:`DeliveryKind`).
    delivery_kind: DeliveryKind

    def ping(self) -> str:
        """Check the connection and credentials; return who we are there (``user/device``).

        Safe to call any number of times.
        """
        ...

    def ensure_stream(
        self,
        stream: str,
        schema: dict[str, Any],
        properties: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Make sure ``stream`` exists remotely, creating it with ``schema`` and
        ``properties`` (ConnectorDB's ``nickname``, ``description``, ``icon``, ``datatype``,
        ``ephemeral``, ``downlink``; a remote without such properties ignores them) if it is
        missing.

        Returns the schema the stream already had on the remote (which may differ from
        ``schema``), or None when this call created it or the remote keeps no schemas.
        Calling it twice is safe: an existing stream is left as it is, properties included.
        The syncer calls it before a stream's first batch, ``add_stream`` when given a schema.
        """
        ...

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        """The schema of ``stream`` on the remote, or None when the remote has no such stream."""
        ...

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Store ``batch`` (in order, timestamps increasing) in ``stream``, all or nothing.

        The sync pass gives a :class:`~connectorsync.batch.Batch` of ``stream``; called by
        hand, any sequence of ``(id, t, d)`` tuples does, so a remote unpacks or indexes its
        datapoints rather than relying on their field names.

        Returns only when the remote acknowledged every datapoint of the batch; only then may
        the cache delete them. An empty batch returns at once.

        :raises RejectedError: the remote refused at least one datapoint; nothing was stored
            (or, for remotes that store the valid part, resending the batch is harmless)
        """
        ...

    def reconcile(self, stream: str) -> float | None:
        """The timestamp of the newest datapoint the remote holds for ``stream``, or None.

        Asked only of ``ORDERED`` remotes, after an :class:`AmbiguousRemoteError`: cached
        datapoints at or below this timestamp were delivered. Read-only, safe to call any
        number of times.
        """
        ...

    def close(self) -> None:
        """Release connections. Safe to call twice."""
        ...


@runtime_checkable
class Preparable(Protocol):
    """A remote that can make a batch's request body ahead of :meth:`Remote.push`."""

    def prepare(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Make the body of ``batch`` now, in the caller's (a second) thread. Never raises:
        whatever went wrong, ``push`` meets again when it makes the body itself."""
        ...


@runtime_checkable
class Metered(Protocol):
    """A remote that counts the bytes its requests put on the wire."""

    def bytes_sent(self) -> int:
        """Bytes of request bodies sent so far by this remote object, all streams and calls
        together, as they went on the wire (after compression). Request headers, TCP/TLS
        framing and answers are not counted. A request counts once it may have reached the
        remote (an error answer, or none, too; a failure to connect not). Never decreases;
        thread-safe. The pass calls it right before and after ``push``, in the thread that
        pushes, so the difference is that push's bytes (its retries inside ``push``
        included)."""
        ...


@runtime_checkable
class CacheBound(Protocol):
    """A remote that names the datapoints it sends by the cache they come from.

    An engine that drops a resent message by its id (NATS JetStream's ``Nats-Msg-Id``) or a
    resent row by a key needs an id for each datapoint that is the same on every resend and
    different from every other cache's: the cache's identity
    (:mod:`connectorsync.cache.identity`) and the datapoint's id give one.
    """

    def bind_cache(self, identity: str) -> None:
        """Deliver the datapoints of the cache whose identity is ``identity`` (32 lowercase
        hex digits). The Logger calls it on each remote that has it before the remote's
        first pass; calling it again with the same identity changes nothing.

        :raises ConfigurationError: bound to another cache already: one remote object
            delivers one cache's datapoints (give each Logger a remote of its own)
        """
        ...


def bind_cache(remote: Remote, identity: str) -> None:
    """``remote.bind_cache(identity)`` for a remote that has it (:class:`CacheBound`); nothing
    for one that has not."""
    if isinstance(remote, CacheBound):
        remote.bind_cache(identity)


@runtime_checkable
class Describable(Remote, Protocol):
    """A remote that describes itself as data, so that another process builds it again.

    Part of the remote contract for every remote connectorsync ships (mypy checks each class
    where it is written, at :func:`register_remote`; ``tests/test_remote_contract.py::
    test_every_registered_remote_describes_itself`` round-trips each). A remote of your own
    has it when it should be synced by ``connectorsync sync CACHE`` too: give its class
    these members and decorate it with :func:`register_remote`.
    """

    #: The name of the class's configurations (``"influxdb"``): ``to_config()["kind"]``.
    #: Letters, digits, ``_``, ``.`` and ``-``, starting with a letter; ``"custom"`` is taken.
    kind: ClassVar[str]

    def to_config(self) -> dict[str, Any]:
        """How to build this remote again: ``{"kind": <kind>, ...}`` with its constructor's
        arguments, as JSON data (str, numbers, bools, None, lists, dicts with str keys).

        Credentials are included: the Logger keeps the configuration only in its
        owner-only cache file, and nothing shows it (a ``repr`` never shows a credential).
        A remote that holds something that is not data (a function of the user's) answers
        ``{"kind": "custom", "what": <what it is, no secret>}``: it cannot be built again.
        Calling it twice gives equal dicts; changing the dict changes nothing in the remote.
        """
        ...

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Remote:
        """The remote that ``config`` (a ``to_config()`` of this class) describes.

        ``from_config(r.to_config()).to_config() == r.to_config()`` for every remote ``r``
        of the class. Builds an object only: no network call, no file touched.

        :raises ConfigurationError: a configuration of another kind, or arguments this
            class does not take (the message names the argument, never its value)
        """
        ...


#: Kinds of configuration, each the class that builds it (a class's own ``kind`` and its
#: ``presets``). Filled by :func:`register_remote` as each remote's module is imported.
_REGISTRY: dict[str, type[Describable]] = {}
_KIND = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_D = TypeVar("_D", bound=type[Describable])
_R = TypeVar("_R")


def register_remote(cls: _D) -> _D:
    """Class decorator: ``cls`` builds the configurations of its ``kind`` (and of the kinds
    named in its ``presets``: functions of its module that build a preset of it, like
    :func:`~connectorsync.thingsboard`), in every process that imports its module.

    Both are read from the class itself, not inherited: a subclass registers under a kind of
    its own, or is not registered (a Logger records it as a remote of your own, not as its
    base class). Registering a class again under its kinds (a module imported twice)
    replaces it.

    :raises ConfigurationError: no ``kind`` of its own, a kind that is not a name, a kind
        another class has, or no ``to_config``/``from_config``
    """
    if not isinstance(cls, type):
        raise ArgumentTypeError(
            f"register_remote(): cls must be a remote class; got {type(cls).__name__}"
        )
    own = vars(cls)
    kind, presets = own.get("kind"), own.get("presets", ())
    name = _name(cls)
    from_config = inspect.getattr_static(cls, "from_config", None)
    if not (callable(getattr(cls, "to_config", None)) and isinstance(from_config, classmethod)):
        raise ConfigurationError(f"{name} needs to_config() and a classmethod from_config()")
    if not isinstance(presets, tuple):
        raise ConfigurationError(f"{name}: presets must be a tuple of kinds; got {presets!r}")
    for each in (kind, *presets):
        if not isinstance(each, str) or not _KIND.fullmatch(each) or each == "custom":
            raise ConfigurationError(
                f"{name}: a remote kind is a name (letters, digits, _ . -; not 'custom'), "
                f"given as a class attribute of its own; got {each!r}"
            )
        taken = _REGISTRY.get(each)
        if taken is not None and _name(taken) != name:
            raise ConfigurationError(
                f"remote kind {each!r} is {_name(taken)}'s already: give {name} a kind of its own"
            )
    for each in (kind, *presets):
        _REGISTRY[each] = cls
    return cls


def registered_remotes() -> Mapping[str, type[Describable]]:
    """Every kind of configuration this process can build, each with its class (read-only)."""
    return MappingProxyType(dict(sorted(_REGISTRY.items())))


def config_arguments(
    cls: type[Describable], config: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """For a ``from_config``: the kind of ``config`` (one ``cls`` builds: its own or a
    preset's; a config without ``kind`` is taken as one of its own) and the rest of it, the
    arguments.

    :raises ArgumentTypeError: ``config`` is not a mapping
    :raises ConfigurationError: a kind ``cls`` does not build
    """
    where = f"{_name(cls)}.from_config()"
    if not isinstance(config, Mapping):
        raise ArgumentTypeError(
            f"{where}: config must be a dict (a to_config()); got {type(config).__name__}"
        )
    arguments = dict(config)
    kind = arguments.pop("kind", cls.kind)
    kinds = (vars(cls).get("kind", cls.kind), *vars(cls).get("presets", ()))
    if kind not in kinds:
        raise ConfigurationError(
            f"{where} builds the kinds {', '.join(map(repr, kinds))}; got {kind!r} "
            "(connectorsync.remotes.remote_from_config builds any registered kind)"
        )
    return kind, arguments


def build_from_config(kind: str, build: Callable[..., _R], arguments: Mapping[str, Any]) -> _R:
    """``build(**arguments)`` for a ``from_config``, with Python's errors for arguments that
    do not fit turned into a :class:`ConfigurationError` that names no argument's value (a
    configuration holds credentials)."""
    try:
        return build(**arguments)
    except ConnectorSyncError:
        raise
    except TypeError as exc:  # says which argument, never its value
        raise ConfigurationError(f"the recorded {kind} remote does not fit: {exc}") from None
    except (ValueError, AttributeError) as exc:  # their messages may hold a value: not said
        raise ConfigurationError(
            f"the recorded {kind} remote does not fit: an argument of the wrong kind "
            f"({type(exc).__name__})"
        ) from None


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def ensure_stream(
    remote: Remote, stream: str, schema: dict[str, Any], properties: Mapping[str, Any]
) -> dict[str, Any] | None:
    """``remote.ensure_stream(stream, schema, properties)``, with ``properties`` left out
    when there are none: a remote written for the contract before properties (``ensure_stream
    (stream, schema)``) keeps working for every stream registered without them."""
    if properties:
        return remote.ensure_stream(stream, schema, properties)
    return remote.ensure_stream(stream, schema)
