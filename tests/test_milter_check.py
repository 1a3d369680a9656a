"""``replytrack check FILE.eml``: the milter's verdict, no side effects."""

from __future__ import annotations

import json
import time

from click.testing import CliRunner

from replytrack.cli import cli
from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring, write_keyring
from tests.support.milter_records import DOMAIN, record_sent


def test_check_json_reports_reply_without_side_effects(tmp_path):
    db = tmp_path / "rt.db"
    secret = tmp_path / "rt.secret"
    keyring = Keyring.generate()
    write_keyring(secret, keyring)
    store = SQLiteStore(db)
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    reply = tmp_path / "reply.eml"
    reply.write_bytes(
        (
            "Return-Path: <ann@acme.example>\nFrom: Ann <ann@acme.example>\n"
            f"Subject: Re: Hello\nMessage-ID: <r@acme.example>\nIn-Reply-To: <{mid}>\n\nYes!\n"
        ).encode()
    )
    back = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 10 * 86400))
    ooo = tmp_path / "ooo.eml"
    ooo.write_bytes(
        (
            "Return-Path: <ann@acme.example>\nFrom: ann@acme.example\n"
            "Auto-Submitted: auto-replied\n"
            f"Subject: Out of office\nIn-Reply-To: <{mid}>\n\n"
            f"I am out of the office until {back}.\n"
        ).encode()
    )
    env = {"REPLYTRACK_SECRET_FILE": str(secret)}
    result = CliRunner().invoke(
        cli, ["--db", str(db), "--domain", DOMAIN, "check", "--json", str(reply), str(ooo)], env=env
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["kind"] == "reply"
    assert rows[0]["matched"] == [mid]
    assert rows[0]["match"] == "in-reply-to"
    assert rows[0]["evidence"]
    assert rows[1]["kind"] == "auto_reply"
    assert rows[1]["return_date"] == back
    # Nothing recorded, nothing stopped.
    assert store.events() == []
    assert store.enrollments(recipient="ann@acme.example")[0].status == "active"


def test_check_missing_file_is_a_clear_error(tmp_path):
    secret = tmp_path / "rt.secret"
    write_keyring(secret, Keyring.generate())
    SQLiteStore(tmp_path / "rt.db").close_all()
    result = CliRunner().invoke(
        cli,
        ["--db", str(tmp_path / "rt.db"), "check", str(tmp_path / "nope.eml")],
        env={"REPLYTRACK_SECRET_FILE": str(secret)},
    )
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "nope.eml" in result.output
