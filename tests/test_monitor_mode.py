# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)
"""Monitor mode (``mode = "monitor"``), a first week on a production server.

The milter, in a private Postfix and over a real store of each backend: a reply to campaign
mail is delivered without ``X-ReplyTrack``, recorded marked ``detail.monitor``, and stops
nothing (the enrollment stays active, no webhook queued). The proxy, over a real aiosmtpd
upstream: step 2 to a stopped recipient is relayed and the would-be reason recorded, where
enforce mode refuses it ``550 5.7.1``; the do-not-contact list holds in both. SIGHUP
switching a running milter or proxy from monitor to enforce makes the next mail count.
``replytrack campaigns --json`` counts what would have been stopped.
"""

from __future__ import annotations

import json
import signal
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from replytrack import metrics
from replytrack.cli import cli
from replytrack.config import ConfigError, load_config
from replytrack.milter.engine import Engine
from replytrack.proxy.testing import ThreadedProxy
from replytrack.store.records import ACTIVE, STOPPED, Suppression
from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring
from tests.support.milter_records import DOMAIN, inbound, record_sent, reply_headers
from tests.support.upstream import (  # noqa: F401  (fixtures)
    RecordingUpstream,
    start_proxy,
    upstream,
)

pytestmark = pytest.mark.timeout(180)

CAMPAIGN = "spring"
PROSPECT = "pat@prospect.test"


@pytest.fixture
def db(any_store: Any, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What ``--db`` names for ``any_store``: its SQLite file or its PostgreSQL URL."""
    if isinstance(any_store, SQLiteStore):
        return str(tmp_path / "replytrack.db")
    return str(request.getfixturevalue("pg_url"))


def replytrack(db: str, *args: str) -> str:
    """Run an ops command in process against the store ``db``; its output (exit 0)."""
    result = CliRunner().invoke(cli, ["--config", "none", "--db", db, *args])
    assert result.exit_code == 0, result.output
    return result.output


def campaign_json(db: str, campaign: str = CAMPAIGN) -> dict[str, Any]:
    [row] = json.loads(replytrack(db, "campaigns", "--campaign", campaign, "--json"))
    return row


def status(store: Any, address: str, campaign: str = CAMPAIGN) -> str:
    [enrollment] = store.enrollments(campaign=campaign, recipient=address)
    return enrollment.status


# --- the setting ---------------------------------------------------------------------------


def test_mode_defaults_to_enforce_and_an_unknown_one_is_refused_naming_it() -> None:
    assert load_config("none", env={}).mode == "enforce"
    assert load_config("none", env={"REPLYTRACK_MODE": "monitor"}).mode == "monitor"
    with pytest.raises(ConfigError, match=r"^mode: 'verify' is not one of enforce, monitor"):
        load_config("none", env={"REPLYTRACK_MODE": "verify"})
    result = CliRunner().invoke(
        cli, ["--config", "none", "campaigns"], env={"REPLYTRACK_MODE": "verify"}
    )
    assert result.exit_code != 0 and "mode: 'verify'" in result.output


# --- the milter's engine over a real store -------------------------------------------------


def test_monitored_reply_is_recorded_and_stops_nothing(
    any_store: Any, keyring: Keyring, db: str
) -> None:
    mid = record_sent(any_store, keyring, to=["ann@acme.example", "bob@acme.example"])
    monitor = Engine(
        load_config("none", env={}, overrides={"domain": DOMAIN, "mode": "monitor"}),
        keyring,
        any_store,
    )
    reply = inbound("ann@acme.example", reply_headers("ann@acme.example", in_reply_to=f"<{mid}>"))
    verdict = monitor.process(reply)
    # The decision is the same in both modes: it says what enforce mode would do.
    assert verdict.kind == "reply" and verdict.add_header
    [event] = any_store.events(kind="reply")
    assert event.detail["monitor"] is True
    assert {(c["recipient"], c["status"]) for c in event.detail["would_set"]} == {
        ("ann@acme.example", STOPPED),
        ("bob@acme.example", STOPPED),
    }
    assert status(any_store, "ann@acme.example") == ACTIVE
    assert status(any_store, "bob@acme.example") == ACTIVE
    assert sum(any_store.outbox_counts().values()) == 0
    row = campaign_json(db)
    assert (row["would_stop"], row["would_suppress"], row["stopped"]) == (2, 0, 0)

    # The same reply in enforce mode stops both and queues the webhook.
    enforce = Engine(load_config("none", env={}, overrides={"domain": DOMAIN}), keyring, any_store)
    enforce.process(
        inbound(
            "ann@acme.example",
            reply_headers(
                "ann@acme.example", in_reply_to=f"<{mid}>", message_id="<again@acme.example>"
            ),
        )
    )
    assert status(any_store, "ann@acme.example") == STOPPED
    assert sum(any_store.outbox_counts().values()) >= 1
    assert campaign_json(db)["stopped"] == 2


def test_monitor_apply_makes_the_recorded_stops_once_on_the_switch_to_enforce(
    any_store: Any, keyring: Keyring, db: str
) -> None:
    """After a monitor week the prospects who replied are still active: ``monitor apply``
    stops them (and lists a written "remove me"), notified; a second run changes nothing."""
    mid = record_sent(any_store, keyring, to=["ann@acme.example", "bob@acme.example"])
    other = record_sent(any_store, keyring, to=["cat@other.example"], campaign="autumn")
    monitor = Engine(
        load_config("none", env={}, overrides={"domain": DOMAIN, "mode": "monitor"}),
        keyring,
        any_store,
    )
    monitor.process(
        inbound("ann@acme.example", reply_headers("ann@acme.example", in_reply_to=f"<{mid}>"))
    )
    monitor.process(
        inbound(
            "cat@other.example",
            reply_headers(
                "cat@other.example", in_reply_to=f"<{other}>", message_id="<cat@other.example>"
            ),
            body=b"Please remove me from your mailing list.\n",
        )
    )
    assert status(any_store, "ann@acme.example") == ACTIVE
    assert any_store.suppressed(["cat@other.example"]) == {}

    planned = json.loads(replytrack(db, "monitor", "apply", "--dry-run", "--json"))
    assert {(r["campaign"], r["recipient"], r["to"]) for r in planned} == {
        (CAMPAIGN, "ann@acme.example", STOPPED),
        (CAMPAIGN, "bob@acme.example", STOPPED),
        ("autumn", "cat@other.example", STOPPED),
    }
    assert status(any_store, "ann@acme.example") == ACTIVE  # a dry run changes nothing
    assert sum(any_store.outbox_counts().values()) == 0

    said = replytrack(db, "monitor", "apply")
    assert "changed 3 enrollment(s)" in said and "listed 1 address(es)" in said
    assert status(any_store, "ann@acme.example") == STOPPED
    assert status(any_store, "bob@acme.example") == STOPPED
    assert status(any_store, "cat@other.example", "autumn") == STOPPED
    assert list(any_store.suppressed(["cat@other.example"])) == ["cat@other.example"]
    stops = any_store.events(kind="stopped")
    assert {e.campaign for e in stops} == {CAMPAIGN, "autumn"}
    assert all(e.actor and "monitor mode" in e.detail["reason"] for e in stops)
    assert any_store.outbox_counts()["pending"] == len(stops)  # notified
    assert "changed 0 enrollment(s)" in replytrack(db, "monitor", "apply")
    assert len(any_store.events(kind="stopped")) == len(stops)


# --- the proxy -----------------------------------------------------------------------------


def step(port: int, n: int, to: str = PROSPECT) -> None:
    message = (
        f"From: sales@vendor.example\r\nTo: {to}\r\nSubject: step {n}\r\n"
        f"X-ReplyTrack-Campaign: {CAMPAIGN}\r\nX-ReplyTrack-Step: {n}\r\n\r\nHello\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("sales@vendor.example", [to], message)


def monitored_count() -> float:
    return metrics.PROXY_RECIPIENTS_MONITORED._value.get()


def test_monitor_proxy_relays_to_a_stopped_recipient_enforce_refuses_it(
    any_store: Any,
    db: str,
    upstream: RecordingUpstream,
    start_proxy: Callable[..., ThreadedProxy],
) -> None:
    monitor = start_proxy(upstream.address, proxy_store=any_store, mode="monitor")
    step(monitor.port, 1)
    replytrack(db, "stop", "--campaign", CAMPAIGN, "--recipient", PROSPECT, "--reason", "replied")
    before = monitored_count()
    step(monitor.port, 2)
    assert [r.rcpt_tos for r in upstream.received] == [[PROSPECT], [PROSPECT]]
    assert b"Subject: step 2" in upstream.received[1].data
    assert monitored_count() == before + 1
    second = next(m for m in any_store.messages(campaign=CAMPAIGN) if m.step == 2)
    [recipient] = second.recipients
    assert recipient.status == "sent"
    assert recipient.reason == "monitor: stopped: replied"
    assert status(any_store, PROSPECT) == STOPPED
    assert campaign_json(db)["would_suppress"] == 1

    enforce = start_proxy(upstream.address, proxy_store=any_store)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        step(enforce.port, 2)
    assert refused.value.smtp_code == 550
    error = refused.value.smtp_error
    assert (error.decode() if isinstance(error, bytes) else error).startswith("5.7.1")
    assert len(upstream.received) == 2
    assert campaign_json(db)["would_suppress"] == 1


def test_monitor_proxy_still_honours_the_do_not_contact_list(
    any_store: Any, upstream: RecordingUpstream, start_proxy: Callable[..., ThreadedProxy]
) -> None:
    any_store.add_suppressions(
        [Suppression("address", PROSPECT, reason="unsubscribed", actor="ops", created_at=1.0)]
    )
    monitor = start_proxy(upstream.address, proxy_store=any_store, mode="monitor")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        step(monitor.port, 1)
    assert refused.value.smtp_code == 550 and b"do-not-contact" in refused.value.smtp_error
    assert upstream.received == []


# --- SIGHUP: monitor, then enforce, without a restart --------------------------------------


class ModeProxy:
    """``replytrack --config FILE proxy`` (a process), its config file naming the mode."""

    def __init__(self, tmp_path: Path, upstream: str, workers: int) -> None:
        from tests.test_reload import Proxy

        self.mode = "monitor"
        outer = self

        class WithMode(Proxy):
            def write(self, *, upstream: str, listen: str = "", extra: str = "") -> None:
                super().write(upstream=upstream, listen=listen, extra=extra)
                self.config.write_text(f'mode = "{outer.mode}"\n' + self.config.read_text())

        self.proxy = WithMode(tmp_path, upstream, workers=workers)
        self.upstream = upstream

    def enforce(self, said: str) -> None:
        self.mode = "enforce"
        self.proxy.write(upstream=self.upstream)
        self.proxy.hangup_and_wait(said, 1)


@pytest.fixture
def mode_proxies() -> Iterator[list[ModeProxy]]:
    started: list[ModeProxy] = []
    yield started
    for proxy in started:
        proxy.proxy.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_switches_a_running_proxy_from_monitor_to_enforce(
    tmp_path: Path,
    upstream: RecordingUpstream,
    mode_proxies: list[ModeProxy],
    workers: int,
) -> None:
    from tests.test_reload import wait_until

    running = ModeProxy(tmp_path, upstream.address, workers)
    mode_proxies.append(running)
    proxy = running.proxy
    wait_until(lambda: "listening" in proxy.text() or proxy.proc.poll() is not None, what="start")
    wait_until(lambda: _accepts(proxy.port), what="the proxy to accept")
    assert "monitor mode: nothing is stopped" in proxy.text()
    db = str(proxy.db)
    step(proxy.port, 1)
    replytrack(db, "stop", "--campaign", CAMPAIGN, "--recipient", PROSPECT, "--reason", "replied")
    step(proxy.port, 2)
    assert len(upstream.received) == 2

    said = "reloaded: new sessions use" if workers == 1 else "reloaded: every worker uses"
    running.enforce(said)
    assert "reload: mode monitor -> enforce" in proxy.text()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        step(proxy.port, 2)
    assert refused.value.smtp_code == 550
    assert len(upstream.received) == 2
    row = campaign_json(db)
    assert row["would_suppress"] == 1 and row["suppressed"] >= 1
    assert proxy.stop() == 0


def _accepts(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=5):
            return True
    except OSError:
        return False


# --- the milter in a private Postfix, then SIGHUP ------------------------------------------


@pytest.mark.postfix
def test_monitor_milter_delivers_unflagged_then_enforces_after_sighup(tmp_path: Path) -> None:
    from tests.test_e2e_milter import mail, new_site, teardown, with_lab
    from tests.test_reload import wait_until

    config = tmp_path / "replytrack.toml"
    config.write_text('mode = "monitor"\n')
    site = new_site(REPLYTRACK_CONFIG=str(config))
    try:
        site.start_milter()
        with_lab(site, f"{{ inet:127.0.0.1:{site.milter_port}, default_action=accept }}")
        mid = record_sent(site.store, site.keyring, to=["ann@acme.example", "bob@acme.example"])
        site.send(
            mail(sender="ann@acme.example", subject="Re: monitored", in_reply_to=f"<{mid}>"),
            sender="ann@acme.example",
        )
        delivered = site.delivered("Re: monitored")
        wait_until(lambda: bool(site.store.events(kind="reply")), what="the reply's event")
        assert delivered.get_all("X-ReplyTrack") is None
        [event] = site.store.events(kind="reply")
        assert event.detail["monitor"] is True
        assert site.status(CAMPAIGN, "ann@acme.example") == ACTIVE
        assert sum(site.store.outbox_counts().values()) == 0
        assert "monitor mode: nothing is stopped" in site.milter_log()

        config.write_text('mode = "enforce"\n')
        assert site.process is not None
        site.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded the configuration" in site.milter_log(), what="reload")
        assert "reload: mode monitor -> enforce" in site.milter_log()
        site.send(
            mail(sender="bob@acme.example", subject="Re: enforced", in_reply_to=f"<{mid}>"),
            sender="bob@acme.example",
        )
        flagged = site.delivered("Re: enforced")
        assert (flagged.get("X-ReplyTrack") or "").startswith("reply; campaign=spring")
        assert site.status(CAMPAIGN, "bob@acme.example") == STOPPED
        assert site.status(CAMPAIGN, "ann@acme.example") == STOPPED
    finally:
        teardown(site)


# --- the journal: a mail is replayed under the mode it arrived under ------------------------


@pytest.mark.parametrize(("arrived", "replayed"), [("monitor", "enforce"), ("enforce", "monitor")])
def test_journaled_reply_is_replayed_under_the_mode_it_arrived_under(
    any_store: Any, keyring: Keyring, tmp_path: Path, arrived: str, replayed: str
) -> None:
    """The store was away when the reply arrived, and the site switched modes before it came
    back: the replay does what the site promised when the mail came in (a week of monitor
    mode stops nobody after the switch; `monitor apply` is the switch's own step), and a
    reply that arrived under enforce still stops the campaign after a switch to monitor."""
    from replytrack.milter.journal import Journal

    mid = record_sent(any_store, keyring, to=[PROSPECT])
    reply = inbound(PROSPECT, reply_headers(PROSPECT, in_reply_to=f"<{mid}>"))
    reply.mode = arrived  # what the milter's envfrom sets from the mode of the moment
    journal = Journal(tmp_path / "journal")
    journal.append(reply, "store unavailable at end of headers")

    config = load_config("none", env={}, overrides={"domain": DOMAIN, "mode": replayed})
    assert journal.replay(Engine(config, keyring, any_store).process) == 1

    [event] = any_store.events(kind="reply")
    if arrived == "monitor":
        assert event.detail.get("monitor") is True
        assert status(any_store, PROSPECT) == ACTIVE
        assert sum(any_store.outbox_counts().values()) == 0
    else:
        assert "monitor" not in event.detail
        assert status(any_store, PROSPECT) == STOPPED
        assert sum(any_store.outbox_counts().values()) >= 1


def test_journal_entry_without_a_mode_is_replayed_under_the_configured_one(
    any_store: Any, keyring: Keyring, tmp_path: Path
) -> None:
    """Entries journaled before the mode was kept carry none: the configured mode applies."""
    from replytrack.milter.journal import Journal

    mid = record_sent(any_store, keyring, to=[PROSPECT])
    reply = inbound(PROSPECT, reply_headers(PROSPECT, in_reply_to=f"<{mid}>"))
    journal = Journal(tmp_path / "journal")
    journal.append(reply, "store unavailable at end of headers")
    line = json.loads(journal.path.read_text())
    assert line["inbound"].pop("mode") is None
    journal.path.write_text(json.dumps(line) + "\n")

    config = load_config("none", env={}, overrides={"domain": DOMAIN, "mode": "monitor"})
    assert journal.replay(Engine(config, keyring, any_store).process) == 1
    assert status(any_store, PROSPECT) == ACTIVE
    [event] = any_store.events(kind="reply")
    assert event.detail.get("monitor") is True


def test_the_monitor_counts_read_their_partial_indexes_not_every_row(
    any_store: Any, keyring: Keyring, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`replytrack campaigns` counts monitor mode's rows on every call: on a store of
    millions of recipients and events, a scan of both each time. Its statements must be the
    ones the partial indexes of schema 9 serve (the condition written the same way)."""
    record_sent(any_store, keyring, to=["ann@acme.example"])
    statements: list[str] = []
    listed_rows = any_store.listed_rows

    def recording(sql: str, params: list[Any], limit: int | None) -> Any:
        statements.append(sql)
        return listed_rows(sql, params, limit)

    monkeypatch.setattr(any_store, "listed_rows", recording)
    any_store.monitor_counts()
    any_store.monitored_events()
    assert len(statements) == 3
    if isinstance(any_store, SQLiteStore):
        import sqlite3

        with sqlite3.connect(db) as conn:
            plans = [
                " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
                for sql in statements
            ]
    else:
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("SET enable_seqscan = off")  # a tiny table: prove the index serves
            plans = [
                " ".join(row[0] for row in conn.execute(f"EXPLAIN {sql}").fetchall())
                for sql in statements
            ]
    assert "events_monitored" in plans[0], plans[0]
    assert "recipients_monitored" in plans[1], plans[1]
    assert "events_monitored" in plans[2], plans[2]
