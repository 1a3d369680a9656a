"""The Prometheus endpoints, scraped over HTTP: each daemon shows its own series only, every
labelled series exists at 0 before the first mail, a taken port is named in the error."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from replytrack import metrics
from replytrack.config import Config
from replytrack.notify import Sender
from replytrack.store import Event
from replytrack.store.sqlite import SQLiteStore
from tests.conftest import free_port
from tests.support.env import clean_environ
from tests.support.install import replytrack_init
from tests.support.net import wait_port

REPLYTRACK = Path(sys.executable).with_name("replytrack")
PROXY_ONLY = ("replytrack_proxy_", "replytrack_proxy_relay_seconds")
MILTER_ONLY = (
    "replytrack_milter_",
    "replytrack_enrollments_stopped",
    "replytrack_journal_backlog",
)


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _scrape_when(port: int, name: str, proc: subprocess.Popen[str]) -> dict[str, float]:
    """The first scrape that has ``name`` (proxy workers report once they have started)."""
    for _ in range(400):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            samples = _scrape(port)
        except (urllib.error.URLError, ConnectionError):
            samples = {}
        if name in samples:
            return samples
        time.sleep(0.05)
    raise AssertionError(f"{name} never appeared on :{port}")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = clean_environ(
        REPLYTRACK_DB=str(tmp_path / "replytrack.db"),
        REPLYTRACK_DOMAIN="track.example.com",
        REPLYTRACK_MILTER_JOURNAL=str(tmp_path / "journal"),
        REPLYTRACK_MILTER_JOURNAL_FALLBACK=str(tmp_path / "journal-fallback"),
        **settings,
    )
    replytrack_init(env=env, cwd=tmp_path)
    return env


def _start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(REPLYTRACK), *args], env=env, cwd=cwd, stderr=subprocess.PIPE, text=True
    )


def _own_only(samples: dict[str, float], foreign: tuple[str, ...]) -> None:
    shown = sorted(name for name in samples if name.startswith(foreign))
    assert shown == [], shown


def test_milter_endpoint_has_milter_series_only_all_at_zero(
    tmp_path: Path, daemon: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    env = _env(tmp_path, REPLYTRACK_MILTER_METRICS_LISTEN=f"127.0.0.1:{port}")
    daemon.append(_start(["milter", "--socket", f"inet:{free_port()}@127.0.0.1"], env, tmp_path))
    samples = _scrape_when(port, 'replytrack_milter_verdicts_total{kind="reply"}', daemon[0])
    _own_only(samples, PROXY_ONLY)
    assert 'replytrack_store_errors_total{component="proxy"}' not in samples
    # Before any mail every labelled series is there, at 0.
    for kind in ("reply", "auto_reply", "bounce", "receipt", "feedback", "unrelated"):
        assert samples[f'replytrack_milter_verdicts_total{{kind="{kind}"}}'] == 0
    for reason in ("reply", "bounce"):
        assert samples[f'replytrack_enrollments_stopped_total{{reason="{reason}"}}'] == 0
    for component in ("milter", "notify"):
        assert samples[f'replytrack_store_errors_total{{component="{component}"}}'] == 0
    for result in ("delivered", "failed"):
        assert samples[f'replytrack_notify_attempts_total{{result="{result}"}}'] == 0
    assert samples["replytrack_journal_backlog"] == 0
    assert samples["replytrack_milter_message_seconds_count"] == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_proxy_endpoint_has_proxy_series_only_all_at_zero(
    tmp_path: Path, daemon: list[subprocess.Popen[str]], workers: str
) -> None:
    port = free_port()
    env = _env(tmp_path, REPLYTRACK_PROXY_METRICS_LISTEN=f"127.0.0.1:{port}")
    args = ["proxy", "--listen", f"127.0.0.1:{free_port()}", "--upstream", "127.0.0.1:9"]
    daemon.append(_start([*args, "--workers", workers], env, tmp_path))
    samples = _scrape_when(port, 'replytrack_proxy_mails_total{result="relayed"}', daemon[0])
    _own_only(samples, MILTER_ONLY)
    assert 'replytrack_store_errors_total{component="milter"}' not in samples
    for result in ("relayed", "suppressed", "upstream_refused", "tempfail", "rejected"):
        assert samples[f'replytrack_proxy_mails_total{{result="{result}"}}'] == 0
    for component in ("proxy", "notify"):
        assert samples[f'replytrack_store_errors_total{{component="{component}"}}'] == 0
    assert samples['replytrack_notify_attempts_total{result="failed"}'] == 0
    assert samples["replytrack_proxy_relay_seconds_count"] == 0


def test_a_taken_metrics_port_is_named_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _env(tmp_path, REPLYTRACK_MILTER_METRICS_LISTEN=f"127.0.0.1:{port}")
        milter = f"inet:{free_port()}@127.0.0.1"
        done = subprocess.run(
            [str(REPLYTRACK), "milter", "--socket", milter],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert error == [f"Error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"]


def test_in_process_counts_and_the_outbox_backlog(tmp_path: Path, store: SQLiteStore) -> None:
    port = free_port()
    metrics.serve(f"127.0.0.1:{port}", metrics.MILTER)
    assert wait_port(port)
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
    assert samples['replytrack_milter_verdicts_total{kind="reply"}'] >= 1
    assert samples["replytrack_outbox_backlog"] == 3
    assert samples['replytrack_notify_attempts_total{result="failed"}'] >= 3
    # The proxy counted in this process too (tests share one), yet this is the milter's.
    metrics.PROXY_MAILS.labels(result="relayed").inc()
    _own_only(_scrape(port), PROXY_ONLY)

    # Once delivered, the gauge follows the store down.
    for item in store.claim_outbox("t", now=2e9, lease_seconds=1, limit=10):
        store.finish_outbox_attempt(item.id, "t", now=2e9, delivered=True)
    sender.update_backlog()
    assert _scrape(port)["replytrack_outbox_backlog"] == 0
