"""NATSRemote: publish datapoints to a NATS JetStream stream, exactly once within the stream's
``duplicate_window``.

Each datapoint is one message to ``subject`` (``{stream}`` replaced by the stream's name),
``{"stream": s, "id": cache id, "t": seconds, "d": value}``, with the header ``Nats-Msg-Id:
<cache identity>:<stream>:<id>:<t>``: the same on every resend of that datapoint, different in
every other cache (the Logger binds the remote to its cache's identity,
:class:`~connectorsync.remotes.base.CacheBound`). The timestamp is in it because an id can
come back: with ``durability="normal"`` a power cut can take back a datapoint's insert after
it was delivered, and the next datapoint then gets its id; with the same id alone JetStream
would drop that new reading as a duplicate
(``tests/test_nats.py::test_an_id_the_cache_gives_again_after_a_rollback_is_not_a_duplicate``).
JetStream drops a message whose id it stored within the stream's ``duplicate_window`` and
answers "duplicate": that counts as stored. So a batch sent again after a lost answer stores
nothing twice (delivery kind ``idempotent``;
``tests/test_nats.py::test_a_lost_ack_then_a_resend_stores_nothing_twice``,
``test_a_server_restart_in_the_middle_of_a_sync_loses_and_duplicates_nothing``).

A push returns once JetStream acknowledged every message of the batch, ``window`` of them
waiting for their acknowledgement at once. Errors:

- no stream holds the subject: :class:`~connectorsync.errors.TransientRemoteError` naming
  the subject and how to create one. It is configuration, not the datapoints' fault: they
  stay cached and each pass (with backoff) checks again, so a device logs before the
  operator made the stream, and ``add_stream`` works as it does offline;
  ``create_stream=`` makes one instead;
- a message over the server's ``max_payload``, or over the stream's ``max_msg_size``:
  :class:`~connectorsync.errors.RejectedError` (the datapoint becomes a dead letter; the
  first is never sent, a server closes the connection on it);
- a full stream with ``discard: new`` (maximum messages or bytes):
  :class:`~connectorsync.errors.TransientRemoteError`: kept, and sent again once the stream
  has room (it may drain by age, or its limits be raised);
- refused credentials, or a subject this user may not publish to (the server's
  "Permissions Violation", which answers no publish): :class:`~connectorsync.errors.AuthError`
  (the Logger pauses; ``test_nats.py::test_a_subject_the_user_may_not_publish_to_pauses_syncing``);
- the server unreachable, or the TLS certificate not verified, before anything was sent:
  :class:`~connectorsync.errors.TransientRemoteError`;
- sent, and the connection dropped or no acknowledgement within ``timeout``:
  :class:`~connectorsync.errors.AmbiguousRemoteError` (the pass sends the batch again).

Exactly once holds while a resend comes within ``duplicate_window`` of the first send. The
remote reads each stream's window and remembers when a datapoint was sent without an
answer; a resend later than the window is counted in :attr:`NATSRemote.late_resends`,
logged as a WARNING (stream, count, age, window) and said in the remote's ``repr``, which
``Logger.status().remote`` and ``connectorsync status`` show (as the last pass began)
(``test_nats.py::test_a_resend_outside_the_duplicate_window_is_said``).

nats-py (the ``nats`` extra: ``pip install 'connectorsync[nats]'``) runs on an event loop
of the remote's own, in the thread that calls it (:mod:`._nats_loop`): no thread of its
own, no reconnecting behind the syncer's back; :meth:`NATSRemote.close` leaves no task,
thread or socket (``test_nats.py::test_close_leaves_no_thread_socket_or_task``).
Credentials (password, token, the ``.creds`` file's contents) are never shown.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import json
import logging
import os
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from ..errors import (
    AmbiguousRemoteError,
    AuthError,
    ClosedError,
    ConfigurationError,
    RejectedError,
    RemoteError,
    TransientRemoteError,
)
from ._http import timeout_setting
from ._nats_checks import (
    check_credentials,
    check_identity,
    check_options,
    check_url,
    load_nats,
    tls_context,
)
from ._nats_loop import (
    LOST,
    Answer,
    JetStreamSession,
    Login,
    OwnLoop,
    StreamFacts,
    Tally,
    describe,
    in_a_running_loop,
)
from .base import (
    CacheBound,
    Datapoint,
    DeliveryKind,
    Describable,
    Metered,
    build_from_config,
    config_arguments,
    register_remote,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_MEMO = 1_000_000  # datapoints sent without an answer remembered, at most


@register_remote
class NATSRemote:
    """A NATS JetStream stream: each datapoint a message with a ``Nats-Msg-Id``.

    :param url: ``nats://host[:4222]`` or ``tls://host[:4222]``; no credentials in it (a
        server that asks for TLS gets it on ``nats://`` too, verified the same way)
    :param subject: the subject of a stream's messages; ``{stream}`` is replaced by its name
    :param user: with ``password``: a user of the server's ``authorization``
    :param password: never shown
    :param token: the server's token; never shown
    :param credentials: the path of a ``.creds`` file (a user JWT and its nkey seed: needs
        the ``nkeys`` package); checked to hold a JWT and a seed (never shown) before each
        connect, since nats-py loops for ever on a file without a JWT
    :param ca: a CA file to verify the server's certificate with (a private CA, a
        self-signed server); default: the system's CAs
    :param verify: False turns TLS verification off (testing only)
    :param timeout: seconds for connecting, for each JetStream API call, and of silence
        while acknowledgements are awaited
    :param window: publishes waiting for their acknowledgement at once, at most
    :param create_stream: the name of a stream to create, on ``subject`` with ``{stream}``
        as ``*``, when no stream holds a stream's subject; default None: never create one
        (its storage, replicas, limits and ``duplicate_window`` are the operator's choice)
    :param identity: the cache identity for message ids when the remote is used without a
        Logger; with a Logger, it must be that Logger's (``Logger.identity``) or left out
    :raises ConfigurationError: a bad argument (named), or nats-py is not installed
    """

    delivery_kind = DeliveryKind.IDEMPOTENT
    kind: ClassVar[str] = "nats"

    def __init__(  # noqa: PLR0913 - a server's settings, keyword-only past the subject
        self,
        url: str,
        subject: str = "sensors.{stream}",
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        credentials: str | None = None,
        ca: str | None = None,
        verify: bool = True,
        timeout: float = 30.0,
        window: int = 256,
        create_stream: str | None = None,
        identity: str | None = None,
    ) -> None:
        load_nats()
        self.url, self.host, self.port = check_url(url)
        check_credentials(user, password, token, credentials)
        check_options(subject, ca, verify, window, create_stream, identity)
        self.subject = subject
        self.timeout = timeout_setting("NATSRemote", timeout)
        self.window = window
        self.create_stream = create_stream
        self._login = Login(
            url=self.url,
            user=user,
            password=password,
            token=token,
            credentials=credentials,
            tls=tls_context(ca, verify)
            if (self.url.startswith("tls:") or ca or not verify)
            else None,
            timeout=self.timeout,
        )
        self._who = (
            user
            or ("token" if token else None)
            or (f"creds:{os.path.basename(credentials)}" if credentials else "anonymous")
        )
        self._config: dict[str, Any] = {"kind": self.kind, "url": url, "subject": subject}
        for name, value in (
            ("user", user), ("password", password), ("token", token),
            ("credentials", credentials), ("ca", ca), ("identity", identity),
            ("create_stream", create_stream),
        ):  # fmt: skip
            if value is not None:
                self._config[name] = value
        if not verify:
            self._config["verify"] = False
        if timeout != 30.0:
            self._config["timeout"] = timeout
        if window != 256:
            self._config["window"] = window
        self._identity = identity
        self._lock = threading.Lock()  # held by a call; close() does not wait for it
        self._loop = OwnLoop()
        self._session: JetStreamSession | None = None
        self._closed = False
        # A remote its program never closed is closed as the interpreter exits: its loop's
        # tasks end quietly instead of being destroyed pending. Weakly: it never keeps the
        # remote alive.
        self._at_exit = _close_at_exit(weakref.ref(self))
        atexit.register(self._at_exit)
        self._streams: dict[str, StreamFacts] = {}  # subject -> the stream that holds it
        # Per stream, datapoint id -> when (monotonic) it was first sent without an answer.
        self._unanswered: dict[str, dict[int, float]] = {}
        self._bytes = 0
        #: Datapoints sent again later than their stream's ``duplicate_window`` after a send
        #: without an answer: each may be stored twice. Never decreases.
        self.late_resends = 0
        self._late_note = ""

    def __repr__(self) -> str:
        shown = f"NATSRemote({self.url!r}, subject={self.subject!r})"
        return f"{shown} [{self._late_note}]" if self._late_note else shown

    # ----------------------------------------------------------------------- as data

    def to_config(self) -> dict[str, Any]:
        """``{"kind": "nats", ...}`` with the constructor's arguments given (credentials too:
        the Logger keeps them only in the owner-only cache file)."""
        return copy.deepcopy(self._config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NATSRemote:
        """The remote a :meth:`to_config` describes (:meth:`.base.Describable.from_config`)."""
        kind, arguments = config_arguments(cls, config)
        return build_from_config(kind, cls, arguments)

    def bind_cache(self, identity: str) -> None:
        """Name messages by the cache ``identity`` (:class:`.base.CacheBound`); the same
        again changes nothing.

        :raises ConfigurationError: bound to (or given) another identity already
        """
        check_identity(identity)
        if self._identity is not None and self._identity != identity:
            raise ConfigurationError(
                f"NATSRemote {self.url}: bound to the cache {self._identity} already, not "
                f"{identity}: one remote object delivers one cache's datapoints (give each "
                "Logger a NATSRemote of its own)"
            )
        self._identity = identity

    def bytes_sent(self) -> int:
        """Bytes of message payloads published so far (:class:`.base.Metered`)."""
        return self._bytes

    # ----------------------------------------------------------------------- the contract

    def ping(self) -> str:
        """Connect (if not connected) and return ``who@host:port`` (the user, ``token``,
        ``creds:<file>`` or ``anonymous``)."""
        with self._lock:
            self._run(self._connected())
        return f"{self._who}@{self.host}:{self.port}"

    def ensure_stream(
        self, stream: str, schema: dict[str, Any], properties: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Check that a JetStream stream holds ``stream``'s subject and read its
        ``duplicate_window``; with ``create_stream=``, create that stream when none does.
        Returns None (JetStream keeps no schema).

        :raises TransientRemoteError: no stream holds the subject (the message says how to
            make one), or the JetStream API did not answer
        """
        with self._lock:
            self._run(self._stream_facts(self._subject(stream)))
        return None

    def stream_schema(self, stream: str) -> dict[str, Any] | None:
        """``{}``: JetStream takes any message and keeps no schema."""
        return {}

    def push(self, stream: str, batch: Sequence[Datapoint]) -> None:
        """Publish ``batch``, ``window`` messages awaiting their acknowledgement at once;
        return once JetStream acknowledged every one (a duplicate is acknowledged too).

        :raises ConfigurationError: no cache identity (no Logger bound it, no ``identity=``)
        :raises AmbiguousRemoteError: sent, and the connection dropped or fell silent
        :raises RejectedError: a message too large (``body`` says which limit); the rest
            were stored
        :raises TransientRemoteError: the server unreachable, the stream full, or no stream
            holds the subject
        :raises AuthError: credentials refused
        """
        if not batch:
            return
        identity = self._identity
        if identity is None:
            raise ConfigurationError(
                f"NATSRemote {self.url}: no cache identity for the message ids: give the "
                "remote to a Logger (which binds it), or pass identity="
            )
        with self._lock:
            self._run(self._push(identity, stream, batch))

    def reconcile(self, stream: str) -> float | None:
        """The timestamp of the newest message on ``stream``'s subject, or None (no stream,
        no message). Informative only: the pass never asks an idempotent remote, and a
        subject other caches publish to too holds their messages as well. Read-only.

        :raises TransientRemoteError: the server or its JetStream API did not answer
        """
        subject = self._subject(stream)
        with self._lock:
            return self._run(self._newest(subject))

    async def _newest(self, subject: str) -> float | None:
        facts = await self._find_stream(subject)
        if facts is None:
            return None  # no stream holds the subject: nothing stored
        session = await self._connected()
        try:
            body = await session.last_message(facts.name, subject, self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise TransientRemoteError(
                f"NATS {self.url}: reading the newest message on {subject!r} failed: "
                f"{describe(exc)}"
            ) from None
        if body is None:
            return None
        t = json.loads(body).get("t")
        return float(t) if isinstance(t, int | float) else None

    def close(self) -> None:
        """Disconnect and close the event loop, for good: later calls raise
        :class:`ClosedError`. Safe to call twice, and from another thread during a call,
        which then ends at once (a push: ambiguous, its batch sent again by a later pass)."""
        self._closed = True
        atexit.unregister(self._at_exit)
        if self._lock.acquire(blocking=False):
            try:
                self._shut()
            finally:
                self._lock.release()
            return
        self._loop.cancel()  # the call under way ends, and shuts everything as it leaves

    # ----------------------------------------------------------------------- plumbing

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the remote's loop, here; shut everything after a close()."""
        if self._closed:
            coro.close()
            raise ClosedError(f"NATS {self.url}: this remote was closed; nothing sent")
        if in_a_running_loop():
            coro.close()
            raise ConfigurationError(
                f"NATS {self.url}: NATSRemote's calls block until done; call them from a "
                "thread without a running asyncio event loop (the Logger's syncer is one)"
            )
        try:
            return self._loop.run(coro)
        except asyncio.CancelledError:
            raise AmbiguousRemoteError(
                f"NATS {self.url}: close() ended the call; what was in flight is sent again"
            ) from None
        finally:
            if self._closed:
                self._shut()

    def _shut(self) -> None:
        session, self._session = self._session, None
        try:
            if session is not None:
                self._loop.run(session.close())
        finally:
            self._loop.close()

    def _subject(self, stream: str) -> str:
        return self.subject.replace("{stream}", stream)

    async def _connected(self) -> JetStreamSession:
        """The live session, or a new one: a PING answered first tells a connection the
        server closed (it restarted) from a live one, before anything is published."""
        session = self._session
        if session is not None and await session.alive(self.timeout):
            return session
        self._session = None
        if session is not None:
            await session.close()
        try:
            self._session = await JetStreamSession.open(self._login)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self._connect_error(exc) from None
        return self._session

    def _connect_error(self, exc: BaseException) -> Exception:
        where = f"NATS {self.url}"
        seen = [*getattr(exc, "connect_errors", []), exc]
        texts = " ".join(str(e) for e in seen).lower()
        refused = {"AuthorizationError", "InvalidUserCredentialsError"}
        if "authorization violation" in texts or refused & {type(e).__name__ for e in seen}:
            return AuthError(f"{where}: credentials refused (authorization violation); check them")
        if any(type(e).__module__.split(".")[0] == "nkeys" for e in seen):
            # The .creds file's seed is no nkey seed: a credential that cannot work, as a
            # refused one cannot (its text is never shown).
            return AuthError(f"{where}: the credentials file's nkey seed is not valid; check it")
        for each in seen:
            if isinstance(each, ssl.SSLCertVerificationError):
                return TransientRemoteError(
                    f"{where}: TLS certificate verification failed ({each.verify_message}); "
                    "give the server's CA file as ca="
                )
        cause = next((e for e in reversed(seen) if type(e).__name__ != "NoServersError"), exc)
        return TransientRemoteError(f"{where}: cannot connect: {describe(cause)}")

    async def _stream_facts(self, subject: str) -> StreamFacts:
        """The stream holding ``subject`` (asked once per subject), created if asked to.

        :raises TransientRemoteError: none does (the message says how to make one)
        """
        facts = await self._find_stream(subject)
        if facts is None:
            raise TransientRemoteError(self._no_stream(subject))
        return facts

    async def _find_stream(self, subject: str) -> StreamFacts | None:
        """The stream holding ``subject``, created if asked to; None when none does."""
        known = self._streams.get(subject)
        if known is not None:
            return known
        session = await self._connected()
        try:
            facts = await session.stream_for(subject, self.timeout)
            if facts is None and self.create_stream is not None:
                pattern = self._subject("*")
                await session.create_stream(self.create_stream, [pattern], self.timeout)
                log.info("created JetStream stream %r on %r", self.create_stream, pattern)
                facts = await session.stream_for(subject, self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise TransientRemoteError(
                f"NATS {self.url}: the JetStream API did not answer about subject "
                f"{subject!r} ({describe(exc)}); is JetStream enabled on the server?"
            ) from None
        if facts is not None:
            self._streams[subject] = facts
        return facts

    def _no_stream(self, subject: str) -> str:
        return (
            f"NATS {self.url}: no JetStream stream holds subject {subject!r}; create one, "
            f"e.g. `nats stream add SENSORS --subjects {self._subject('*')!r}`, or give "
            "NATSRemote create_stream='SENSORS'"
        )

    async def _push(self, identity: str, stream: str, batch: Sequence[Datapoint]) -> None:
        subject = self._subject(stream)
        facts = await self._stream_facts(subject)
        session = await self._connected()
        self._warn_late(stream, batch, facts)
        name = json.dumps(stream)
        limit = session.max_payload
        messages: list[tuple[str, bytes]] = []
        sendable: list[Datapoint] = []
        too_large: list[str] = []
        for point in batch:
            point_id, t, d = point[0], point[1], point[2]
            msg_id = f"{identity}:{stream}:{point_id}:{t!r}"
            payload = f'{{"stream":{name},"id":{point_id},"t":{t!r},"d":{d}}}'.encode()
            size = len(payload) + len(msg_id) + _HEADER_OVERHEAD
            if size > limit:
                # A server closes the connection on a message over its max_payload: sent,
                # it would be a lost answer on every pass, and the stream blocked for ever.
                too_large.append(
                    f"not sent: datapoint {point_id} would be a message of {size} bytes, over "
                    f"the server's max_payload of {limit} bytes"
                )
                continue
            messages.append((msg_id, payload))
            sendable.append(point)
        before = session.published_bytes
        try:
            answers = await session.publish_all(subject, messages, self.window, self.timeout)
        finally:
            self._bytes += session.published_bytes - before
        if LOST in answers:  # the connection dropped or went silent: not used again
            self._session = None
            await session.close()
        if session.denied is not None:
            # The server refuses this user the subject (or the replies): no publish of it
            # was stored, and every pass would fail the same way until the account changes.
            raise AuthError(
                f"NATS {self.url}, stream {stream!r}: the server does not permit this user "
                f"to publish to {subject!r} or to receive the acknowledgements "
                f"({session.denied}); nothing of the batch was stored"
            )
        self._settle(stream, subject, facts, sendable, answers, too_large)

    def _settle(  # noqa: PLR0913 - one push's outcome, handed down
        self,
        stream: str,
        subject: str,
        facts: StreamFacts,
        points: list[Datapoint],
        answers: list[Answer | str],
        too_large: list[str],
    ) -> None:
        """Raise what the answers call for (nothing when all were stored), and remember
        when each unanswered datapoint was first sent."""
        where = f"NATS {self.url}, stream {stream!r}"
        unanswered = self._unanswered.setdefault(stream, {})
        if len(unanswered) > _MEMO:
            unanswered.clear()  # forgetting costs a warning, never a datapoint
        now = time.monotonic()
        tally = Tally(refused=list(too_large))
        for point, answer in zip(points, answers, strict=True):
            if isinstance(answer, str):
                unanswered.setdefault(point[0], now)
            else:
                unanswered.pop(point[0], None)
            tally.add(point[0], answer, facts.name)
        if tally.lost:
            raise AmbiguousRemoteError(
                f"{where}: {tally.lost} datapoint(s) sent without an acknowledgement (the "
                f"connection dropped or was silent for {self.timeout} s); they are sent again, and "
                f"JetStream drops what it has within its duplicate_window of "
                f"{facts.duplicate_window:g} s"
            )
        if tally.no_stream:
            self._streams.pop(subject, None)  # checked again next time
            raise TransientRemoteError(self._no_stream(subject))
        if (full := tally.full) is not None:
            raise TransientRemoteError(
                f"{where}: the JetStream stream {facts.name!r} is full and discards new "
                f"messages ({full.description}); kept and sent again once it has room "
                "(it may drain by age, or raise its max_msgs/max_bytes)",
                status=full.code,
            )
        if refused := tally.refused:
            raise RejectedError(
                f"{where}: {len(refused)} datapoint(s) refused; the first: {refused[0]}",
                status=413,
                body=refused[0],
            )
        if (other := tally.other) is not None:
            cls = TransientRemoteError if other.code in (408, 500, 503) else RemoteError
            raise cls(
                f"{where}: JetStream refused the publish: {other.code} "
                f"{other.description} (err_code {other.err_code})",
                status=other.code,
            )

    def _warn_late(self, stream: str, batch: Sequence[Datapoint], facts: StreamFacts) -> None:
        """Count and say the datapoints of ``batch`` first sent without an answer longer ago
        than the stream's ``duplicate_window``: JetStream may store them twice."""
        unanswered = self._unanswered.get(stream)
        if not unanswered:
            return
        first = batch[0][0]
        for stale in [i for i in unanswered if i < first]:
            del unanswered[stale]  # a pass never goes back: settled meanwhile
        now = time.monotonic()
        ages = [now - unanswered[p[0]] for p in batch if p[0] in unanswered]
        late = [age for age in ages if age > facts.duplicate_window]
        if not late:
            return
        self.late_resends += len(late)
        self._late_note = (
            f"{self.late_resends} datapoint(s) resent after the duplicate_window: may be "
            "stored twice"
        )
        log.warning(
            "NATS %s, stream %r: %d datapoint(s) sent again %.1f s after a send without an "
            "answer, later than the duplicate_window of %g s of JetStream stream %r: they "
            "may be stored twice (widen duplicate_window past the longest outage)",
            self.url, stream, len(late), max(late), facts.duplicate_window, facts.name,
        )  # fmt: skip
        for point in batch:
            unanswered.pop(point[0], None)  # said once


_HEADER_OVERHEAD = len(b"NATS/1.0\r\nNats-Msg-Id: \r\n\r\n")

# Conformance, where mypy sees it.
_: type[Describable] = NATSRemote
_b: type[CacheBound] = NATSRemote
_m: type[Metered] = NATSRemote


def _close_at_exit(remote: weakref.ref[NATSRemote]) -> Callable[[], None]:
    def close() -> None:
        if (alive := remote()) is not None:
            alive.close()

    return close
