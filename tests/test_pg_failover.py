"""A PostgreSQL primary fails and its streaming standby is promoted while campaign mail flows
through a ``replytrack proxy`` and replies reach a ``replytrack milter``, both real processes
on a multi-host URL (``target_session_attrs=read-write``). Neither is restarted.

Afterwards every mail the proxy answered 250 is recorded, with its enrollment, in the
promoted server, and the replies (one journaled while no primary was there) stopped their
prospects. The standby is synchronous: with asynchronous replication a commit the primary
acknowledged can be missing on the standby when the primary dies, and no client of any kind
can be told 250 safely across such a failover (see postfix-example/README.md).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.utils import make_msgid

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
from tests.support.pg import PgServer, PgUnavailable, start_server, unavailable
from tests.support.postfix import PostfixLab, PostfixUnavailable, ensure_postfix, make_base_dir
from tests.support.upstream import RecordingUpstream

pytestmark = [pytest.mark.postfix, pytest.mark.timeout(300)]

CAMPAIGN = "failover"
SALES = f"sales@{LAB_DOMAIN}"
# Mails accepted before the primary fails, and after the standby took over.
BEFORE, AFTER = 10, 10
# Bounds on waiting (never asserted as durations): reconnecting, replaying, one mail's retries.
RECOVERY_WAIT = 90.0


@dataclass
class Client:
    """A campaign engine sending one step to a new prospect after another, retrying 4xx."""

    port: int
    accepted: list[int] = field(default_factory=list)
    tempfails: int = 0
    refused: list[tuple[int, int, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def run(self) -> None:
        number = 0
        while not self.stop.is_set():
            to = f"p{number}@{LAB_DOMAIN}"
            data = campaign_mail(to=to, subject=f"F{number}", campaign=CAMPAIGN, step=1)
            while not self.stop.is_set():
                try:
                    code, text = submit(self.port, SALES, [to], data)
                except OSError:
                    code, text = 421, "connection failed"
                if code == 250:
                    self.accepted.append(number)
                    break
                if code >= 500:
                    self.refused.append((number, code, text))
                    break
                self.tempfails += 1
                self.stop.wait(0.2)
            number += 1

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="campaign-client", daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(120)


@pytest.fixture
def pair() -> Iterator[tuple[PgServer, PgServer]]:
    """A private primary and its synchronous streaming standby."""
    try:
        primary = start_server()
    except PgUnavailable as exc:
        unavailable(str(exc))
        raise
    standby: PgServer | None = None
    try:
        standby = primary.make_standby()
        # Every commit waits until the standby has it: what the proxy confirmed survives.
        primary.admin("ALTER SYSTEM SET synchronous_standby_names = '*'")
        primary.admin("SELECT pg_reload_conf()")
        yield primary, standby
    finally:
        if standby is not None:
            standby.remove()
        primary.remove()


def sync_standby_attached(primary: PgServer) -> bool:
    import psycopg

    with psycopg.connect(primary.url("postgres"), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
        found = row.fetchone()
    return bool(found and found[0])


def test_promoted_standby_holds_every_mail_the_proxy_accepted(
    pair: tuple[PgServer, PgServer],
) -> None:
    primary, standby = pair
    try:
        ensure_postfix()
    except PostfixUnavailable as exc:
        pytest.skip(str(exc))
    assert wait_until(lambda: sync_standby_attached(primary), 30)
    dbname = primary.create_database()
    hosts = f"{primary.host}:{primary.port},{standby.host}:{standby.port}"
    url = f"postgresql://replytrack@{hosts}/{dbname}?target_session_attrs=read-write"

    base = make_base_dir("replytrack-failover-")
    secret = base / "replytrack.secret"
    load_keyring(secret, create=True)
    env = daemon_env(url, secret)
    upstream = RecordingUpstream().start()
    proxy = Daemon.proxy("proxy", base / "relay", env, port=free_port(), upstream=upstream.address)
    milter = Daemon.milter("mx", base / "mx", env, port=free_port())
    lab: PostfixLab | None = None
    client = Client(proxy.port)
    store: Store | None = None
    try:
        proxy.start()
        milter.start()
        lab = PostfixLab(
            base / "mx" / "postfix",
            milter=f"{{ inet:127.0.0.1:{milter.port}, default_action=accept }}",
            domain=LAB_DOMAIN,
        ).start()

        def logs() -> str:
            return f"--- proxy\n{proxy.log()[-4000:]}\n--- milter\n{milter.log()[-4000:]}"

        def stamped(number: int) -> str:
            for received in upstream.received:
                msg = message_from_bytes(received.data)
                if msg.get("Subject") == f"F{number}":
                    return str(msg["Message-ID"]).strip()
            raise AssertionError(f"F{number} got 250 but never reached the upstream")

        def reply_to(number: int) -> None:
            prospect = f"p{number}@{LAB_DOMAIN}"
            data = reply_mail(
                sender=prospect,
                subject=f"Re: F{number}",
                in_reply_to=stamped(number),
                message_id=make_msgid(domain="prospect.test"),
            )
            assert lab is not None
            assert submit(lab.smtp_port, prospect, [SALES], data)[0] == 250

        client.start()
        assert wait_until(lambda: len(client.accepted) >= BEFORE, RECOVERY_WAIT), logs()

        # The primary dies; until the standby is promoted there is no writable server.
        primary.stop()
        reply_to(client.accepted[0])
        assert lab.wait_for_mail(1)
        # The proxy fails closed meanwhile: the client is told 4xx and tries again.
        assert wait_until(lambda: client.tempfails > 0, RECOVERY_WAIT), logs()
        standby.promote()
        promoted_at = len(client.accepted)

        # Mail flows again through the same proxy process, now on the promoted server.
        assert wait_until(lambda: len(client.accepted) >= promoted_at + AFTER, RECOVERY_WAIT), (
            logs()
        )
        client.finish()
        assert proxy.running() and milter.running(), logs()
        reply_to(client.accepted[1])
        assert lab.wait_for_mail(2)

        store = open_store(standby.url(dbname))
        assert client.refused == []
        for number in client.accepted:
            prospect = f"p{number}@{LAB_DOMAIN}"
            # Recorded IDs are kept without their angle brackets.
            recorded = store.find_sent([stamped(number).strip("<>")])
            assert recorded, f"F{number} got 250 but is not recorded"
            assert store.enrollments(campaign=CAMPAIGN, recipient=prospect), prospect
        # Both replies stopped their prospects: the one journaled while no primary was
        # there (replayed by the milter itself) and the one after the promotion.
        for number in client.accepted[:2]:
            prospect = f"p{number}@{LAB_DOMAIN}"

            def stopped(who: str = prospect) -> bool:
                assert store is not None
                found = store.enrollments(campaign=CAMPAIGN, recipient=who)
                return bool(found) and found[0].status == "stopped"

            assert wait_until(stopped, RECOVERY_WAIT), logs()
    finally:
        client.stop.set()
        if store is not None:
            store.close_all()
        proxy.stop()
        milter.stop()
        if lab is not None:
            lab.stop()
        upstream.stop()
        shutil.rmtree(base, ignore_errors=True)
