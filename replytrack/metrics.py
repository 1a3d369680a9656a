"""Prometheus metrics of proxy and milter (``prometheus_client``).

The metric objects live here so that every part counts into the same names; a daemon
exposes them with ``serve(listen)`` when ``proxy.metrics_listen`` / ``milter.metrics_listen``
is set.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from replytrack.config import parse_hostport

# Outbound proxy.
PROXY_MAILS = Counter(
    "replytrack_proxy_mails_total",
    "Mails handled by the outbound proxy, by result.",
    ["result"],  # relayed | suppressed | upstream_refused | tempfail | rejected
)
PROXY_RECIPIENTS_SUPPRESSED = Counter(
    "replytrack_proxy_recipients_suppressed_total",
    "Recipients not sent a campaign mail because their enrollment is stopped, bounced or paused.",
)
PROXY_LATENCY = Histogram(
    "replytrack_proxy_relay_seconds",
    "Time from end of DATA to the reply given to the client.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# Inbound milter.
MILTER_VERDICTS = Counter(
    "replytrack_milter_verdicts_total",
    "Inbound mails classified by the milter, by verdict kind.",
    ["kind"],  # reply | auto_reply | bounce | receipt | feedback | unrelated
)
MILTER_STOPS = Counter(
    "replytrack_enrollments_stopped_total",
    "Enrollments stopped, by reason.",
    ["reason"],  # reply | bounce | manual
)
MILTER_LATENCY = Histogram(
    "replytrack_milter_message_seconds",
    "Time the milter spent deciding on one message (end of headers or end of message).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

# Shared.
STORE_ERRORS = Counter(
    "replytrack_store_errors_total",
    "Store operations that failed (locked, read-only, full).",
    ["component"],  # proxy | milter | notify
)
# Several processes (proxy workers) report the same backlog: one series, the largest
# reading among live processes (``multiprocess_mode`` only applies to proxy workers).
JOURNAL_BACKLOG = Gauge(
    "replytrack_journal_backlog",
    "Inbound verdicts journaled because the store was unavailable, not yet replayed.",
    multiprocess_mode="livemax",
)
OUTBOX_BACKLOG = Gauge(
    "replytrack_outbox_backlog",
    "Notifications queued and not yet delivered to every webhook.",
    multiprocess_mode="livemax",
)

NOTIFY_ATTEMPTS = Counter(
    "replytrack_notify_attempts_total",
    "Webhook POSTs by the notification sender, by result.",
    ["result"],  # delivered | failed
)
NOTIFY_DEAD = Counter(
    "replytrack_notify_dead_total",
    "Notifications given up after notify.max_attempts failed attempts.",
)


def serve(listen: str) -> None:
    """Expose ``/metrics`` over HTTP on ``HOST:PORT`` (in a daemon thread)."""
    host, port = parse_hostport(listen, setting="metrics_listen")
    start_http_server(port, addr=host)
