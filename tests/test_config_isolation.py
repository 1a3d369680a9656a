"""``--config none`` / ``REPLYTRACK_CONFIG=none``: runs that must never read an installed
``/etc/replytrack/replytrack.toml`` (the demo, the tests, the benchmarks, ad-hoc runs).

The installed file is simulated by pointing ``DEFAULT_CONFIG_PATHS`` at a hostile file in the
test's directory; the real /etc is never written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from replytrack import config as config_module
from replytrack.cli import cli
from replytrack.config import Config, load_config
from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import load_keyring
from tests.support.env import clean_environ
from tests.support.milter_records import DOMAIN, record_sent

PROSPECT = "ann@acme.example"


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An "installed" config that would break a demo: another key file, the prospect's
    domain internal, another Message-ID domain, a metrics port of its own."""
    etc = tmp_path / "etc"
    etc.mkdir()
    path = etc / "replytrack.toml"
    path.write_text(
        f'domain = "installed.example"\nsecret_file = "{etc / "installed.secret"}"\n'
        f'[milter]\ninternal_domains = ["acme.example"]\nmetrics_listen = "127.0.0.1:9"\n',
        encoding="utf-8",
    )
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATHS", (Path("replytrack.toml"), path))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return path


def test_none_reads_no_file(hostile: Path) -> None:
    # Without "none" the hostile file is found: what the isolation guards against.
    assert load_config(env={}).source == str(hostile)
    assert load_config(env={}).milter_internal_domains == ["acme.example"]
    for cfg in (
        load_config(env={"REPLYTRACK_CONFIG": "none"}),
        load_config("none", env={}),
        load_config("NONE", env={"REPLYTRACK_CONFIG": str(hostile)}),
    ):
        assert cfg == Config()
        assert cfg.source == ""
    # Environment and flags still apply on top of no file.
    cfg = load_config("none", env={"REPLYTRACK_DOMAIN": "env.example"}, overrides={"db": "x.db"})
    assert (cfg.domain, cfg.db) == ("env.example", "x.db")


def test_the_suite_and_its_processes_read_no_config_file() -> None:
    # Set by tests/conftest.py at import; every launcher that drops the developer's
    # REPLYTRACK_* settings keeps it.
    assert os.environ["REPLYTRACK_CONFIG"] == "none"
    assert clean_environ(REPLYTRACK_DB="x")["REPLYTRACK_CONFIG"] == "none"


def _demo_like_run(tmp_path: Path) -> str:
    """What scripts/demo.sh does, in-process: init a store with --db/--domain, a campaign
    mail recorded, then the prospect's reply checked. Returns the verdict's kind."""
    db = tmp_path / "demo" / "replytrack.db"
    db.parent.mkdir()
    base = ["--db", str(db), "--domain", DOMAIN]
    runner = CliRunner()
    done = runner.invoke(cli, [*base, "init"])
    assert done.exit_code == 0, done.output
    store = SQLiteStore(db)
    try:
        secret = db.parent / "replytrack.secret"
        keyring = load_keyring(secret if secret.exists() else tmp_path / "etc/installed.secret")
        mid = record_sent(store, keyring, to=[PROSPECT])
    finally:
        store.close_all()
    reply = tmp_path / "reply.eml"
    reply.write_bytes(
        f"From: Ann <{PROSPECT}>\nSubject: Re: Hello\nMessage-ID: <r1@acme.example>\n"
        f"In-Reply-To: <{mid}>\n\nYes, let's talk.\n".encode()
    )
    checked = runner.invoke(cli, [*base, "check", "--json", str(reply)])
    assert checked.exit_code == 0, checked.output
    return str(json.loads(checked.output)[0]["kind"])


def test_a_hostile_installed_config_has_no_effect_on_a_demo_like_run(
    hostile: Path, tmp_path: Path
) -> None:
    kind = _demo_like_run(tmp_path)
    assert kind == "reply"
    # The key was made beside the demo's store, not where the installed file says.
    assert (tmp_path / "demo" / "replytrack.secret").exists()
    assert not (tmp_path / "etc" / "installed.secret").exists()


def test_without_isolation_the_hostile_config_breaks_the_demo_like_run(
    hostile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control: the same run reading the "installed" file signs with its key and takes
    # the prospect for an internal sender, so the previous test guards something real.
    monkeypatch.delenv("REPLYTRACK_CONFIG")
    kind = _demo_like_run(tmp_path)
    assert kind != "reply"
    assert (tmp_path / "etc" / "installed.secret").exists()
