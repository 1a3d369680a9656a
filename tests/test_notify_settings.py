"""Webhook settings are checked where webhooks are sent: without ``notify.secret`` (unless
``notify.allow_unsigned``), or with a URL that could never be posted to, the milter, the
proxy and ``replytrack notify`` refuse to start with one line; ``doctor`` reports the same.
Neither ever shows the secret or credentials written in a URL."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from replytrack.cli import cli
from replytrack.config import Config, ConfigError, redact_url, webhook_url_problem
from replytrack.notify import Sender, start_sender_thread, verify_signature
from replytrack.store import Event
from replytrack.store.sqlite import SQLiteStore
from tests.support.env import clean_environ
from tests.support.net import free_port
from tests.test_notify import Receiver
from tests.test_notify import receiver as receiver  # the fixture, for this module

REPLYTRACK = Path(sys.executable).with_name("replytrack")
# Distinctive, so that finding them in any output is a leak and not a coincidence.
SECRET = "sEcReT-webhook-key-7f3a"
URL_PASSWORD = "pAsS-in-url-91c2"


def _env() -> dict[str, str]:
    return clean_environ()


def _site(tmp_path: Path, notify: str) -> Path:
    """A config file with a ``[notify]`` table and a store and key made by ``replytrack init``."""
    config = tmp_path / "replytrack.toml"
    config.write_text(
        f'db = "{tmp_path / "rt.db"}"\ndomain = "track.example.com"\n'
        f'secret_file = "{tmp_path / "rt.secret"}"\n\n[notify]\n{notify}\n'
    )
    subprocess.run(
        [str(REPLYTRACK), "--config", str(config), "init"],
        check=True, capture_output=True, env=_env(), cwd=tmp_path, timeout=60,
    )  # fmt: skip
    return config


def _run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPLYTRACK), "--config", str(config), *args],
        capture_output=True, text=True, env=_env(), cwd=config.parent, timeout=60,
    )  # fmt: skip


def _daemon_args(command: str) -> list[str]:
    if command == "milter":
        return ["milter", "--socket", f"inet:{free_port()}@127.0.0.1"]
    if command == "proxy":
        return ["proxy", "--listen", f"127.0.0.1:{free_port()}", "--upstream",
                f"127.0.0.1:{free_port()}"]  # fmt: skip
    return ["notify"]


def _record_reply(db: Path) -> None:
    store = SQLiteStore(db)
    store.record_event(Event(kind="reply", created_at=time.time(), campaign="spring"))
    store.close_all()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["milter", "proxy", "notify"])
def test_webhooks_without_a_secret_stop_every_sender_at_start(tmp_path: Path, command: str) -> None:
    config = _site(tmp_path, 'webhooks = ["https://crm.example.com/hooks/replytrack"]')
    done = _run(config, *_daemon_args(command))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("Error: ") and "notify.secret is not set" in line
    assert "notify.allow_unsigned = true" in line


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["milter", "proxy"])
def test_a_bad_url_stops_a_daemon_at_start_without_showing_secrets(
    tmp_path: Path, command: str
) -> None:
    url = f"ftp://hook:{URL_PASSWORD}@crm.example.com/in?token=t0k3n"
    config = _site(tmp_path, f'webhooks = ["{url}"]\nsecret = "{SECRET}"')
    done = _run(config, *_daemon_args(command))
    assert done.returncode != 0
    (line,) = done.stderr.splitlines()
    assert line.startswith("Error: ") and "notify.webhooks" in line
    assert "'ftp://***@crm.example.com/in?***' is not an http:// or https:// URL" in line
    for secret in (SECRET, URL_PASSWORD, "t0k3n"):
        assert secret not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("crm.example.com/hook", "is not an http:// or https:// URL"),
        ("http:///hook", "names no host"),
        ("http://crm.example.com:99999/hook", "has an invalid port"),
        ("http://crm.example.com:0/hook", "has an invalid port"),
        ("http://crm.example.com:https/hook", "has an invalid port"),
        ("http://[::1/hook", "cannot be read as a URL"),
        ("http://crm..example.com/hook", "has an invalid host"),
        ("http://crm.example.com/my hook", "has spaces, control or non-ASCII characters"),
    ],
)
def test_notify_command_names_the_bad_url(tmp_path: Path, url: str, why: str) -> None:
    env = {
        "REPLYTRACK_DB": str(tmp_path / "none.db"),
        "REPLYTRACK_NOTIFY_WEBHOOKS": url,
        "REPLYTRACK_NOTIFY_SECRET": SECRET,
    }
    done = CliRunner().invoke(cli, ["notify", "--once"], env=env)
    assert done.exit_code == 1
    (line,) = done.output.splitlines()
    assert line.startswith(f"Error: configuration: notify.webhooks: {url!r} {why}")
    # Refused before the store is opened: the store named does not even exist.
    assert not (tmp_path / "none.db").exists()


@pytest.mark.timeout(120)
def test_allow_unsigned_milter_starts_warns_and_posts_unsigned(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = _site(tmp_path, f'webhooks = ["{receiver.url}"]\nallow_unsigned = true')
    _record_reply(tmp_path / "rt.db")
    log = tmp_path / "milter.log"
    with log.open("w") as err:
        milter = subprocess.Popen(
            [str(REPLYTRACK), "--config", str(config), *_daemon_args("milter")],
            stderr=err, env=_env(), cwd=tmp_path,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not receiver.requests:
            assert milter.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        milter.send_signal(signal.SIGTERM)
        try:
            milter.wait(30)
        except subprocess.TimeoutExpired:
            milter.kill()
            milter.wait(10)
    (got,) = receiver.requests
    assert got.signature == "" and json.loads(got.body)["kind"] == "reply"
    warnings = [line for line in log.read_text().splitlines() if " WARNING " in line]
    assert any("UNSIGNED" in line and "127.0.0.1" in line for line in warnings), warnings


@pytest.mark.timeout(120)
def test_signed_delivery_with_url_credentials_logs_no_secret(
    tmp_path: Path, receiver: Receiver
) -> None:
    url = receiver.url.replace("http://", f"http://hook%40crm:{URL_PASSWORD}@")
    config = _site(tmp_path, f'webhooks = ["{url}"]\nsecret = "{SECRET}"')
    _record_reply(tmp_path / "rt.db")
    done = _run(config, "--log-level", "debug", "notify", "--once")
    assert done.returncode == 0, done.stderr
    assert "tried 1; pending 0, dead 0" in done.stdout
    (got,) = receiver.requests
    assert verify_signature(SECRET, got.timestamp, got.body, got.signature)
    # The credentials of the URL went as HTTP Basic, decoded, and nowhere else.
    assert got.authorization == "Basic " + base64.b64encode(
        f"hook@crm:{URL_PASSWORD}".encode()
    ).decode("ascii")
    assert "url_host=127.0.0.1" in done.stderr
    for secret in (SECRET, URL_PASSWORD):
        assert secret not in done.stderr + done.stdout


def _outbox_findings(config: Path) -> tuple[int, list[dict[str, str]], str]:
    args = ["--config", str(config), "doctor", "--json"]
    for check in ("proxy", "milter", "postfix"):
        args += ["--skip", check]
    done = CliRunner().invoke(cli, args, env={k: None for k in os.environ if "REPLYTRACK" in k})
    findings = [f for f in json.loads(done.output) if f["check"] == "outbox"]
    return done.exit_code, findings, done.output


def test_doctor_reports_webhook_problems_without_secrets(tmp_path: Path) -> None:
    bad = f"http://hook:{URL_PASSWORD}@crm.example.com:99999/in"
    config = _site(tmp_path, f'webhooks = ["{bad}", "gopher://crm.example.com/"]')
    code, findings, output = _outbox_findings(config)
    assert code == 1
    fails = [f["message"] for f in findings if f["status"] == "FAIL"]
    assert fails == [
        "notify.webhooks: 'http://***@crm.example.com:99999/in' has an invalid port (1 to 65535)",
        "notify.webhooks: 'gopher://crm.example.com/' is not an http:// or https:// URL",
        "notify.secret is not set, so webhooks would go out unsigned: set notify.secret (or"
        " REPLYTRACK_NOTIFY_SECRET), or notify.allow_unsigned = true to send them unsigned anyway",
    ]
    assert URL_PASSWORD not in output

    good = 'webhooks = ["https://crm.example.com/in"]\n'
    text = config.read_text()
    config.write_text(text[: text.index("webhooks")] + good + "allow_unsigned = true\n")
    code, findings, _ = _outbox_findings(config)
    assert [f["status"] for f in findings if "unsigned" in f["message"]] == ["WARN"]
    assert not [f for f in findings if f["status"] == "FAIL"]

    config.write_text(config.read_text() + f'secret = "{SECRET}"\n')
    code, findings, output = _outbox_findings(config)
    assert findings[0] == {
        "status": "OK",
        "check": "outbox",
        "message": "1 webhook URL(s), signed with notify.secret",
        "fix": "",
    }
    assert SECRET not in output


def test_sender_refuses_unusable_settings(tmp_path: Path, store: SQLiteStore) -> None:
    base = {"db": str(tmp_path / "replytrack.db"), "notify_webhooks": ["https://crm.example.com/"]}
    with pytest.raises(ConfigError, match=r"notify\.secret is not set"):
        Sender(Config(**base), store)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"notify\.secret is not set"):
        start_sender_thread(Config(**base), store)  # type: ignore[arg-type]
    unsigned = Sender(Config(**base, notify_allow_unsigned=True), store)  # type: ignore[arg-type]
    assert unsigned.signed is False
    # The secret is never part of how a configuration prints (log lines, tracebacks).
    assert SECRET not in repr(Config(**base, notify_secret=SECRET))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "https://crm.example.com/hooks/replytrack",
        "http://127.0.0.1:8080/hook",
        "http://[::1]:8080/hook",
        "https://user:pw@crm.example.com/x?token=1",
        "http://hooks.internal_zone.example/x",
        "HTTPS://CRM.example.com./x",
    ],
)
def test_good_urls_pass(url: str) -> None:
    assert webhook_url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@h.example/x?token=1#frag", "https://***@h.example/x?***"),
        ("http://u:p@[::1/x", "http://***@[::1/x"),
        ("u:p@h.example/x", "***@h.example/x"),
        ("https://h.example:8443/x", "https://h.example:8443/x"),
    ],
)
def test_redact_url_hides_credentials_and_query(url: str, shown: str) -> None:
    assert redact_url(url) == shown
