"""Metrics for operators: a cache's state and the program's work, for Prometheus.

Built on ``prometheus_client``, with one :class:`~prometheus_client.CollectorRegistry` per
Logger (never the process-wide default one: two Loggers in one process each have their own):

- :class:`CacheCollector` reads the cache (through ``status()``) on each scrape: per stream
  cached datapoints, oldest cached age and dead letters; dropped, expired, last successful
  sync, clock offset; cache file and WAL size; per remote (label ``remote``) what it holds,
  refused, released and handed over, and whether its syncing goes well. It needs only a
  ``Status``, so ``connectorsync metrics CACHE`` (another process, the cache opened
  read-only) shows it too.
- :class:`LoggerMetrics` adds what happens in this process and exists only in its memory:
  datapoints and bytes delivered, sync passes and failed ones (counted from each pass's
  :class:`~connectorsync.delivery.SyncReport`), and the commit and fsync latency histograms
  (timed by :meth:`connectorsync.cache.connection.Connection.commit`); and, from
  :class:`QueueCollector`, whether ``durability="batched"`` can commit and what waits. It
  serves ``/metrics`` on 127.0.0.1 only, when ``metrics_port`` is set
  (:mod:`connectorsync.metrics_server`: bounded threads and timeouts, nothing left after
  ``close()``).

Every metric is listed in ``docs/metrics.rst``. Guarantees (``tests/test_metrics.py``):

- A scrape of ``/metrics`` parses with prometheus_client's own parser and shows a real
  workload's counts (``test_a_scrape_shows_the_workload``).
- The server listens on 127.0.0.1 only and stops on ``close()``
  (``test_the_server_listens_on_loopback_only_and_stops_on_close``).
- ``connectorsync metrics`` never writes the cache (``test_cli_metrics_only_looks``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from .metrics_server import MetricsServer

if TYPE_CHECKING:
    from .cache import Cache
    from .delivery import SyncReport
    from .status import Status

#: Where the latency histograms put their bucket bounds (seconds): from a fast disk's
#: commit (~0.1 ms) to a cheap SD card's stall (several seconds).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class CacheCollector(Collector):
    """What the cache holds, read on each scrape from ``status()`` and the file's size.

    :param status: returns the cache's current :class:`~connectorsync.status.Status`
    :param path: the cache file (its size, and its ``-wal`` file's)
    """

    def __init__(self, status: Callable[[], Status], path: str):
        self._status = status
        self._path = path

    def collect(self) -> Iterator[Metric]:
        status, now = self._status(), time.time()
        cached = GaugeMetricFamily(
            "connectorsync_cached_datapoints",
            "Datapoints cached, waiting to be delivered.",
            labels=["stream"],
        )
        oldest = GaugeMetricFamily(
            "connectorsync_oldest_cached_age_seconds",
            "Age of the oldest cached datapoint (by its timestamp; 0 if in the future).",
            labels=["stream"],
            unit="seconds",
        )
        dead = GaugeMetricFamily(
            "connectorsync_dead_letters",
            "Datapoints the remote refused, kept in the dead-letter table.",
            labels=["stream"],
        )
        for name, stream in sorted(status.streams.items()):
            cached.add_metric([name], stream.cached)
            dead.add_metric([name], stream.deadletters)
            if stream.oldest is not None:
                oldest.add_metric([name], max(0.0, now - stream.oldest))
        yield from (cached, oldest, dead)
        sent = CounterMetricFamily(
            "connectorsync_sent_bytes",
            "Bytes of request bodies put on the wire to the remote (after compression), ever.",
            labels=["stream"],
            unit="bytes",
        )
        for name, count in sorted(status.bytes_sent.items()):
            sent.add_metric([name], count)
        yield sent
        yield CounterMetricFamily(
            "connectorsync_dropped_datapoints",
            "Datapoints dropped to make room (on_full='drop_oldest'), ever.",
            value=status.dropped,
        )
        yield CounterMetricFamily(
            "connectorsync_thinned_datapoints",
            "Datapoints removed by thinning to make room (on_full='thin'), ever.",
            value=status.thinned,
        )
        yield CounterMetricFamily(
            "connectorsync_expired_datapoints",
            "Datapoints expired by max_age, ever.",
            value=status.expired,
        )
        if status.last_sync is not None:
            yield GaugeMetricFamily(
                "connectorsync_last_sync_timestamp_seconds",
                "When the last complete (successful) sync pass ended, seconds since the epoch.",
                value=status.last_sync,
                unit="seconds",
            )
        if status.clock_offset is not None:
            yield GaugeMetricFamily(
                "connectorsync_clock_offset_seconds",
                "What the system clock was off by at the last NTP answer of this boot.",
                value=status.clock_offset,
                unit="seconds",
            )
        yield from self._sizes()
        yield from _remotes(status)

    def _sizes(self) -> Iterator[Metric]:
        for name, suffix, meaning in (
            ("connectorsync_cache_size_bytes", "", "Size of the cache file."),
            ("connectorsync_wal_size_bytes", "-wal", "Size of the cache's write-ahead log."),
        ):
            try:
                size = os.stat(self._path + suffix).st_size
            except FileNotFoundError:
                size = 0  # no WAL: checkpointed away, or nobody has the file open
            yield GaugeMetricFamily(name, meaning, value=size, unit="bytes")


def _remotes(status: Status) -> Iterator[Metric]:
    """Each remote's side of the cache (``status().remotes``), labelled ``remote``."""
    held = GaugeMetricFamily(
        "connectorsync_remote_held_datapoints",
        "Cached datapoints not delivered to this remote yet, all streams together.",
        labels=["remote"],
    )
    dead = GaugeMetricFamily(
        "connectorsync_remote_dead_letters",
        "Dead letters this remote refused, kept in the dead-letter table.",
        labels=["remote"],
    )
    released = CounterMetricFamily(
        "connectorsync_remote_released_datapoints",
        "Datapoints this remote gave up (give_up_after, no fallback), ever.",
        labels=["remote"],
    )
    handed = CounterMetricFamily(
        "connectorsync_remote_handed_over_datapoints",
        "Datapoints this remote handed to its fallback (give_up_after), ever.",
        labels=["remote"],
    )
    up = GaugeMetricFamily(
        "connectorsync_remote_up",
        "1 while syncing to this remote goes well; 0 while its passes fail or it is paused.",
        labels=["remote"],
    )
    failing = GaugeMetricFamily(
        "connectorsync_remote_failing_since_timestamp_seconds",
        "When this remote's passes began to fail, seconds since the epoch (only while they do).",
        labels=["remote"],
        unit="seconds",
    )
    for name, remote in status.remotes.items():
        held.add_metric([name], remote.held)
        dead.add_metric([name], remote.deadletters)
        released.add_metric([name], remote.released)
        handed.add_metric([name], remote.handed_over)
        down = remote.failing_since is not None or remote.paused
        up.add_metric([name], 0 if down else 1)
        if remote.failing_since is not None:
            failing.add_metric([name], remote.failing_since)
    yield from (held, dead, released, handed, up, failing)


class QueueCollector(Collector):
    """Whether ``durability="batched"`` can commit, and what waits in memory: state of this
    process only (the CLI, another process, cannot see it), read on each scrape.

    :param cache: the Logger's cache connection (its queue)
    """

    def __init__(self, cache: Cache):
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        error = self._cache.commit_error()
        failing = GaugeMetricFamily(
            "connectorsync_commit_failing",
            "1 while durability='batched' cannot commit (inserts are refused); why: reason.",
            labels=["reason"],
        )
        failing.add_metric([error or ""], 0 if error is None else 1)
        yield failing
        yield GaugeMetricFamily(
            "connectorsync_uncommitted_datapoints",
            "Datapoints accepted by durability='batched' that wait in memory for their commit.",
            value=self._cache.uncommitted(),
        )


class LoggerMetrics:
    """The metrics of one Logger: its own registry, the in-process counters and histograms,
    and the ``/metrics`` server while ``metrics_port`` is set.

    :param cache: the Logger's cache connection (its commits are timed)
    :param status: the Logger's ``status()``
    """

    def __init__(self, cache: Cache, status: Callable[[], Status]):
        self.registry = CollectorRegistry()
        self.registry.register(CacheCollector(status, cache.path))
        self.registry.register(QueueCollector(cache))
        self.delivered = Counter(
            "connectorsync_delivered_datapoints",
            "Datapoints this process delivered (acknowledged by the remote).",
            ["stream"],
            registry=self.registry,
        )
        self.delivered_bytes = Counter(
            "connectorsync_delivered_bytes",
            "Bytes of values (their JSON text, UTF-8) this process delivered.",
            ["stream"],
            unit="bytes",
            registry=self.registry,
        )
        self.passes = Counter(
            "connectorsync_sync_passes", "Sync passes this process ran.", registry=self.registry
        )
        self.failed = Counter(
            "connectorsync_failed_sync_passes",
            "Sync passes of this process that did not deliver everything (an error).",
            registry=self.registry,
        )
        self.commit_latency = Histogram(
            "connectorsync_commit_latency_seconds",
            "Write transactions of this process's cache connection, BEGIN to end of COMMIT.",
            unit="seconds",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fsync_latency = Histogram(
            "connectorsync_fsync_latency_seconds",
            "The COMMIT statement alone: where SQLite writes the WAL and fsyncs it.",
            unit="seconds",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._server: MetricsServer | None = None
        cache.on_commit = self.committed

    def committed(self, whole: float, statement: float) -> None:
        """A commit of the cache connection took ``whole`` seconds, its COMMIT ``statement``."""
        self.commit_latency.observe(whole)
        self.fsync_latency.observe(statement)

    def passed(self, report: SyncReport) -> None:
        """Count what a sync pass did."""
        self.passes.inc()
        if not report.ok:
            self.failed.inc()
        for stream, count in report.sent.items():
            self.delivered.labels(stream).inc(count)
        for stream, size in report.sent_bytes.items():
            self.delivered_bytes.labels(stream).inc(size)

    def text(self) -> str:
        """The metrics now, as OpenMetrics text."""
        return _openmetrics(self.registry).decode()

    @property
    def url(self) -> str | None:
        """``http://127.0.0.1:PORT/metrics`` while served, else None."""
        server = self._server
        return None if server is None else server.url

    def serve(self, port: int | None) -> None:
        """Serve ``/metrics`` on 127.0.0.1 at ``port`` (0: any free one), instead of where it
        was served before; None: stop serving (:mod:`connectorsync.metrics_server`).

        :raises ConfigurationError: the port cannot be listened on (in use, say); it goes on
            being served where it was
            (``test_metrics.py::test_a_port_in_use_set_on_a_serving_logger_changes_nothing``)
        """
        old = self._server
        if port is None or old is None or port != old.port:
            # The new one first: when it cannot listen, the old one goes on serving.
            new = None if port is None else MetricsServer(port, make_wsgi_app(self.registry))
            self._server = new
            if old is not None:
                old.close()

    def close(self) -> None:
        """Stop serving (and free the port): no thread and no connection is left. Safe to
        call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.close()


def cache_metrics(status: Status, path: str, *, openmetrics: bool) -> str:
    """What :class:`CacheCollector` shows for ``status`` (another process's view of a cache:
    no in-process counters or histograms), as OpenMetrics or Prometheus text."""
    registry = CollectorRegistry()
    registry.register(CacheCollector(lambda: status, path))
    return (_openmetrics(registry) if openmetrics else generate_latest(registry)).decode()


def _openmetrics(registry: CollectorRegistry) -> bytes:
    """prometheus_client's OpenMetrics exposition (the module has no annotations)."""
    text: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
    return text
