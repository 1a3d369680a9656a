"""Prometheus metrics of proxy and milter (``prometheus_client``).

The metric objects live here so that every part counts into the same names. Each daemon
exposes only its own series: ``serve(listen, PROXY)`` or ``serve(listen, MILTER)`` when
``proxy.metrics_listen`` / ``milter.metrics_listen`` is set, and ``serve_workers`` for the
proxy's worker processes (multiprocess mode). A scrape of the milter never shows proxy
series as zeros, and the other way round, so a dashboard cannot mistake a daemon for idle.

Labelled counters are created with every label value they can take, so each series exists
(at 0) from the start: ``rate()`` and alerts on a series that has not seen its first event
would otherwise find nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from replytrack.config import parse_hostport

# Outbound proxy.
PROXY_RESULTS = ("relayed", "suppressed", "upstream_refused", "tempfail", "rejected")
PROXY_MAILS = Counter(
    "replytrack_proxy_mails_total",
    "Mails handled by the outbound proxy, by result.",
    ["result"],
)
PROXY_RECIPIENTS_SUPPRESSED = Counter(
    "replytrack_proxy_recipients_suppressed_total",
    "Recipients not sent a campaign mail because their enrollment is stopped, bounced or paused.",
)
# Monitor mode (mode = "monitor"): recipients relayed to whom enforce mode would not have.
PROXY_RECIPIENTS_MONITORED = Counter(
    "replytrack_proxy_recipients_monitored_total",
    "Campaign mail recipients monitor mode did not suppress, as enforce mode would have.",
)
PROXY_LATENCY = Histogram(
    "replytrack_proxy_relay_seconds",
    "Time from end of DATA to the reply given to the client.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# Inbound milter.
MILTER_KINDS = ("reply", "auto_reply", "bounce", "receipt", "feedback", "unrelated")
MILTER_VERDICTS = Counter(
    "replytrack_milter_verdicts_total",
    "Inbound mails classified by the milter, by verdict kind.",
    ["kind"],
)
# Stops by hand are made by the CLI, which serves no metrics: the milter counts these two.
MILTER_STOP_REASONS = ("reply", "bounce")
MILTER_STOPS = Counter(
    "replytrack_enrollments_stopped_total",
    "Enrollments stopped by the milter, by reason.",
    ["reason"],
)
MILTER_LATENCY = Histogram(
    "replytrack_milter_message_seconds",
    "Time the milter spent deciding on one message (end of headers or end of message).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
# Several processes (proxy workers) report the same backlog: one series, the largest
# reading among live processes (``multiprocess_mode`` only applies to proxy workers).
JOURNAL_BACKLOG = Gauge(
    "replytrack_journal_backlog",
    "Inbound verdicts journaled because the store was unavailable, not yet replayed.",
    multiprocess_mode="livemax",
)

# Both daemons: each stores, and each sends webhooks.
STORE_ERRORS = Counter(
    "replytrack_store_errors_total",
    "Store operations that failed (locked, read-only, full).",
    ["component"],  # proxy | milter | notify
)
OUTBOX_BACKLOG = Gauge(
    "replytrack_outbox_backlog",
    "Notifications queued and not yet delivered to every webhook.",
    multiprocess_mode="livemax",
)
NOTIFY_RESULTS = ("delivered", "failed")
NOTIFY_ATTEMPTS = Counter(
    "replytrack_notify_attempts_total",
    "Webhook POSTs by the notification sender, by result.",
    ["result"],
)
NOTIFY_DEAD = Counter(
    "replytrack_notify_dead_total",
    "Notifications given up after notify.max_attempts failed attempts.",
)

# Created here, once per process: also in a proxy worker, whose values then reach the
# supervisor's endpoint before the first mail.
for _value in PROXY_RESULTS:
    PROXY_MAILS.labels(_value)
for _value in MILTER_KINDS:
    MILTER_VERDICTS.labels(_value)
for _value in MILTER_STOP_REASONS:
    MILTER_STOPS.labels(_value)
for _value in NOTIFY_RESULTS:
    NOTIFY_ATTEMPTS.labels(_value)

_SHARED = (STORE_ERRORS, OUTBOX_BACKLOG, NOTIFY_ATTEMPTS, NOTIFY_DEAD)


@dataclass(frozen=True)
class Daemon:
    """Which replytrack series one daemon's endpoint shows."""

    name: str
    families: frozenset[str]
    # replytrack_store_errors_total{component=...}: the parts that run in this daemon.
    components: tuple[str, ...]


def _names(*metrics: Counter | Gauge | Histogram) -> frozenset[str]:
    return frozenset(m._name for m in metrics)


PROXY = Daemon(
    "proxy",
    _names(
        PROXY_MAILS,
        PROXY_RECIPIENTS_SUPPRESSED,
        PROXY_RECIPIENTS_MONITORED,
        PROXY_LATENCY,
        *_SHARED,
    ),
    ("proxy", "notify"),
)
MILTER = Daemon(
    "milter",
    _names(MILTER_VERDICTS, MILTER_STOPS, MILTER_LATENCY, JOURNAL_BACKLOG, *_SHARED),
    ("milter", "notify"),
)


class OwnSeries(Collector):
    """The families of ``sources`` that belong to ``daemon``.

    Every replytrack family is defined in every process (they are module globals), so the
    other daemon's are dropped here; the process and Python families pass through. The
    store-error counter keeps the components of this daemon, each present from the start.
    """

    def __init__(self, daemon: Daemon, sources: Iterable[Collector]) -> None:
        self.daemon = daemon
        self.sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        store_errors = False
        for source in self.sources:
            for family in source.collect():
                if family.name.startswith("replytrack_"):
                    if family.name not in self.daemon.families:
                        continue
                    if family.name == STORE_ERRORS._name:
                        family, store_errors = self._store_errors(family), True
                yield family
        if not store_errors:
            # Proxy workers write a series only once it is counted: the zeros come from here.
            yield self._store_errors(
                Metric(STORE_ERRORS._name, STORE_ERRORS._documentation, "counter")
            )

    def _store_errors(self, family: Metric) -> Metric:
        own = Metric(family.name, family.documentation, family.type, family.unit)
        seen: set[str] = set()
        for sample in family.samples:
            component = sample.labels.get("component", "")
            if component in self.daemon.components:
                own.samples.append(sample)
                seen.add(component)
        for component in self.daemon.components:
            if component not in seen:
                own.add_sample(f"{family.name}_total", {"component": component}, 0.0)
        return own


def registry_for(daemon: Daemon) -> CollectorRegistry:
    """A registry with this daemon's series only (and the process's own families)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OwnSeries(daemon, [REGISTRY]))
    return registry


def serve(listen: str, daemon: Daemon) -> None:
    """Expose ``daemon``'s ``/metrics`` over HTTP on ``HOST:PORT`` (in a daemon thread).

    Raises OSError naming the address when it cannot be bound (say, another daemon has
    that port): the bare "Address already in use" does not say which of the listeners.
    """
    _start(listen, registry_for(daemon))


def serve_workers(listen: str, directory: str) -> None:
    """``/metrics`` of the proxy's worker processes, summed from their files in
    ``directory`` (prometheus_client's multiprocess mode); raises OSError like ``serve``."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry(auto_describe=False)
    registry.register(OwnSeries(PROXY, [multiprocess.MultiProcessCollector(None, path=directory)]))
    _start(listen, registry)


def _start(listen: str, registry: CollectorRegistry) -> None:
    host, port = parse_hostport(listen, setting="metrics_listen")
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot serve metrics on {listen}: {exc.strerror or exc}"
        ) from None
