"""postfix-example/ proven against a real Postfix: the files an admin deploys, as they are.

Each test starts a private Postfix on loopback whose main.cf / master.cf get exactly the
lines of postfix-example/ appended; only the ports are changed (to free ones), nothing
else. Then a whole scenario runs through each outbound mode: campaign mail out through
``replytrack proxy``, delivered by the reinjection listener; the prospect's reply in through
``replytrack milter``; the campaign stopped; the next step refused.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import re
import shutil
import smtplib
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from replytrack.config import Config, _flatten, load_config
from tests.support.engine_mail import DOMAIN, campaign_mail
from tests.support.postfix import (
    EXAMPLE_PORTS,
    PostfixLab,
    free_port,
    port_open,
    render_example,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "postfix-example"
REPLYTRACK = Path(sys.executable).with_name("replytrack")
ID_DOMAIN = "track.example.test"
DEFAULT_PORTS = EXAMPLE_PORTS


def render(name: str, ports: dict[str, int]) -> str:
    """An example file with its loopback ports replaced by ``ports``; nothing else changes."""
    return render_example((EXAMPLE / name).read_text(), ports)


@pytest.fixture
def ports() -> dict[str, int]:
    """Free loopback ports for every role."""
    chosen: dict[str, int] = {}
    while len(set(chosen.values())) < len(DEFAULT_PORTS):
        chosen = {role: free_port() for role in DEFAULT_PORTS}
    return chosen


# --- the replytrack daemons ------------------------------------------------------------------


@dataclass
class Daemon:
    """A replytrack daemon running as a subprocess."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Replytrack:
    """Runs ``replytrack`` commands and daemons against one store."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.db = workdir / "replytrack.db"
        self.daemons: list[Daemon] = []

    def base_args(self) -> list[str]:
        return [str(REPLYTRACK), "--db", str(self.db), "--domain", ID_DOMAIN]

    def start(self, name: str, args: list[str], port: int) -> Daemon:
        """Start ``replytrack ARGS`` and wait until it listens on ``port``."""
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*self.base_args(), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
        daemon = Daemon(name, process, log_path)
        self.daemons.append(daemon)
        deadline = time.monotonic() + 30
        while not port_open(port):
            if process.poll() is not None:
                pytest.fail(f"replytrack {name} exited ({process.returncode}):\n{daemon.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"replytrack {name} not listening on {port}:\n{daemon.log()}")
            time.sleep(0.1)
        return daemon

    def proxy(self, listen: int, upstream: int) -> Daemon:
        return self.start(
            "proxy",
            ["proxy", "--listen", f"127.0.0.1:{listen}", "--upstream", f"127.0.0.1:{upstream}"],
            listen,
        )

    def milter(self, port: int) -> Daemon:
        # Its journals stay in the work directory, never the deployment's /var/spool.
        journal = ["--journal", str(self.workdir / "journal")]
        return self.start(
            "milter", ["milter", "--socket", f"inet:{port}@127.0.0.1", *journal], port
        )

    def json(self, *args: str) -> list[dict[str, object]]:
        """Run a listing command with ``--json`` and parse its output."""
        result = subprocess.run(
            [*self.base_args(), *args, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"replytrack {' '.join(args)}: {result.stderr}"
        rows = json.loads(result.stdout)
        assert isinstance(rows, list)
        return rows

    def stop_all(self) -> None:
        for daemon in self.daemons:
            if daemon.process.poll() is None:
                daemon.process.terminate()
                try:
                    daemon.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    daemon.process.kill()
                    daemon.process.wait(timeout=10)


@pytest.fixture
def replytrack(tmp_path: Path) -> Iterator[Replytrack]:
    """replytrack commands on a fresh store; daemons stopped on teardown."""
    assert REPLYTRACK.exists(), f"{REPLYTRACK} missing: run scripts/bootstrap.sh"
    work = tmp_path / "replytrack"
    work.mkdir()
    rt = Replytrack(work)
    # As the install steps do: only init creates the store and key the daemons need.
    subprocess.run([*rt.base_args(), "init"], cwd=work, check=True, capture_output=True)
    yield rt
    rt.stop_all()


# --- mail ----------------------------------------------------------------------------------


def reply_to(original: email.message.Message) -> EmailMessage:
    """The prospect's reply to a delivered campaign mail."""
    msg = EmailMessage()
    msg["From"] = f"Prospect <prospect@{DOMAIN}>"
    msg["To"] = f"sales@{DOMAIN}"
    msg["Subject"] = "Re: " + str(original["Subject"])
    msg["Message-ID"] = f"<reply-1@mua.{DOMAIN}>"
    msg["In-Reply-To"] = str(original["Message-ID"])
    msg["References"] = str(original["Message-ID"])
    msg.set_content("Yes, interested. Call me.\n")
    return msg


def send(port: int, msg: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60) as client:
        client.send_message(msg)


def delivered(lab: PostfixLab, subject: str) -> list[email.message.Message]:
    """Delivered messages whose Subject is ``subject``."""
    parsed = [email.message_from_bytes(raw, policy=email.policy.compat32) for raw in lab.maildir()]
    return [m for m in parsed if m["Subject"] == subject]


def wait_delivered(lab: PostfixLab, subject: str, timeout: float = 30) -> email.message.Message:
    deadline = time.monotonic() + timeout
    while True:
        found = delivered(lab, subject)
        if found:
            return found[0]
        if time.monotonic() > deadline:
            pytest.fail(f"{subject!r} not delivered within {timeout}s\n{lab.log_tail()}")
        time.sleep(0.2)


def start_lab(
    postfix_lab: Callable[..., PostfixLab], ports: dict[str, int], master: str, **kwargs: object
) -> PostfixLab:
    return postfix_lab(
        main_cf=render("main.cf.inbound", ports), master_cf=render(master, ports), **kwargs
    )


# --- static checks -------------------------------------------------------------------------


def test_example_toml_parses_and_shows_every_setting() -> None:
    config = load_config(EXAMPLE / "replytrack.toml", env={})
    written = set(_flatten(tomllib.loads((EXAMPLE / "replytrack.toml").read_text())))
    settings = {f.name for f in dataclasses.fields(Config)} - {"source"}
    assert settings - written == set(), "settings missing from the example"
    # Apart from the deployment-specific ones, the example shows the defaults.
    own = {"db", "domain", "secret_file", "hostname", "milter_internal_domains"}
    own |= {"milter_journal_fallback"}  # the unit's RuntimeDirectory, also for doctor
    changed = {name for name in settings if getattr(config, name) != getattr(Config(), name)}
    assert changed == own
    assert config.proxy_listen == "127.0.0.1:10025"
    assert config.proxy_upstream == "127.0.0.1:10026"
    assert config.milter_socket == "inet:8894@127.0.0.1"
    assert config.db == "/var/lib/replytrack/replytrack.db"
    assert config.milter_stop_scope == "thread"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
@pytest.mark.parametrize("unit", ["replytrack-proxy.service", "replytrack-milter.service"])
def test_systemd_units_verify(unit: str, tmp_path: Path) -> None:
    # Only the install path of the program is replaced, so that the binary exists.
    text = (EXAMPLE / unit).read_text()
    assert "/opt/replytrack/venv/bin/replytrack" in text
    (tmp_path / unit).write_text(
        text.replace("/opt/replytrack/venv/bin/replytrack", str(REPLYTRACK))
    )
    # The man pages are built into the package (scripts/make-man.py), not installed here:
    # test_systemd_units_notify_reload_and_harden checks they are the ones built.
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert unit not in result.stderr, result.stderr


def unit_settings(unit: str) -> dict[str, list[str]]:
    """The [Service] and [Unit] settings of ``unit``: name -> values, in order."""
    settings: dict[str, list[str]] = {}
    for line in (EXAMPLE / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, _, value = line.partition("=")
            settings.setdefault(name.strip(), []).append(value.strip())
    return settings


# Where scripts/build-deb.sh puts each shipped document, from the repository.
SHIPPED_DOCS = {
    "file:///usr/share/doc/replytrack/README.md": "README.md",
    "file:///usr/share/doc/replytrack/examples/README.md": "postfix-example/README.md",
}


@pytest.mark.parametrize("unit", ["replytrack-proxy.service", "replytrack-milter.service"])
def test_systemd_units_notify_reload_and_harden(unit: str) -> None:
    settings = unit_settings(unit)
    # systemd waits for READY=1, so Before=postfix.service means "after the socket listens".
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["SystemCallFilter"] == ["@system-service"]
    assert settings["ProtectProc"] == ["invisible"]
    for kept in ("NoNewPrivileges", "ProtectSystem", "PrivateDevices", "CapabilityBoundingSet"):
        assert kept in settings, kept
    root = EXAMPLE.parent
    build = (root / "scripts" / "build-deb.sh").read_text()
    documentation = " ".join(settings["Documentation"]).split()
    assert documentation
    for target in documentation:
        if target.startswith("man:"):
            # replytrack(8) -> replytrack.8, as the package build names the page.
            page = target[4:].replace("(", ".").rstrip(")")
            assert f"man/{page}" in build, target
        else:
            assert (root / SHIPPED_DOCS[target]).is_file(), target


# --- Postfix with the example files ----------------------------------------------------------


@pytest.mark.postfix
@pytest.mark.timeout(120)
@pytest.mark.parametrize("master", ["master.cf.reinject", "master.cf.content-filter"])
def test_example_config_passes_postfix_check(
    postfix_lab: Callable[..., PostfixLab], ports: dict[str, int], master: str
) -> None:
    lab = start_lab(postfix_lab, ports, master)
    milters = lab.postconf("-h", "smtpd_milters").strip()
    assert milters.startswith("{ inet:127.0.0.1:")
    assert "default_action=accept" in milters
    assert lab.postconf("-h", "milter_default_action").strip() == "accept"
    # The reinjection listener runs without any milter and without a content filter.
    reinject = lab.postconf("-P", f"127.0.0.1:{ports['reinject']}/inet/smtpd_milters")
    assert reinject.strip().endswith("smtpd_milters =")
    overrides = lab.postconf("-P", f"127.0.0.1:{ports['reinject']}/inet/content_filter")
    assert overrides.strip().endswith("content_filter =")
    # Everything listens on loopback only.
    for role in ("reinject",) + (("submit",) if master.endswith("content-filter") else ()):
        assert port_open(ports[role]), f"{role} listener not up\n{lab.log_tail()}"


@pytest.mark.postfix
@pytest.mark.timeout(120)
def test_milter_down_mail_delivered_even_with_global_tempfail(
    postfix_lab: Callable[..., PostfixLab], ports: dict[str, int]
) -> None:
    # The per-milter default_action=accept of main.cf.inbound must win over a global
    # tempfail (Postfix's default up to 3.10) or shutdown (3.11+): nothing listens on the
    # milter port, the mail is still delivered.
    main = render("main.cf.inbound", ports) + "\nmilter_default_action = tempfail\n"
    lab = postfix_lab(main_cf=main, master_cf=render("master.cf.reinject", ports))
    msg = EmailMessage()
    msg["From"] = f"someone@{DOMAIN}"
    msg["To"] = f"sales@{DOMAIN}"
    msg["Subject"] = "milter down"
    msg.set_content("hello\n")
    send(lab.smtp_port, msg)
    got = wait_delivered(lab, "milter down")
    assert got["X-ReplyTrack"] is None
    assert "milter service" in lab.log().lower()


# --- the complete scenario, both modes -------------------------------------------------------


def _stamped_id(message: email.message.Message) -> str:
    ids = message.get_all("Message-ID") or []
    assert len(ids) == 1, f"expected exactly one Message-ID, got {ids}"
    assert re.fullmatch(rf"<[^@<>\s]+@{re.escape(ID_DOMAIN)}>", ids[0].strip()), ids[0]
    return ids[0].strip()


def _check_stamped_delivery(message: email.message.Message) -> str:
    stamped = _stamped_id(message)
    assert message["X-Original-Message-ID"].strip() == f"<engine-step1@crm.{DOMAIN}>"
    assert message["X-ReplyTrack-Campaign"] is None
    assert message["X-ReplyTrack-Step"] is None
    assert message["Delivered-To"] == f"prospect@{DOMAIN}"
    return stamped


def _reply_and_check_stop(lab: PostfixLab, rt: Replytrack, step1: email.message.Message) -> None:
    send(lab.smtp_port, reply_to(step1))
    reply = wait_delivered(lab, "Re: Offer, step 1")
    flag = reply["X-ReplyTrack"]
    assert flag is not None and flag.startswith("reply"), f"X-ReplyTrack: {flag}"
    assert "campaign=spring" in flag

    events = [e for e in rt.json("events") if e.get("kind") == "reply"]
    assert len(events) == 1, events
    assert events[0]["campaign"] == "spring"
    assert f"prospect@{DOMAIN}" in str(events[0]["sender"])
    assert events[0]["evidence"], events

    enrollments = rt.json("enrollments")
    prospect = [e for e in enrollments if e.get("recipient") == f"prospect@{DOMAIN}"]
    assert prospect and prospect[0]["campaign"] == "spring", enrollments
    assert prospect[0]["status"] == "stopped", enrollments


@pytest.mark.postfix
@pytest.mark.timeout(180)
def test_mode_a_proxy_then_reinjection(
    postfix_lab: Callable[..., PostfixLab], ports: dict[str, int], replytrack: Replytrack
) -> None:
    lab = start_lab(postfix_lab, ports, "master.cf.reinject")
    replytrack.proxy(ports["proxy"], ports["reinject"])
    replytrack.milter(ports["milter"])

    # 1. The campaign engine sends step 1 through the proxy; Postfix delivers it.
    send(ports["proxy"], campaign_mail(1))
    step1 = wait_delivered(lab, "Offer, step 1")
    stamped = _check_stamped_delivery(step1)
    assert "postfix/replytrack-reinject" in lab.log()
    messages = replytrack.json("messages")
    assert any(m["message_id"] in (stamped, stamped.strip("<>")) for m in messages), messages

    # 2. The prospect replies; the milter flags it and stops the campaign.
    _reply_and_check_stop(lab, replytrack, step1)

    # 3. The next step is refused to the client: 550 5.7.1, nothing reaches Postfix.
    with pytest.raises(smtplib.SMTPResponseException) as refused:
        send(ports["proxy"], campaign_mail(2))
    assert refused.value.smtp_code == 550
    assert b"5.7.1" in refused.value.smtp_error
    lab.wait_queue_empty()
    assert delivered(lab, "Offer, step 2") == []


@pytest.mark.postfix
@pytest.mark.timeout(180)
def test_mode_b_content_filter(
    postfix_lab: Callable[..., PostfixLab], ports: dict[str, int], replytrack: Replytrack
) -> None:
    lab = start_lab(postfix_lab, ports, "master.cf.content-filter")
    replytrack.milter(ports["milter"])

    # 0. Proxy down: Postfix keeps the mail queued (deferred), nothing is lost.
    send(ports["submit"], campaign_mail(1))
    lab.wait_for_log("status=deferred")
    assert delivered(lab, "Offer, step 1") == []
    assert lab.queue_size() == 1

    # 1. The proxy comes up; Postfix retries, the proxy stamps and reinjects, it is delivered.
    replytrack.proxy(ports["proxy"], ports["reinject"])
    step1 = wait_delivered(lab, "Offer, step 1", timeout=60)
    stamped = _check_stamped_delivery(step1)
    messages = replytrack.json("messages")
    assert any(m["message_id"] in (stamped, stamped.strip("<>")) for m in messages), messages
    log = lab.log()
    assert "postfix/replytrack/smtp" in log and "postfix/replytrack-reinject" in log

    # 2. The prospect replies; the milter flags it and stops the campaign.
    _reply_and_check_stop(lab, replytrack, step1)

    # 3. The next step: Postfix accepted it from the application, the proxy refuses it with
    # 550 5.7.1, Postfix bounces it to the sender; the prospect never gets it.
    send(ports["submit"], campaign_mail(2))
    lab.wait_for_log("status=bounced")
    bounced = [line for line in lab.log().splitlines() if "status=bounced" in line]
    assert any("5.7.1" in line and f"prospect@{DOMAIN}" in line for line in bounced), bounced
    lab.wait_queue_empty(timeout=30)
    assert delivered(lab, "Offer, step 2") == []
    notices = [m for m in lab.maildir() if b"Delivered-To: sales@" in m and b"5.7.1" in m]
    assert notices, "no bounce notice delivered to the sender"
