# ruff: noqa: F811  (pytest fixtures imported from tests.test_cli are parameters)
"""Campaign ids on the command line (issue 13 item 7): one rule, ``check_campaign_id``, for
every command taking ``--campaign``; an empty or invalid id is a usage error (exit 2) with
the rule in the message, never a silent success or a filter that matches everything. An id
recorded before the rule existed stays reachable."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest

from replytrack.headers import CAMPAIGN_ID_RULE
from replytrack.store.sqlite import SQLiteStore
from tests.support.milter_records import record_mail
from tests.test_cli import Invoke, _mail, db, run, store  # noqa: F401  (fixtures)

BAD_IDS = ["", "   ", "\t", "a;b", "a b", 'a"b', "früh", "x" * 201]


@pytest.mark.parametrize("campaign", BAD_IDS)
@pytest.mark.parametrize("command", ["stop", "resume"])
def test_stop_and_resume_refuse_an_empty_or_invalid_campaign(
    run: Invoke, store: SQLiteStore, command: str, campaign: str
) -> None:
    record_mail(store, "a1@mail.example.com", "spring", "ann@x.org")
    result = run(command, "--campaign", campaign, code=2)
    assert "--campaign" in result.output
    assert "empty" in result.output or "200" in result.output
    # Nothing was stopped, resumed or recorded.
    assert [e.status for e in store.enrollments()] == ["active"]
    assert store.events() == []
    assert store.campaign_stats(campaign) == []


def test_stop_with_recipient_and_invalid_campaign_enrolls_nothing(
    run: Invoke, store: SQLiteStore
) -> None:
    # A stop in advance would otherwise create an enrollment under an id no mail can carry.
    result = run("stop", "--campaign", "a;b", "--recipient", "dan@z.org", code=2)
    assert CAMPAIGN_ID_RULE in result.output
    assert store.enrollments() == []


def test_a_campaign_recorded_before_the_rule_can_still_be_stopped(
    run: Invoke, store: SQLiteStore
) -> None:
    legacy = "spring; match=in-reply-to"
    record_mail(store, "a1@mail.example.com", legacy, "ann@x.org")
    run("stop", "--campaign", legacy)
    assert [e.status for e in store.enrollments(campaign=legacy)] == ["stopped"]
    run("resume", "--campaign", legacy)
    assert [e.status for e in store.enrollments(campaign=legacy)] == ["active"]
    assert "ann@x.org" in run("enrollments", "--campaign", legacy).output


@pytest.mark.parametrize(
    "args",
    [
        ("events", "--campaign", ""),
        ("campaigns", "--campaign", " "),
        ("enrollments", "--campaign", ""),
        ("messages", "--campaign", ""),
        ("export", "events", "--campaign", ""),
        ("events", "--campaign", "no;such"),
    ],
)
def test_listing_filters_refuse_an_empty_or_invalid_campaign(
    run: Invoke, store: SQLiteStore, args: tuple[str, ...]
) -> None:
    record_mail(store, "a1@mail.example.com", "spring", "ann@x.org")
    result = run(*args, code=2)
    assert "--campaign" in result.output and "Traceback" not in result.output


def test_import_checks_the_campaign_option_and_headers(
    run: Invoke, store: SQLiteStore, tmp_path: Path
) -> None:
    path = tmp_path / "sent.mbox"
    box = mailbox.mbox(path)
    box.add(_mail("<ok@client.example.com>", "ann@x.org", campaign="fall"))
    box.add(_mail("<bad@client.example.com>", "bob@x.org", campaign="fall; match=x"))
    box.add(_mail("<plain@client.example.com>", "cy@x.org"))
    box.close()
    run("init")
    result = run("import", str(path), "--campaign", "spring 2026", code=2)
    assert CAMPAIGN_ID_RULE in result.output
    assert store.messages() == []

    result = run("import", str(path), "--campaign", "spring")
    assert "imported 2 message(s)" in result.output
    assert "1 skipped (bad X-ReplyTrack metadata)" in result.output
    assert "skipped <bad@client.example.com>" in result.output
    assert sorted(m.campaign or "" for m in store.messages()) == ["fall", "spring"]
