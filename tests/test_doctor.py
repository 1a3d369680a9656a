"""``replytrack doctor`` against a private Postfix configuration and real sockets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from replytrack.cli import cli, doctor
from replytrack.store import Event
from replytrack.store.sqlite import SQLiteStore
from tests.support.upstream import RecordingUpstream

DOMAIN = "replies.acme-sales.net"

POSTCONF = "/usr/sbin/postconf"

MASTER_CF = """\
smtp      inet  n       -       y       -       -       smtpd
pickup    unix  n       -       y       60      1       pickup
127.0.0.1:{upstream} inet n  -       n       -       -       smtpd
  -o smtpd_milters={reinjection_milters}
  -o non_smtpd_milters=
  -o content_filter=
"""


@dataclass
class Site:
    root: Path
    config: Path
    postfix: Path
    milter_port: int
    proxy_port: int
    upstream_port: int
    upstream: RecordingUpstream

    def set_upstream(self, address: str) -> None:
        """Point proxy.upstream elsewhere."""
        text = self.config.read_text()
        old = f'upstream = "127.0.0.1:{self.upstream_port}"'
        self.config.write_text(text.replace(old, f'upstream = "{address}"'))

    def main_cf(self, milters: str, extra: str = "") -> None:
        milters = milters.format(ours=f"inet:127.0.0.1:{self.milter_port}")
        (self.postfix / "main.cf").write_text(
            f"compatibility_level = 3.6\nsmtpd_milters = {milters}\n{extra}"
        )

    def master_cf(self, reinjection_milters: str = "") -> None:
        (self.postfix / "master.cf").write_text(
            MASTER_CF.format(upstream=self.upstream_port, reinjection_milters=reinjection_milters)
        )

    def doctor(self, *args: str) -> tuple[Result, list[dict[str, str]]]:
        result = CliRunner().invoke(
            cli,
            [
                "-c",
                str(self.config),
                "doctor",
                "--postfix-config",
                str(self.postfix),
                "--json",
                *args,
            ],
        )
        assert "Traceback" not in result.output
        return result, json.loads(result.output)


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    if not os.access(POSTCONF, os.X_OK):
        pytest.skip("Postfix (postconf) is not installed")
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("REPLYTRACK_"):
            monkeypatch.delenv(name)
    milter, proxy = _listener(), _listener()
    # The proxy's upstream: a real SMTP server on the reinjection listener's port.
    upstream = RecordingUpstream().start()
    milter_port, proxy_port = milter.getsockname()[1], proxy.getsockname()[1]
    upstream_port = upstream.port
    config = tmp_path / "replytrack.toml"
    config.write_text(
        f'db = "{tmp_path / "replytrack.db"}"\ndomain = "{DOMAIN}"\n'
        f'[proxy]\nlisten = "127.0.0.1:{proxy_port}"\nupstream = "127.0.0.1:{upstream_port}"\n'
        f'[milter]\nsocket = "inet:{milter_port}@127.0.0.1"\n'
        f'journal = "{tmp_path / "spool" / "journal"}"\n'
        f'journal_fallback = "{tmp_path / "run" / "journal"}"\n'
    )
    (tmp_path / "spool").mkdir()
    result = CliRunner().invoke(cli, ["-c", str(config), "init"])
    assert result.exit_code == 0, result.output
    postfix = tmp_path / "postfix"
    postfix.mkdir()
    s = Site(tmp_path, config, postfix, milter_port, proxy_port, upstream_port, upstream)
    s.main_cf("inet:127.0.0.1:8891, {{ {ours}, default_action=accept }}")
    s.master_cf()
    yield s
    s.upstream.stop()
    milter.close()
    proxy.close()


def _by_status(findings: list[dict[str, str]], status: str) -> list[dict[str, str]]:
    return [f for f in findings if f["status"] == status]


def _only(findings: list[dict[str, str]], status: str) -> list[dict[str, str]]:
    found = _by_status(findings, status)
    assert len(found) == 1, findings
    return found


def test_healthy_installation_passes(site: Site) -> None:
    result, findings = site.doctor()
    assert result.exit_code == 0, findings
    assert _by_status(findings, "FAIL") == []
    checks = {f["check"] for f in findings}
    assert checks >= {
        "config",
        "secret",
        "store",
        "journal",
        "outbox",
        "proxy",
        "milter",
        "postfix",
    }
    for f in findings:
        assert set(f) == {"status", "check", "message", "fix"}
    postfix = " | ".join(f["message"] for f in findings if f["check"] == "postfix")
    assert "last" in postfix and "default_action=accept" in postfix
    assert "reinjection listener" in postfix


def test_table_output_says_how_to_fix(site: Site) -> None:
    site.main_cf("inet:127.0.0.1:8891")
    result = CliRunner().invoke(
        cli, ["-c", str(site.config), "doctor", "--postfix-config", str(site.postfix)]
    )
    assert result.exit_code == 1
    assert "FAIL  postfix" in result.output
    assert (
        f"fix: postconf -c {site.postfix} -e 'smtpd_milters = inet:127.0.0.1:8891,"
        " { inet:127.0.0.1:" in result.output
    )
    assert "failure(s)" in result.output


def test_milter_missing_not_last_or_not_failing_open(site: Site) -> None:
    site.main_cf("inet:127.0.0.1:8891")
    result, findings = site.doctor()
    assert result.exit_code == 1
    (fail,) = _by_status(findings, "FAIL")
    assert "does not list the replytrack milter" in fail["message"]
    assert "default_action=accept" in fail["fix"]

    # Listed first, and Postfix's own default action (tempfail before 3.11) applies.
    site.main_cf("{ours}, inet:127.0.0.1:8891")
    result, findings = site.doctor()
    assert result.exit_code == 1
    assert any("should be last" in f["message"] for f in _by_status(findings, "WARN"))
    (fail,) = _by_status(findings, "FAIL")
    assert "does not fail open" in fail["message"] and "tempfail" in fail["message"]

    # A global milter_default_action = accept is enough.
    site.main_cf("inet:127.0.0.1:8891, {ours}", extra="milter_default_action = accept\n")
    result, findings = site.doctor()
    assert result.exit_code == 0, findings


def test_reinjection_listener_must_not_run_the_milter(site: Site) -> None:
    # The listener inherits the global smtpd_milters, which holds ours.
    (site.postfix / "master.cf").write_text(
        MASTER_CF.format(upstream=site.upstream_port, reinjection_milters="").replace(
            "  -o smtpd_milters=\n", ""
        )
    )
    result, findings = site.doctor()
    assert result.exit_code == 1
    (fail,) = _by_status(findings, "FAIL")
    assert "runs the replytrack milter" in fail["message"]
    assert f"-P {site.upstream_port}" not in fail["fix"]
    assert f"127.0.0.1:{site.upstream_port}/inet/smtpd_milters=" in fail["fix"]
    # No listener on the upstream port at all: a warning (the upstream may be a smarthost).
    (site.postfix / "master.cf").write_text(MASTER_CF.splitlines()[0] + "\n")
    result, findings = site.doctor()
    assert result.exit_code == 0
    assert any("proxy.upstream" in f["message"] for f in _by_status(findings, "WARN"))


def test_dead_sockets_fail(site: Site, tmp_path: Path) -> None:
    config = site.config.read_text().replace(f"127.0.0.1:{site.proxy_port}", "127.0.0.1:1")
    site.config.write_text(config)
    result, findings = site.doctor("--skip", "postfix")
    assert result.exit_code == 1
    (fail,) = _by_status(findings, "FAIL")
    assert fail["check"] == "proxy" and "replytrack proxy" in fail["fix"]
    result, findings = site.doctor("--skip", "postfix", "--skip", "proxy")
    assert result.exit_code == 0


def test_secret_store_journal_and_outbox(site: Site) -> None:
    secret = site.root / "replytrack.secret"
    secret.chmod(0o644)
    (site.root / "spool" / "journal").write_text('{"a": 1}\n{"a": 2}\n')
    store = SQLiteStore(site.root / "replytrack.db")
    store.record_event(Event(kind="stopped", created_at=time.time() - 3600, campaign="c"))
    store.close_all()
    result, findings = site.doctor()
    assert result.exit_code == 1
    (fail,) = _by_status(findings, "FAIL")
    assert fail["check"] == "secret" and fail["fix"] == f"chmod 600 {secret}"
    warns = {f["check"]: f["message"] for f in _by_status(findings, "WARN")}
    assert "2 inbound verdict(s)" in warns["journal"]
    assert "1 event(s) queued but no webhook" in warns["outbox"]

    secret.chmod(0o600)
    config = site.config.read_text() + (
        '[notify]\nwebhooks = ["http://127.0.0.1:1/x"]\nsecret = "doctor-test-secret"\n'
    )
    site.config.write_text(config)
    result, findings = site.doctor()
    assert result.exit_code == 0
    assert any("overdue" in f["message"] for f in _by_status(findings, "WARN"))

    (site.root / "replytrack.db").unlink()
    result, findings = site.doctor()
    assert result.exit_code == 1
    assert any(f["check"] == "store" and f["fix"] == "replytrack init" for f in findings)


def test_postfix_absent_or_unreadable_is_a_finding(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, findings = site.doctor("--postfix-config", str(site.root / "nowhere"))
    assert result.exit_code == 1
    assert any("holds no main.cf" in f["message"] for f in findings)
    (site.postfix / "main.cf").write_text("smtpd_milters = {\n")
    # Fault injection: a host without Postfix (postconf cannot be uninstalled for a test).
    monkeypatch.setattr(doctor.postconf, "postconf_binary", lambda: None)
    result = CliRunner().invoke(cli, ["-c", str(site.config), "doctor", "--json"])
    findings = json.loads(result.output)
    (postfix,) = [f for f in findings if f["check"] == "postfix"]
    assert postfix["status"] == "WARN" and "not installed" in postfix["message"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", []),
        ("inet:127.0.0.1:8891", [("inet:127.0.0.1:8891", {})]),
        (
            "inet:a:1, { inet:127.0.0.1:8894, default_action = accept, connect_timeout=10s }",
            [
                ("inet:a:1", {}),
                ("inet:127.0.0.1:8894", {"default_action": "accept", "connect_timeout": "10s"}),
            ],
        ),
        ("unix:/run/a.sock unix:/run/b.sock", [("unix:/run/a.sock", {}), ("unix:/run/b.sock", {})]),
    ],
)
def test_parse_milters(value: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert [(m.socket, m.settings) for m in doctor.parse_milters(value)] == expected


def test_socket_specs_in_both_syntaxes() -> None:
    assert doctor.same_socket("inet:8894@127.0.0.1", "inet:127.0.0.1:8894")
    assert doctor.same_socket("inet:8894@localhost", "inet:[::1]:8894")
    assert not doctor.same_socket("inet:8894@127.0.0.1", "inet:127.0.0.1:8895")
    assert not doctor.same_socket("inet:8894@10.0.0.1", "inet:127.0.0.1:8894")
    assert doctor.same_socket("unix:/run/rt/milter.sock", "unix:/run/rt//milter.sock")
    assert not doctor.same_socket("unix:/a", "inet:127.0.0.1:1")


# --- mistakes a mail admin makes (issue 17, item 3) --------------------------------------------


def _apply(fix: str, site: Site) -> None:
    """Paste a fix as printed, less the reload (this Postfix is not running)."""
    commands = [c for c in fix.split(" && ") if not c.startswith("postfix ")]
    for command in commands:
        assert command.startswith(f"postconf -c {site.postfix} "), fix
        done = subprocess.run(
            command.replace("postconf", POSTCONF, 1), shell=True, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("milters", "master", "expected"),
    [
        ("inet:127.0.0.1:8891", None, "does not list the replytrack milter"),
        ("{{ {ours}, default_action=accept }}, inet:127.0.0.1:8891", "-", "should be last"),
        ("inet:127.0.0.1:8891, {ours}", "-", "does not fail open"),
        ("inet:127.0.0.1:8891, {{ {ours}, default_action=accept }}", "", "runs the replytrack"),
        ("inet:127.0.0.1:8891, {{ {ours}, default_action=accept }}", "none", "no master.cf"),
    ],
)
def test_each_fix_runs_against_the_postfix_checked(
    site: Site, milters: str, master: str | None, expected: str
) -> None:
    """Pasted as printed, each fix edits the --postfix-config instance (never the system's
    /etc/postfix) and clears its finding."""
    site.main_cf(milters)
    if master == "":  # the reinjection listener inherits the global smtpd_milters
        (site.postfix / "master.cf").write_text(
            MASTER_CF.format(upstream=site.upstream_port, reinjection_milters="").replace(
                "  -o smtpd_milters=\n", ""
            )
        )
    elif master == "none":
        (site.postfix / "master.cf").write_text(MASTER_CF.splitlines()[0] + "\n")
    system = Path("/etc/postfix/main.cf")
    before = system.read_bytes() if system.exists() else None
    _, findings = site.doctor()
    [finding] = [f for f in findings if expected in f["message"]]
    assert finding["status"] in ("WARN", "FAIL")
    for f in findings:
        if f["status"] != "OK" and ("postconf" in f["fix"] or "postfix " in f["fix"]):
            assert f"-c {site.postfix}" in f["fix"], f
    _apply(finding["fix"].partition(" (or ")[0], site)
    _, findings = site.doctor()
    assert not [f for f in findings if f["status"] != "OK" and f["check"] == "postfix"], findings
    assert (system.read_bytes() if system.exists() else None) == before


def test_a_dead_upstream_fails(site: Site) -> None:
    result, findings = site.doctor()
    assert result.exit_code == 0
    assert any(
        f["check"] == "proxy" and f"upstream 127.0.0.1:{site.upstream_port} answers" in f["message"]
        for f in findings
    )
    assert site.upstream.handler.connections >= 1  # a real SMTP conversation took place
    site.upstream.stop()
    result, findings = site.doctor()
    assert result.exit_code == 1
    [fail] = _by_status(findings, "FAIL")
    assert fail["check"] == "proxy"
    assert "does not answer SMTP" in fail["message"] and "451 4.4.1" in fail["message"]
    site.upstream = RecordingUpstream().start()  # for the fixture's teardown


def test_an_upstream_that_is_the_proxy_is_a_loop(site: Site) -> None:
    # proxy.upstream = proxy.listen.
    site.set_upstream(f"127.0.0.1:{site.proxy_port}")
    result, findings = site.doctor("--skip", "postfix")
    assert result.exit_code == 1
    [fail] = _by_status(findings, "FAIL")
    assert "mail loop" in fail["message"] and "proxy.listen" in fail["message"]


def test_an_upstream_that_is_another_replytrack_proxy_is_a_loop(site: Site) -> None:
    """Told by its greeting: a real replytrack proxy (relaying to the real upstream)."""
    from replytrack.config import Config
    from replytrack.proxy.testing import ThreadedProxy
    from replytrack.tokens import load_keyring

    store = SQLiteStore(site.root / "replytrack.db")
    other = ThreadedProxy(
        Config(
            db=str(site.root / "replytrack.db"),
            domain=DOMAIN,
            proxy_listen="127.0.0.1:0",
            proxy_upstream=site.upstream.address,
        ),
        store=store,
        keyring=load_keyring(site.root / "replytrack.secret"),
    ).start()
    try:
        site.set_upstream(f"127.0.0.1:{other.port}")
        result, findings = site.doctor("--skip", "postfix")
    finally:
        other.stop()
        store.close_all()
    assert result.exit_code == 1
    [fail] = _by_status(findings, "FAIL")
    assert "mail loop" in fail["message"] and "is a replytrack proxy" in fail["message"]


def test_an_upstream_with_a_content_filter_back_to_the_proxy_is_a_loop(site: Site) -> None:
    # The upstream names mode (b)'s submission listener, which hands mail to the proxy.
    (site.postfix / "master.cf").write_text(
        MASTER_CF.format(upstream=site.upstream_port, reinjection_milters="").replace(
            "-o content_filter=", f"-o content_filter=replytrack:[127.0.0.1]:{site.proxy_port}"
        )
    )
    result, findings = site.doctor()
    assert result.exit_code == 1
    [fail] = _by_status(findings, "FAIL")
    assert fail["message"].startswith("mail loop:") and "content_filter" in fail["message"]
    _apply(fail["fix"].partition("or: ")[2], site)
    result, findings = site.doctor()
    assert result.exit_code == 0, findings


def test_a_global_content_filter_to_the_proxy_fails(site: Site) -> None:
    site.main_cf(
        "inet:127.0.0.1:8891, {{ {ours}, default_action=accept }}",
        extra=f"content_filter = replytrack:[127.0.0.1]:{site.proxy_port}\n",
    )
    result, findings = site.doctor()
    assert result.exit_code == 1
    [fail] = _only(findings, "FAIL")
    assert "for every service" in fail["message"] and "inbound mail" in fail["message"]
    _apply(fail["fix"].partition(";")[0], site)
    assert "content_filter" not in (site.postfix / "main.cf").read_text()
    result, findings = site.doctor()
    assert result.exit_code == 0, findings


def test_main_cf_inbound_appended_to_a_main_cf_with_milters(site: Site) -> None:
    """``cat main.cf.inbound >> main.cf`` on a host with OpenDKIM's smtpd_milters: Postfix
    keeps the second line and drops OpenDKIM without a word at run time."""
    inbound = (Path(__file__).parent.parent / "postfix-example" / "main.cf.inbound").read_text()
    inbound = inbound.replace("inet:127.0.0.1:8894", f"inet:127.0.0.1:{site.milter_port}")
    (site.postfix / "main.cf").write_text(
        "compatibility_level = 3.6\nsmtpd_milters = inet:127.0.0.1:8891\n"
        "smtpd_miltres = inet:127.0.0.1:8892\n" + inbound
    )
    result, findings = site.doctor()
    assert result.exit_code == 1
    [fail] = _by_status(findings, "FAIL")
    assert "sets smtpd_milters 2 times" in fail["message"]
    assert "inet:127.0.0.1:8891 silently dropped out" in fail["message"]
    assert "smtpd_milters = inet:127.0.0.1:8891, { inet:127.0.0.1:" in fail["fix"]
    assert f"postfix -c {site.postfix} reload" in fail["fix"]
    # Postfix's own warnings are shown: here the misspelled parameter.
    warned = [f["message"] for f in _by_status(findings, "WARN")]
    assert any(
        m.startswith("Postfix warns:") and "unused parameter: smtpd_miltres" in m for m in warned
    ), warned


def test_the_example_domain_is_a_warning(site: Site) -> None:
    site.config.write_text(site.config.read_text().replace(DOMAIN, "mail.example.com"))
    result, findings = site.doctor()
    assert result.exit_code == 0
    [warn] = [f for f in findings if f["check"] == "config" and f["status"] == "WARN"]
    assert warn["check"] == "config" and "mail.example.com is an example" in warn["message"]
    assert str(site.config) in warn["fix"]
    assert doctor.example_domain("replytrack.invalid") and not doctor.example_domain(DOMAIN)
