"""End to end: an unsubscribe by mail, through real parts only.

A private Postfix on loopback runs ``replytrack milter`` (a process) in ``smtpd_milters`` and
the unsubscribe lines of postfix-example/README.md ("Unsubscribe mail and one-click links")
as written there: only the example domain and the ``/etc/postfix/`` directory of the two
tables are changed to the test's own. ``replytrack proxy`` (a process) relays campaign mail to
a recording aiosmtpd upstream; both daemons share one SQLite store and one key file.

The prospect gets step 1 of two campaigns, "clicks" the mailto of the ``List-Unsubscribe``
header that reached the upstream (a mail to that address, into Postfix), and from then on
every campaign's mail to them is refused by the proxy. The MX accepts that mail and discards
it. A forged token sent the same way is accepted and discarded too, and changes nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path

import pytest

from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import load_keyring
from tests.support.multihost import (
    ID_DOMAIN,
    LAB_DOMAIN,
    Daemon,
    campaign_mail,
    daemon_env,
    submit,
)
from tests.support.net import free_port
from tests.support.postfix import (
    PostfixLab,
    PostfixUnavailable,
    ensure_postfix,
    make_base_dir,
)
from tests.support.upstream import RecordingUpstream

pytestmark = [pytest.mark.postfix, pytest.mark.timeout(240)]

README = Path(__file__).resolve().parents[1] / "postfix-example" / "README.md"
SECTION = "### Unsubscribe mail and one-click links"
# What the README's lines name, and what the test puts in their place.
EXAMPLE_DOMAIN = "track.example.com"
EXAMPLE_ETC = "/etc/postfix/"
SALES = f"sales@{LAB_DOMAIN}"
PROSPECT = f"pat@{LAB_DOMAIN}"
STRANGER = "mallory@elsewhere.test"
MAILTO = re.compile(r"<mailto:([^>]+)>")


def unsubscribe_example(etc: Path) -> tuple[str, dict[str, str]]:
    """The README's unsubscribe configuration: the main.cf lines and each lookup table
    (file name: content), with the example domain and table directory replaced."""
    text = README.read_text()
    start = text.index(SECTION)
    block = text[text.index("```\n", start) + 4 :]
    block = block[: block.index("```")]
    block = block.replace(EXAMPLE_DOMAIN, ID_DOMAIN).replace(EXAMPLE_ETC, f"{etc}/")
    main_cf: list[str] = []
    tables: dict[str, list[str]] = {}
    current = main_cf
    for line in block.splitlines():
        # "# /etc/postfix/NAME: ..." starts the content of a lookup table.
        header = re.match(rf"# {re.escape(str(etc))}/(\w+):", line)
        if header:
            current = tables.setdefault(header.group(1), [])
        elif line.strip():
            current.append(line)
    return "\n".join(main_cf) + "\n", {n: "\n".join(t) + "\n" for n, t in tables.items()}


@dataclass
class Site:
    base: Path
    db: Path
    store: SQLiteStore
    upstream: RecordingUpstream
    proxy: Daemon
    milter: Daemon
    lab: PostfixLab

    def campaign(self, campaign: str, step: int, subject: str) -> tuple[int, str]:
        data = campaign_mail(to=PROSPECT, subject=subject, campaign=campaign, step=step)
        return submit(self.proxy.port, SALES, [PROSPECT], data)

    def arrived(self, subject: str) -> list[bytes]:
        """What the upstream received with this Subject."""
        return [
            r.data
            for r in self.upstream.received
            if message_from_bytes(r.data).get("Subject") == subject
        ]

    def to_mx(self, recipient: str, subject: str, *, sender: str = PROSPECT) -> tuple[int, str]:
        """A mail client sends a mailto unsubscribe (or any mail) to ``recipient`` at our MX."""
        data = (
            f"From: {sender}\r\nTo: {recipient}\r\nSubject: {subject}\r\n\r\nunsubscribe\r\n"
        ).encode()
        return submit(self.lab.smtp_port, sender, [recipient], data)

    def outbox_kinds(self) -> list[str]:
        """The event kinds queued in the webhook outbox."""
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute(
                "SELECT e.kind FROM outbox o JOIN events e ON e.id = o.event ORDER BY o.id"
            ).fetchall()
        return [kind for (kind,) in rows]

    def statuses(self) -> dict[str, str]:
        return {e.campaign: e.status for e in self.store.enrollments_of(PROSPECT)}

    def logs(self) -> str:
        parts = [f"--- {d.name}\n{d.log()[-3000:]}" for d in (self.proxy, self.milter)]
        return "\n".join([*parts, self.lab.log_tail()])


@pytest.fixture
def site() -> Iterator[Site]:
    try:
        ensure_postfix()
    except PostfixUnavailable as exc:
        pytest.skip(str(exc))
    base = make_base_dir("replytrack-e2e-unsubscribe-")
    db, secret = base / "rt.db", base / "rt.secret"
    load_keyring(secret, create=True)
    store = SQLiteStore(db)
    env = daemon_env(str(db), secret)
    upstream = RecordingUpstream().start()
    started: list[Daemon] = []
    lab: PostfixLab | None = None
    try:
        milter = Daemon.milter("milter", base / "mx", env, port=free_port())
        started.append(milter.start())
        proxy = Daemon.proxy(
            "proxy", base / "relay", env, port=free_port(), upstream=upstream.address
        )
        started.append(proxy.start())
        lab = PostfixLab(
            base / "postfix",
            milter=f"{{ inet:127.0.0.1:{milter.port}, default_action=accept }}",
            domain=LAB_DOMAIN,
            # Postfix's own default, as on a real MX (the lab refuses relay domains outright
            # otherwise, which would hide whether the example's relay_recipient_maps work).
            # DNS is off in the lab: nothing could leave loopback through it anyway.
            extra_main={"relay_transport": "relay"},
        )
        main_cf, tables = unsubscribe_example(lab.etc)
        lab.main_cf = main_cf
        lab.write_config()
        for name, content in tables.items():
            (lab.etc / name).write_text(content)
            # As the README says: postmap the tables before Postfix reads them.
            subprocess.run(
                ["postmap", "-c", str(lab.etc), f"hash:{lab.etc / name}"],
                check=True,
                capture_output=True,
            )
        lab.start()
        yield Site(base, db, store, upstream, proxy, milter, lab)
    finally:
        if lab is not None:
            lab.stop()
        for daemon in started:
            daemon.stop()
        upstream.stop()
        store.close_all()
        if not os.environ.get("REPLYTRACK_PFLAB_KEEP"):
            shutil.rmtree(base, ignore_errors=True)


def test_the_example_reads_as_main_cf_lines_and_two_tables(tmp_path: Path) -> None:
    main_cf, tables = unsubscribe_example(tmp_path)
    assert "recipient_delimiter = +" in main_cf
    assert f"hash:{tmp_path}/relay_recipients" in main_cf
    assert set(tables) == {"relay_recipients", "transport"}
    assert f"unsubscribe@{ID_DOMAIN}" in tables["transport"]


def forge(address: str) -> str:
    """``address`` with one character of its token changed."""
    local, _, host = address.rpartition("@")
    base, _, token = local.partition("+")
    spot = len(token) // 2
    changed = token[:spot] + ("a" if token[spot] != "a" else "b") + token[spot + 1 :]
    return f"{base}+{changed}@{host}"


def step_one(site: Site) -> tuple[str, str]:
    """Step 1 of campaigns A and B to the prospect; (A's stamped Message-ID, A's mailto)."""
    assert site.campaign("camp-a", 1, "A step 1")[0] == 250, site.logs()
    assert site.campaign("camp-b", 1, "B step 1")[0] == 250, site.logs()
    [a_mail] = (message_from_bytes(d) for d in site.arrived("A step 1"))
    [mailto] = MAILTO.findall(str(a_mail["List-Unsubscribe"]))
    local, _, host = mailto.rpartition("@")
    assert host == ID_DOMAIN and local.startswith("unsubscribe+"), mailto
    assert site.statuses() == {"camp-a": "active", "camp-b": "active"}
    return str(a_mail["Message-ID"]).strip().strip("<>"), mailto


def accepted_and_discarded(site: Site, recipient: str) -> None:
    """Postfix delivered the mail to ``recipient`` nowhere: the example's discard transport
    took it, no mailbox got it, nothing is left queued."""
    log = site.lab.wait_for_log(f"to=<{recipient}>")
    assert re.search(
        rf"to=<{re.escape(recipient)}>, relay=none.*"
        r"status=sent \(unsubscribe handled by replytrack\)",
        log,
    ), site.lab.log_tail()
    site.lab.wait_queue_empty()
    assert site.lab.maildir() == []


def test_mailto_unsubscribe_into_postfix_refuses_every_campaigns_next_mail(site: Site) -> None:
    stamped, mailto = step_one(site)
    outbox_before = site.outbox_kinds()

    # Only the unsubscribe address exists on that domain (README: others get 550 5.1.1).
    code, text = site.to_mx(f"sales@{ID_DOMAIN}", "probe")
    assert (code, text[:5]) == (550, "5.1.1"), text

    # A forged token (one character changed) is accepted and discarded, and does nothing.
    # Sent by a stranger, who with the real token would unsubscribe everyone the mail went
    # to (a one-click link names nobody either): only the token can decide here.
    forged = forge(mailto)
    assert site.to_mx(forged, "unsubscribe", sender=STRANGER)[0] == 250, site.logs()
    accepted_and_discarded(site, forged)
    assert site.store.suppressed([PROSPECT]) == {}
    assert site.store.events(kind="unsubscribe") == []
    assert site.statuses() == {"camp-a": "active", "camp-b": "active"}
    assert site.outbox_kinds() == outbox_before

    # The real one, from the prospect's mail client: Postfix takes it (the milter recorded
    # it before this 250), and discards it.
    code, text = site.to_mx(mailto, "unsubscribe")
    assert code == 250, text
    accepted_and_discarded(site, mailto)

    # The store: on the do-not-contact list, stopped everywhere, one event, one webhook row.
    listed = site.store.suppressed([PROSPECT])
    assert PROSPECT in listed, site.logs()
    assert listed[PROSPECT].reason == "unsubscribed (mailto)"
    assert site.statuses() == {"camp-a": "stopped", "camp-b": "stopped"}
    [event] = site.store.events(kind="unsubscribe")
    assert (event.recipient, (event.message_id or "").strip("<>")) == (PROSPECT, stamped)
    assert site.outbox_kinds() == [*outbox_before, "unsubscribe"]

    # The proxy refuses campaign A's next step and a new campaign's first mail alike.
    sent_before = len(site.upstream.received)
    for campaign, step, subject in (("camp-a", 2, "A step 2"), ("camp-c", 1, "C step 1")):
        code, text = site.campaign(campaign, step, subject)
        assert (code, text[:5]) == (550, "5.7.1"), text
        assert "unsubscribed" in text, text
        assert site.arrived(subject) == []
    assert len(site.upstream.received) == sent_before


def test_forged_token_from_the_prospect_changes_nothing(site: Site) -> None:
    _, mailto = step_one(site)
    outbox_before = site.outbox_kinds()
    forged = forge(mailto)
    assert site.to_mx(forged, "unsubscribe")[0] == 250, site.logs()
    accepted_and_discarded(site, forged)
    assert site.store.suppressed([PROSPECT]) == {}
    assert site.store.events(kind="unsubscribe") == []
    assert site.statuses() == {"camp-a": "active", "camp-b": "active"}
    assert site.outbox_kinds() == outbox_before
