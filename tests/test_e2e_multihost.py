"""End to end on several hosts' worth of real parts: two private Postfix MX instances, each
with its own ``replytrack milter`` process, one ``replytrack proxy`` process, one private
PostgreSQL store and one key file shared by all of them.

The campaign mail leaves through the proxy (to a recording aiosmtpd upstream), the
prospect's reply arrives at MX B and stops the campaign for every host; then PostgreSQL goes
away and comes back while mail keeps arriving. Assertions are on what was delivered, what
reached the upstream, what the SMTP clients were told and what the store holds.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.utils import make_msgid
from pathlib import Path

import pytest

from replytrack.store import Store, open_store
from replytrack.tokens import load_keyring
from tests.support.multihost import (
    LAB_DOMAIN,
    Daemon,
    campaign_mail,
    daemon_env,
    reply_mail,
    submit,
    wait_until,
)
from tests.support.net import free_port
from tests.support.pg import PgServer
from tests.support.postfix import (
    PostfixLab,
    PostfixUnavailable,
    ensure_postfix,
    make_base_dir,
)
from tests.support.upstream import RecordingUpstream

pytestmark = [pytest.mark.postfix, pytest.mark.timeout(300)]

CAMPAIGN = "multihost-spring"
SALES = f"sales@{LAB_DOMAIN}"
# The milter replays its journal every few seconds; this bounds the wait for it generously.
REPLAY_WAIT = 60.0


@dataclass
class MX:
    """One MX host: a Postfix instance and its milter."""

    name: str
    lab: PostfixLab
    milter: Daemon

    def send(self, data: bytes, *, sender: str) -> tuple[int, str]:
        return submit(self.lab.smtp_port, sender, [SALES], data)

    def delivered(self, subject: str, timeout: float = 30) -> Message:
        """The delivered mail with exactly this Subject (waits for it)."""
        found: list[Message] = []

        def arrived() -> bool:
            found[:] = [
                m
                for m in (message_from_bytes(d) for d in self.lab.maildir())
                if m.get("Subject") == subject
            ]
            return bool(found)

        if not wait_until(arrived, timeout):
            raise AssertionError(
                f"{subject!r} not delivered at {self.name}\n{self.lab.log_tail()}\n"
                f"{self.milter.log()[-3000:]}"
            )
        return found[0]


@dataclass
class Site:
    base: Path
    pg: PgServer
    url: str
    store: Store
    upstream: RecordingUpstream
    proxy: Daemon
    mx_a: MX
    mx_b: MX

    def send_campaign(self, to: str, subject: str, step: int) -> tuple[int, str]:
        data = campaign_mail(to=to, subject=subject, campaign=CAMPAIGN, step=step)
        return submit(self.proxy.port, SALES, [to], data)

    def stamped_id(self, subject: str) -> str:
        """The Message-ID the upstream received on the mail with this Subject."""
        for received in self.upstream.received:
            msg = message_from_bytes(received.data)
            if msg.get("Subject") == subject:
                return str(msg["Message-ID"]).strip()
        raise AssertionError(f"{subject!r} never reached the upstream")

    def status(self, recipient: str) -> str:
        found = self.store.enrollments(campaign=CAMPAIGN, recipient=recipient)
        return found[0].status if found else "none"

    def reply_events(self, inbound_id: str) -> list[object]:
        bare = inbound_id.strip("<>")
        return [
            e
            for e in self.store.events(kind="reply")
            if (e.inbound_message_id or "").strip("<>") == bare
        ]

    def logs(self) -> str:
        parts = [self.proxy, self.mx_a.milter, self.mx_b.milter]
        return "\n".join(f"--- {d.name}\n{d.log()[-3000:]}" for d in parts)


@pytest.fixture(scope="module")
def site(pg_server: PgServer) -> Iterator[Site]:
    try:
        ensure_postfix()
    except PostfixUnavailable as exc:
        pytest.skip(str(exc))
    base = make_base_dir("replytrack-e2e-multihost-")
    dbname = pg_server.create_database()
    url = pg_server.url(dbname)
    # One key file for every host: any milter verifies what the proxy signed.
    secret = base / "replytrack.secret"
    load_keyring(secret, create=True)
    env = daemon_env(url, secret)
    started: list[Daemon] = []
    labs: list[PostfixLab] = []
    upstream = RecordingUpstream().start()
    try:
        proxy = Daemon.proxy(
            "proxy", base / "relay", env, port=free_port(), upstream=upstream.address
        )
        started.append(proxy.start())
        hosts = []
        for name in ("mx-a", "mx-b"):
            milter = Daemon.milter(name, base / name, env, port=free_port())
            started.append(milter.start())
            lab = PostfixLab(
                base / name / "postfix",
                milter=f"{{ inet:127.0.0.1:{milter.port}, default_action=accept }}",
                milter_default_action="tempfail",
                domain=LAB_DOMAIN,
            )
            labs.append(lab.start())
            hosts.append(MX(name, lab, milter))
        store = open_store(url)
        yield Site(base, pg_server, url, store, upstream, proxy, hosts[0], hosts[1])
        store.close_all()
    finally:
        for daemon in started:
            daemon.stop()
        for lab in labs:
            lab.stop()
        upstream.stop()
        if not pg_server.running():
            pg_server.start()
        pg_server.drop_database(dbname)
        if not os.environ.get("REPLYTRACK_PFLAB_KEEP"):
            shutil.rmtree(base, ignore_errors=True)


def test_reply_at_mx_b_stops_the_campaign_and_an_outage_loses_nothing(site: Site) -> None:
    first, second, third = (f"{n}@{LAB_DOMAIN}" for n in ("ann", "ben", "cat"))

    # Step 1 to two prospects leaves through the proxy, stamped and recorded.
    for who in (first, second):
        assert site.send_campaign(who, f"Offer for {who}", 1)[0] == 250
    first_id = site.stamped_id(f"Offer for {first}")
    second_id = site.stamped_id(f"Offer for {second}")
    assert first_id.endswith("@track.example.test>")
    assert site.status(first) == "active"

    # The first prospect's reply arrives at MX B: flagged there, the campaign stops.
    reply = reply_mail(
        sender=first,
        subject="Re: offer (ann)",
        in_reply_to=first_id,
        message_id=make_msgid(domain="prospect.test"),
    )
    assert site.mx_b.send(reply, sender=first)[0] == 250
    delivered = site.mx_b.delivered("Re: offer (ann)")
    assert str(delivered["X-ReplyTrack"]).startswith("reply"), site.logs()
    assert site.status(first) == "stopped"

    # The proxy on the relay host sees that stop at once: step 2 is refused.
    sent_before = len(site.upstream.received)
    code, text = site.send_campaign(first, "Step 2 for ann", 2)
    assert (code, text[:5]) == (550, "5.7.1"), text
    assert len(site.upstream.received) == sent_before

    # PostgreSQL goes away.
    site.pg.stop()
    try:
        # A reply at MX A is still delivered (fail open), and journaled there.
        reply_id = make_msgid(domain="prospect.test")
        reply = reply_mail(
            sender=second, subject="Re: offer (ben)", in_reply_to=second_id, message_id=reply_id
        )
        assert site.mx_a.send(reply, sender=second)[0] == 250
        site.mx_a.delivered("Re: offer (ben)")
        assert wait_until(lambda: site.mx_a.milter.journal.exists(), 10), site.logs()
        assert reply_id.encode() in site.mx_a.milter.journal.read_bytes()

        # The proxy fails closed: the client is told to try again, nothing goes upstream.
        code, text = site.send_campaign(third, f"Offer for {third}", 1)
        assert (code, text[:5]) == (451, "4.3.0"), text
        assert len(site.upstream.received) == sent_before
    finally:
        site.pg.start()

    # Back again: the milter replays its journal by itself; the second prospect is stopped.
    assert wait_until(lambda: site.status(second) == "stopped", REPLAY_WAIT), site.logs()
    assert len(site.reply_events(reply_id)) == 1
    code, text = site.send_campaign(second, "Step 2 for ben", 2)
    assert (code, text[:5]) == (550, "5.7.1"), text

    # The client's retry of the mail refused during the outage goes through now.
    assert site.send_campaign(third, f"Offer for {third}", 1)[0] == 250
    assert site.stamped_id(f"Offer for {third}")
    assert site.status(third) == "active"
    # Nothing was lost: one reply event for each reply, the journal emptied.
    assert len(site.reply_events(str(delivered["Message-ID"]))) == 1
    assert wait_until(lambda: site.mx_a.milter.journal_backlog() == 0, 10), site.logs()


def test_the_same_reply_delivered_to_both_mx_hosts_is_one_event(site: Site) -> None:
    prospect = f"dan@{LAB_DOMAIN}"
    assert site.send_campaign(prospect, f"Offer for {prospect}", 1)[0] == 250
    stamped = site.stamped_id(f"Offer for {prospect}")
    reply_id = make_msgid(domain="prospect.test")
    reply = reply_mail(
        sender=prospect, subject="Re: offer (dan)", in_reply_to=stamped, message_id=reply_id
    )
    # A sending server that retried at the second MX after losing the first one's answer.
    for mx in (site.mx_a, site.mx_b):
        assert mx.send(reply, sender=prospect)[0] == 250
        assert str(mx.delivered("Re: offer (dan)")["X-ReplyTrack"]).startswith("reply")
    assert len(site.reply_events(reply_id)) == 1
    assert site.status(prospect) == "stopped"
