"""The syncer: moves cached datapoints to the remote and deletes them once acknowledged.

:meth:`Syncer.sync` is the one synchronous pass that ``Logger.sync()`` and the tests call.

Guarantees:

- A datapoint leaves the cache only after :meth:`Remote.push` returned for its batch
  (``test_sync.py::test_failed_push_keeps_everything``).
- Memory is O(batch_size) whatever the backlog: batches are read by keyset paging
  (``test_sync.py::test_sync_pages_by_batch_size``).
- Per stream, batches go out in insertion order; a failure in one stream does not stop the
  others (``test_sync.py::test_one_failing_stream_does_not_stop_the_others``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .cache import Cache
from .errors import AuthError, ConnectorSyncError, RemoteError, TransientRemoteError
from .remotes.base import Remote

log = logging.getLogger("connectorsync.syncer")


@dataclass
class SyncReport:
    """What one sync pass did.

    :ivar sent: datapoints delivered (and removed from the cache), per stream
    :ivar deadlettered: datapoints moved to the dead-letter table, per stream
    :ivar errors: the error message per stream that could not be fully synced; the key
        ``"*"`` when the pass could not start (remote unreachable, credentials refused)
    """

    sent: dict[str, int] = field(default_factory=dict)
    deadlettered: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: the first exception met, for ``onsyncfail`` and ``syncraise``
    exception: ConnectorSyncError | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when every stream was synced completely."""
        return not self.errors

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())


class Syncer:
    """Runs sync passes over one cache file, on a connection of its own.

    :param path: the cache file
    :param remote: a callable returning the current remote (it may change with the apikey)
    :param batch_size: a callable returning the current batch size
    :param durability: the cache durability for this connection
    """

    def __init__(
        self,
        path: str,
        remote: Callable[[], Remote],
        batch_size: Callable[[], int],
        durability: Callable[[], str],
    ):
        self._path = path
        self._remote = remote
        self._batch_size = batch_size
        self._durability = durability
        self._cache: Cache | None = None
        # One pass at a time, whoever calls.
        self._pass_lock = threading.Lock()

    def sync(self) -> SyncReport:
        """One pass over every stream: push every cached datapoint, delete what was acked."""
        with self._pass_lock:
            report = SyncReport()
            cache = self._connection()
            try:
                remote = self._remote()
                remote.ping()
            except (TransientRemoteError, AuthError, ConnectorSyncError) as exc:
                report.errors["*"] = str(exc)
                report.exception = exc
                return report
            for row in cache.streams().values():
                try:
                    if not row.remote_created:
                        remote.ensure_stream(row.name, json.loads(row.schema))
                        cache.set_remote_created(row.name)
                    self._drain(cache, remote, row.id, row.name, report)
                except ConnectorSyncError as exc:
                    if type(exc) is RemoteError:
                        # Neither transient, nor the data, nor the key: perhaps the stream was
                        # deleted remotely. Check (and create) it again on the next pass.
                        cache.set_remote_created(row.name, False)
                    log.warning("sync of stream %r failed: %s", row.name, exc)
                    report.errors[row.name] = str(exc)
                    report.exception = report.exception or exc
            return report

    def _drain(
        self, cache: Cache, remote: Remote, stream_id: int, name: str, report: SyncReport
    ) -> None:
        """Push the stream's cached datapoints batch by batch, oldest first."""
        after = 0
        while batch := cache.batch(stream_id, after, self._batch_size()):
            remote.push(name, batch)
            first_id, last_id, last_t = batch[0][0], batch[-1][0], batch[-1][1]
            cache.ack(stream_id, first_id, last_id, last_t)
            report.sent[name] = report.sent.get(name, 0) + len(batch)
            after = last_id

    def _connection(self) -> Cache:
        if self._cache is None:
            self._cache = Cache.connect(self._path, self._durability())
        return self._cache

    def close(self) -> None:
        """Close the syncer's connection. Safe to call twice."""
        with self._pass_lock:
            if self._cache is not None:
                self._cache.close()
                self._cache = None
