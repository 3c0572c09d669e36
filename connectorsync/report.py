"""What one sync pass did: :class:`SyncReport`, the one value a pass hands back.

A pass (:func:`connectorsync.delivery.run_pass`) fills it in and returns it, failures
included (a failed pass raises nothing); the syncer retries by it, and the step after the pass
(:mod:`connectorsync.afterpass`: metrics, callbacks, ``Logger.sync()``'s raising) reads it.
Kept apart from the pass so that readers need not import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import AmbiguousRemoteError, AuthError, ConnectorSyncError, TransientRemoteError


@dataclass
class SyncReport:
    """What one sync pass did.

    :ivar sent: datapoints delivered (and removed from the cache), per stream
    :ivar deadlettered: datapoints moved to the dead-letter table, per stream
    :ivar errors: the error message per stream that could not be fully synced; the key
        ``"*"`` when the pass could not start (remote unreachable, credentials refused,
        another process syncing)
    :ivar exception: the first exception met (one with a ``Retry-After`` is preferred, then a
        retryable one), for ``onsyncfail``, ``syncraise`` and the syncer's backoff
    :ivar sent_bytes: bytes of the values (JSON text, UTF-8) of the batches acknowledged, per
        stream (the metrics' ``connectorsync_delivered_bytes_total``); datapoints found
        delivered by reconciliation after a lost answer are in ``sent`` only
    :ivar remotes: with several remotes, each one's own report by name (see :func:`gather`);
        empty for a pass to one remote
    """

    sent: dict[str, int] = field(default_factory=dict)
    deadlettered: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    more: bool = field(default=False, repr=False)
    upto: int = field(default=0, repr=False, compare=False)
    exception: ConnectorSyncError | None = field(default=None, repr=False, compare=False)
    sent_bytes: dict[str, int] = field(default_factory=dict, repr=False)
    remotes: dict[str, SyncReport] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when every stream was synced completely."""
        return not self.errors

    @property
    def total_sent(self) -> int:
        """Datapoints delivered, all streams together."""
        return sum(self.sent.values())

    @property
    def message(self) -> str | None:
        """The errors on one line (None after a complete pass)."""
        if self.ok:
            return None
        if self.remotes:
            return "; ".join(
                f"remote {name!r}: {r.message}" for name, r in self.remotes.items() if r.message
            )
        return "; ".join(
            text if stream == "*" else f"stream {stream!r}: {text}"
            for stream, text in self.errors.items()
        )

    def fail(self, stream: str, exc: ConnectorSyncError) -> None:
        """Record that ``stream`` (``"*"``: the whole pass) failed with ``exc``."""
        self.errors[stream] = str(exc)
        if self.exception is None or _rank(exc) > _rank(self.exception):
            self.exception = exc


def gather(reports: dict[str, SyncReport]) -> SyncReport:
    """One report for the passes of several remotes (by name): counts added up per stream,
    each error under ``"<remote>: <stream>"``, the first exception by rank, each report in
    :attr:`~SyncReport.remotes`. One remote's report is returned as it is."""
    if len(reports) == 1:
        return next(iter(reports.values()))
    total = SyncReport(remotes=dict(reports))
    for name, report in reports.items():
        for counts, into in (
            (report.sent, total.sent),
            (report.deadlettered, total.deadlettered),
            (report.sent_bytes, total.sent_bytes),
        ):
            for stream, n in counts.items():
                add_count(into, stream, n)
        for stream, text in report.errors.items():
            total.errors[f"{name}: {stream}"] = text
        if report.exception is not None and (
            total.exception is None or _rank(report.exception) > _rank(total.exception)
        ):
            total.exception = report.exception
        total.more = total.more or report.more
        total.upto = max(total.upto, report.upto)
    return total


def retryable(exc: BaseException | None) -> bool:
    """Whether a failed pass is worth trying again soon (with backoff)."""
    return isinstance(exc, (TransientRemoteError, AmbiguousRemoteError))


def worth_retrying(report: SyncReport) -> bool:
    """Whether the pass that returned ``report`` is worth trying again soon (with backoff):
    the background syncer retries by the report, its failure is never raised for that."""
    return retryable(report.exception)


def stops_the_remote(exc: BaseException | None) -> bool:
    """Whether ``exc``, met by one stream, holds for every stream of the remote: refused
    credentials (the same for all), or a ``Retry-After`` (the remote asks to be left alone
    until then, whatever the stream)."""
    return isinstance(exc, AuthError) or retry_after(exc) is not None


def retry_after(exc: BaseException | None) -> float | None:
    """The seconds a transient failure asked to wait (``Retry-After``), or None."""
    if isinstance(exc, TransientRemoteError):
        return exc.retry_after
    return None


def _rank(exc: ConnectorSyncError) -> int:
    """Which error of a pass it reports: a ``Retry-After`` first (the wait it asks for holds
    for the whole remote), then a retryable one."""
    if retry_after(exc) is not None:
        return 2
    return 1 if retryable(exc) else 0


def add_count(counts: dict[str, int], stream: str, n: int) -> None:
    """Add ``n`` to ``counts[stream]`` (a stream with nothing stays out)."""
    if n:
        counts[stream] = counts.get(stream, 0) + n
