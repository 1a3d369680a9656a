"""The Prometheus endpoint, scraped over HTTP, and the outbox backlog the sender reports."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from replytrack import metrics
from replytrack.config import Config
from replytrack.notify import Sender
from replytrack.store import Event
from replytrack.store.sqlite import SQLiteStore
from tests.conftest import free_port


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_endpoint_serves_every_metric_and_the_outbox_backlog(
    tmp_path: Path, store: SQLiteStore
) -> None:
    port = free_port()
    metrics.serve(f"127.0.0.1:{port}")
    metrics.PROXY_MAILS.labels(result="relayed").inc()
    metrics.MILTER_VERDICTS.labels(kind="reply").inc()
    for n in range(3):
        store.record_event(Event(kind="stopped", created_at=1_790_000_000.0 + n, campaign="c"))
    # No webhook answers (nothing listens): the backlog stays and is reported.
    dead_url = f"http://127.0.0.1:{free_port()}/hook"
    config = Config(
        db=str(tmp_path / "replytrack.db"), notify_webhooks=[dead_url], notify_secret="metrics"
    )
    sender = Sender(config, store, retry_base=60, retry_cap=60)
    sender.deliver_due()

    samples = _scrape(port)
    assert samples['replytrack_proxy_mails_total{result="relayed"}'] >= 1
    assert samples['replytrack_milter_verdicts_total{kind="reply"}'] >= 1
    assert samples["replytrack_outbox_backlog"] == 3
    assert samples['replytrack_notify_attempts_total{result="failed"}'] >= 3
    for name in (
        "replytrack_proxy_relay_seconds_count",
        "replytrack_milter_message_seconds_count",
        "replytrack_journal_backlog",
        "replytrack_notify_dead_total",
    ):
        assert name in samples, name

    # Once delivered, the gauge follows the store down.
    for item in store.claim_outbox("t", now=2e9, lease_seconds=1, limit=10):
        store.finish_outbox_attempt(item.id, "t", now=2e9, delivered=True)
    sender.update_backlog()
    assert _scrape(port)["replytrack_outbox_backlog"] == 0
