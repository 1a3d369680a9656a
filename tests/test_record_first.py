"""Record first, relay second: a mail that got ``250`` is inside reply matching and
suppression whatever fails after the upstream's answer.

Each test breaks the store (or the proxy) at the worst moment, while the upstream is still
answering DATA, then lets the prospect reply and sends step 2: the reply must stop the
campaign for them and step 2 must be refused, as for a mail that met no fault.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from replytrack.config import Config
from replytrack.milter.engine import Engine
from replytrack.proxy.testing import ThreadedProxy
from replytrack.store.records import ACTIVE, STOPPED, OutboundRecipient, OutboundRecord
from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring, load_keyring
from tests.support.faults import (
    FaultUpstream,
    fill_disk,
    hold_exclusive_lock,
    small_tmpfs,
)
from tests.support.milter_records import inbound, reply_headers
from tests.test_faults_proxy import ProxyProcess, arrived_markers, proxy_config, send

pytestmark = pytest.mark.timeout(90)
PROSPECT = "prospect@example.test"


@pytest.fixture
def upstream() -> Iterator[FaultUpstream]:
    up = FaultUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def run_proxy() -> Iterator[Callable[..., ThreadedProxy]]:
    started: list[ThreadedProxy] = []

    def start(store: SQLiteStore, keyring: Keyring, upstream_port: int) -> ThreadedProxy:
        config = proxy_config(store.path, upstream_port, proxy_timeout=5.0)
        proxy = ThreadedProxy(config, store=store, keyring=keyring).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def record_of(db: Path, marker: str) -> tuple[str, str]:
    """(stamped Message-ID, status) of the mail the client sent with ``marker``."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute(
            "SELECT message_id, status FROM messages WHERE original_message_id = ?",
            (f"{marker}@client.example",),
        ).fetchone()
    finally:
        conn.close()
    assert row is not None, f"mail {marker} was not recorded"
    return row[0], row[1]


def enrollment_status(store: SQLiteStore) -> str | None:
    found = store.enrollments(campaign="camp-1", recipient=PROSPECT)
    return found[0].status if found else None


def send_while_upstream_answers(
    port: int,
    upstream: FaultUpstream,
    marker: str,
    fault: Callable[[], None],
    mode: str = "slow",
) -> tuple[int | None, str]:
    """Send one mail; ``fault`` runs once the upstream is in DATA (and slow to answer)."""
    upstream.set(mode, delay=2.0)
    result: dict[str, tuple[int | None, str]] = {}
    client = threading.Thread(target=lambda: result.update(reply=send(port, marker)))
    client.start()
    assert upstream.data_started.wait(20), "the mail never reached the upstream's DATA"
    fault()
    client.join(60)
    upstream.set("accept")
    return result["reply"]


def assert_reply_stops_step_two(
    store: SQLiteStore,
    keyring: Keyring,
    domain: str,
    message_id: str,
    proxy_port: int,
    upstream: FaultUpstream,
) -> None:
    """The prospect's reply stops them; the campaign's next step to them is refused."""
    assert enrollment_status(store) == ACTIVE
    engine = Engine(Config(domain=domain), keyring, store)
    verdict = engine.process(
        inbound(PROSPECT, reply_headers(PROSPECT, in_reply_to=f"<{message_id}>"))
    )
    assert verdict.kind == "reply", verdict
    assert verdict.matched == [message_id]
    assert enrollment_status(store) == STOPPED
    code, text = send(proxy_port, "step-2")
    assert code == 550 and "5.7.1" in text, (code, text)
    assert "step-2" not in arrived_markers(upstream.received())


def test_store_locked_while_upstream_answers(
    tmp_path: Path,
    upstream: FaultUpstream,
    run_proxy: Callable[..., ThreadedProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another process takes the store's write lock while the upstream is answering DATA
    and holds it past the proxy's busy timeout: the status cannot be settled."""
    store = SQLiteStore(tmp_path / "rt.db", busy_timeout_ms=1000)
    keyring = Keyring.generate()
    proxy = run_proxy(store, keyring, upstream.port)
    release = threading.Event()

    def hold_lock() -> None:
        ready = threading.Event()

        def holder() -> None:
            with hold_exclusive_lock(store.path):
                ready.set()
                release.wait(30)

        threading.Thread(target=holder, daemon=True).start()
        assert ready.wait(10)

    with caplog.at_level(logging.ERROR, logger="replytrack.proxy"):
        try:
            code, text = send_while_upstream_answers(proxy.port, upstream, "locked", hold_lock)
        finally:
            release.set()
    # The upstream took it: the client hears its 250 (a 451 would make it send twice).
    assert code == 250, text
    assert "locked" in arrived_markers(upstream.received())
    message_id, status = record_of(store.path, "locked")
    assert status == "relaying", "the fault did not hit the settling write"
    assert "cannot mark mail" in caplog.text
    assert_reply_stops_step_two(store, keyring, "mail.test", message_id, proxy.port, upstream)


def test_disk_full_while_upstream_answers(
    tmp_path: Path, upstream: FaultUpstream, run_proxy: Callable[..., ThreadedProxy]
) -> None:
    """The store's filesystem fills up while the upstream is answering DATA. A reader keeps
    a snapshot open meanwhile (an ops query), so the write-ahead log must grow for the
    settling write and cannot."""
    with small_tmpfs(tmp_path / "fs", size="2m") as fs:
        if fs is None:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        store = SQLiteStore(fs / "rt.db", busy_timeout_ms=1000)
        keyring = Keyring.generate()
        proxy = run_proxy(store, keyring, upstream.port)
        reader = sqlite3.connect(str(store.path), isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM messages").fetchall()
        ballast: list[Path] = []
        try:
            code, text = send_while_upstream_answers(
                proxy.port, upstream, "full", lambda: ballast.append(fill_disk(fs))
            )
            assert code == 250, text
            assert "full" in arrived_markers(upstream.received())
            message_id, status = record_of(store.path, "full")
            assert status == "relaying", "the disk-full fault did not hit the settling write"
        finally:
            reader.execute("ROLLBACK")
            reader.close()
            for path in ballast:
                path.unlink()
        assert_reply_stops_step_two(store, keyring, "mail.test", message_id, proxy.port, upstream)
        proxy.stop()
        store.close_all()


def test_proxy_killed_while_upstream_answers(tmp_path: Path, upstream: FaultUpstream) -> None:
    """``kill -9`` of the whole proxy while the upstream is answering DATA: the client
    hears nothing, the upstream queues the mail. After a restart the sweep marks the record
    ``unconfirmed``, and the prospect's reply still stops step 2."""
    proc = ProxyProcess(
        tmp_path,
        upstream.port,
        extra_env={"REPLYTRACK_PROXY_TIMEOUT": "1", "REPLYTRACK_PROXY_UNCONFIRMED_AFTER": "4"},
    )
    proc.start()
    try:
        code, _ = send_while_upstream_answers(
            proc.port, upstream, "killed", proc.kill, mode="queued-slow"
        )
        assert code != 250
        assert "killed" in arrived_markers(upstream.received())
        message_id, status = record_of(proc.db, "killed")
        assert status == "relaying"
        # Past proxy.unconfirmed_after, the restarted proxy's first sweep settles it.
        time.sleep(4.5)
        proc.start()
        deadline = time.monotonic() + 20
        while record_of(proc.db, "killed")[1] == "relaying" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert record_of(proc.db, "killed")[1] == "unconfirmed", proc.log_tail()
        keyring = load_keyring(tmp_path / "replytrack.secret", create=False)
        store = SQLiteStore(proc.db)
        try:
            assert_reply_stops_step_two(
                store, keyring, "mail.bench.test", message_id, proc.port, upstream
            )
        finally:
            store.close_all()
    finally:
        proc.stop()


def test_sweep_marks_stale_relaying_unconfirmed_and_doctor_reports_it(tmp_path: Path) -> None:
    """A record a dead proxy left ``relaying``: doctor names it, the sweep turns it into
    ``unconfirmed`` (counted as sent, its suppressions recorded), and doctor says so."""
    from replytrack.cli.doctor import check_relaying

    db = tmp_path / "rt.db"
    store = SQLiteStore(db)
    config = Config(db=str(db), domain="mail.test")
    long_ago = time.time() - config.proxy_unconfirmed_after - 60
    store.record_outbound(
        OutboundRecord(
            message_id="stuck@mail.test",
            original_message_id=None,
            campaign="camp-1",
            step=2,
            sender="sales@sender.example",
            from_address=None,
            subject="step 2",
            size=100,
            status="relaying",
            recipients=(
                OutboundRecipient("sent@example.test", "to", True),
                OutboundRecipient("gone@example.test", "to", True, "suppressed", "stopped"),
            ),
            created_at=long_ago,
        )
    )
    # A mail in flight right now is left alone.
    store.record_outbound(
        OutboundRecord(
            message_id="live@mail.test",
            original_message_id=None,
            campaign="camp-1",
            step=1,
            sender="sales@sender.example",
            from_address=None,
            subject="step 1",
            size=100,
            status="relaying",
            recipients=(OutboundRecipient("live@example.test", "to", True),),
            created_at=time.time(),
        )
    )
    [finding] = check_relaying(config)
    assert finding.status == "WARN" and "1 mail(s) still relaying" in finding.message

    assert store.reconcile_relaying(time.time() - config.proxy_unconfirmed_after) == 1
    status = {m.message_id: m.status for m in store.messages()}
    assert status == {"stuck@mail.test": "unconfirmed", "live@mail.test": "relaying"}
    assert [e.recipient for e in store.events(kind="suppressed")] == ["gone@example.test"]
    [stats] = store.campaign_stats("camp-1")
    assert stats.sent == 1
    [finding] = check_relaying(config)
    assert finding.status == "WARN" and "1 mail(s) in the last 24 h unconfirmed" in finding.message
    store.close_all()
