"""The asyncio side of :class:`~connectorsync.remotes.nats.NATSRemote`: an event loop of the
remote's own, run in the calling thread, and one JetStream connection on it.

nats-py is asyncio only. The syncer is threads. :class:`OwnLoop` bridges them without a
thread of its own: each call runs a coroutine to its end on a loop the remote owns, in the
thread that called (the syncer's). Between calls the loop stands still: nats-py's reader,
flusher and pinger tasks wait, and the server's PINGs wait in the socket (the next call
checks the connection with a round trip before it publishes anything).
:meth:`OwnLoop.close` cancels what is left, shuts the default executor (a host name is
resolved in one) and closes the loop: no task, thread or socket outlives it
(``tests/test_nats.py::test_close_leaves_no_thread_socket_or_task``).

:class:`JetStreamSession` publishes with its own reply subjects instead of nats-py's
``publish_async``, whose reply handler loses the future of a publish the stream refuses
(``APIError.from_error`` raises inside the callback): here every publish gets its answer, a
refusal, or the end of the connection, and a window bounds how many wait at once.
:class:`Tally` sums up one push's answers, worst first, for the remote to raise.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._nats_checks import recheck_creds

_T = TypeVar("_T")


#: A publish whose answer did not come: the connection ended, or ``timeout`` passed.
LOST = "lost"


@dataclass(frozen=True)
class Answer:
    """What JetStream said of one publish: stored (``duplicate``: it was there already), or
    refused with ``code``/``err_code``/``description``, or no stream listens (``code`` 503,
    ``no_stream``)."""

    stored: bool
    duplicate: bool = False
    code: int = 0
    err_code: int = 0
    description: str = ""
    no_stream: bool = False


@dataclass(frozen=True)
class StreamFacts:
    """The JetStream stream that holds a subject: its name, subjects and
    ``duplicate_window`` (seconds; 0 when the stream keeps none)."""

    name: str
    subjects: tuple[str, ...]
    duplicate_window: float


class OwnLoop:
    """An event loop created at the first :meth:`run`, run in the calling thread only while a
    call runs; :meth:`cancel` from another thread ends the call under way."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._guard = threading.Lock()  # _task, between run() and cancel()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` to its end here; what it returned or raised. A call that
        :meth:`cancel` ended raises :class:`asyncio.CancelledError`."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        loop = self._loop
        task = loop.create_task(coro)
        with self._guard:
            self._task = task
        try:
            return loop.run_until_complete(task)
        finally:
            with self._guard:
                self._task = None

    def cancel(self) -> None:
        """From another thread: cancel the call under way, if any (it ends at its next
        await, raising :class:`asyncio.CancelledError` in its thread)."""
        with self._guard:
            task, loop = self._task, self._loop
            if task is not None and loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)

    def close(self) -> None:
        """Cancel every task left on the loop, wait for them, shut the executor and close
        the loop. Idempotent; not while :meth:`run` runs."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            left = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


@dataclass(frozen=True)
class Login:
    """How to connect: the server, credentials (at most one kind) and TLS."""

    url: str
    user: str | None
    password: str | None = field(repr=False)  # never shown
    token: str | None = field(repr=False)
    credentials: str | None
    tls: ssl.SSLContext | None
    timeout: float


class JetStreamSession:
    """One connection to a NATS server, made by :meth:`open`, that never reconnects by
    itself (the cache is the session: what lacks an answer is sent again by the pass)."""

    def __init__(self, nc: Any, inbox: str) -> None:
        self.nc = nc
        self._inbox = inbox
        self._waiting: dict[str, asyncio.Future[Answer]] = {}
        self._next = 0
        self.lost = False
        self._ended = asyncio.Event()  # set with lost: what waits on the connection stops
        #: The server's "Permissions Violation" for this connection, if it said one.
        self.denied: str | None = None
        #: Payload bytes of the publishes handed to the connection so far.
        self.published_bytes = 0
        #: The errors nats-py reported (connecting, or the server's -ERR), newest last.
        self.errors: list[BaseException] = []

    @classmethod
    async def open(cls, login: Login) -> JetStreamSession:
        """Connect and subscribe to this session's reply subjects.

        :raises BaseException: what nats-py raised, with what it reported while trying in
            its ``connect_errors`` attribute
        """
        from nats.aio.client import Client

        if login.credentials is not None:
            # Checked again here: the file may have changed since the remote was built, and
            # nats-py never returns from a file without a JWT (see creds_problem).
            recheck_creds(login.credentials)
        errors: list[BaseException] = []
        holder: list[JetStreamSession] = []

        async def on_error(exc: BaseException) -> None:
            errors.append(exc)
            if "permissions violation" in str(exc).lower():
                for session in holder:
                    session.deny(str(exc))

        async def on_lost() -> None:
            for session in holder:
                session.fail_all()

        options: dict[str, Any] = {
            "servers": [login.url],
            "error_cb": on_error,
            "disconnected_cb": on_lost,
            "closed_cb": on_lost,
            "allow_reconnect": False,
            # nats-py tries a server max_reconnect_attempts + 1 times before giving up
            # (0 would mean for ever): two attempts, each half the timeout, no pause between.
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0,
            "connect_timeout": max(login.timeout / 2, 0.001),
            "name": "connectorsync",
            "ping_interval": 3600,  # the loop stands still between calls: no pings of ours
        }
        if login.user is not None:
            options.update(user=login.user, password=login.password)
        if login.token is not None:
            options["token"] = login.token
        if login.credentials is not None:
            options["user_credentials"] = login.credentials
        if login.tls is not None:
            options["tls"] = login.tls
        nc = Client()
        try:
            await nc.connect(**options)
        except BaseException as exc:
            exc.connect_errors = errors  # type: ignore[attr-defined]
            await _quietly_close(nc, min(login.timeout, 1.0))
            raise
        session = cls(nc, nc.new_inbox())
        session.errors = errors
        holder.append(session)
        await nc.subscribe(session._inbox + ".*", cb=session._answer)
        return session

    @property
    def max_payload(self) -> int:
        return int(self.nc.max_payload)

    async def alive(self, timeout: float) -> bool:
        """Whether the connection still works: a PING answered within ``timeout``."""
        if self.lost or not self.nc.is_connected:
            return False
        # Raced with the connection's end: a server that went away (restarted, stopped)
        # closed the socket while the loop stood still, and nats-py does not fail a PING
        # waiting on a connection that ends: it would wait the whole timeout.
        flush = asyncio.ensure_future(self.nc.flush(timeout))
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({flush, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (flush, ended):
                task.cancel()
            await asyncio.gather(flush, ended, return_exceptions=True)
        answered = flush.done() and not flush.cancelled() and flush.exception() is None
        return answered and not self.lost

    async def publish_all(
        self,
        subject: str,
        messages: list[tuple[str, bytes]],
        window: int,
        timeout: float,
    ) -> list[Answer | str]:
        """Publish each ``(msg_id, payload)`` to ``subject`` with at most ``window`` waiting
        for an answer; each one's :class:`Answer`, or :data:`LOST` when the connection ended
        or no answer came for ``timeout`` seconds (of silence: each answer restarts it)."""
        results: list[Answer | str] = [LOST] * len(messages)
        pending: dict[asyncio.Future[Answer], int] = {}
        sent = 0
        while sent < len(messages) or pending:
            while sent < len(messages) and len(pending) < window and not self.lost:
                msg_id, payload = messages[sent]
                token = str(self._next)
                self._next += 1
                future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
                self._waiting[token] = future
                pending[future] = sent
                sent += 1
                try:
                    await self.nc.publish(
                        subject,
                        payload,
                        reply=f"{self._inbox}.{token}",
                        headers={"Nats-Msg-Id": msg_id},
                    )
                except Exception as exc:
                    self.errors.append(exc)
                    self.fail_all()
                else:
                    self.published_bytes += len(payload)
            if self.lost and sent < len(messages):
                sent = len(messages)  # the rest were never sent: LOST, nothing stored
            if not pending:
                break
            done, _ = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # silence for `timeout`: what waits is LOST
                self.fail_all()
                break
            for future in done:
                index = pending.pop(future)
                if not future.cancelled() and future.exception() is None:
                    results[index] = future.result()
        for future in pending:
            future.cancel()
        return results

    def deny(self, why: str) -> None:
        """The server refused a publish or subscription of ours: what waits ends now (the
        server sends no answer to a publish it refused this way)."""
        self.denied = why
        self.fail_all()

    def fail_all(self) -> None:
        """The connection ended (or went silent): every publish waiting stays LOST."""
        self.lost = True
        self._ended.set()
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.cancel()

    async def _answer(self, msg: Any) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        future = self._waiting.pop(token, None)
        if future is None or future.done():
            return
        future.set_result(parse_answer(msg.headers, msg.data))

    async def stream_for(self, subject: str, timeout: float) -> StreamFacts | None:
        """The stream that holds ``subject``, or None when none does.

        :raises Exception: nats-py's, when the JetStream API does not answer
        """
        from nats.js.errors import NotFoundError

        js = self.nc.jetstream(timeout=timeout)
        try:
            name = await js.find_stream_name_by_subject(subject)
        except NotFoundError:
            return None
        info = await js.stream_info(name)
        config = info.config
        return StreamFacts(
            name=name,
            subjects=tuple(config.subjects or ()),
            duplicate_window=float(config.duplicate_window or 0.0),
        )

    async def last_message(self, stream: str, subject: str, timeout: float) -> bytes | None:
        """The payload of the newest message ``stream`` holds on ``subject``, or None."""
        from nats.js.errors import NotFoundError

        js = self.nc.jetstream(timeout=timeout)
        try:
            message = await js.get_last_msg(stream, subject)
        except NotFoundError:
            return None
        return bytes(message.data) if message.data is not None else b""

    async def create_stream(self, name: str, subjects: list[str], timeout: float) -> None:
        """Create the stream ``name`` on ``subjects`` with the server's defaults."""
        js = self.nc.jetstream(timeout=timeout)
        await js.add_stream(name=name, subjects=subjects)

    async def close(self) -> None:
        self.fail_all()
        await _quietly_close(self.nc)


def parse_answer(headers: dict[str, str] | None, data: bytes) -> Answer:
    """JetStream's answer to a publish: a status header (503: no stream listens) or JSON,
    ``{"stream", "seq", "duplicate"}`` or ``{"error": {"code", "err_code", "description"}}``."""
    status = (headers or {}).get("Status")
    if status and not data:
        code = int(status) if status.isdigit() else 0
        description = (headers or {}).get("Description", "") or "no responders"
        return Answer(False, code=code, description=description, no_stream=code == 503)
    try:
        body = json.loads(data)
    except ValueError:
        return Answer(False, description=f"not a JetStream answer: {data[:80]!r}")
    error = body.get("error")
    if error:
        return Answer(
            False,
            code=int(error.get("code", 0)),
            err_code=int(error.get("err_code", 0)),
            description=str(error.get("description", "")),
        )
    return Answer(True, duplicate=bool(body.get("duplicate")))


async def _quietly_close(nc: Any, timeout: float = 5.0) -> None:
    """Close ``nc``, at most ``timeout`` seconds: after a TLS handshake that failed, nats-py
    waits for ever for the plain transport it handed over to close."""
    try:
        await asyncio.wait_for(nc.close(), timeout)
    except Exception:  # closing what failed: nothing left to tell
        return


_FULL = ("maximum messages", "maximum bytes", "resource limits exceeded")
_TOO_LARGE = "message size exceeds maximum"


@dataclass
class Tally:
    """What the answers of one push came to, worst first: unanswered, no stream, the
    stream full, datapoints refused, another refusal."""

    lost: int = 0
    no_stream: bool = False
    full: Answer | None = None
    other: Answer | None = None
    refused: list[str] = field(default_factory=list)

    def add(self, point_id: int, answer: Answer | str, stream_name: str) -> None:
        if isinstance(answer, str):
            self.lost += 1
            return
        if answer.stored:
            return
        text = answer.description.lower()
        if answer.no_stream:
            self.no_stream = True
        elif any(f in text for f in _FULL):
            self.full = self.full or answer
        elif _TOO_LARGE in text:
            self.refused.append(
                f"the stream {stream_name!r} refused datapoint {point_id}: {answer.description}"
            )
        else:
            self.other = self.other or answer


def in_a_running_loop() -> bool:
    """Whether this thread runs an asyncio event loop now (a blocking call would stall it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def describe(exc: BaseException) -> str:
    """An exception as ``Type: text`` (or its type alone), for an error message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
