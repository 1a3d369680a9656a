"""The CLI's shared pieces: --since parsing and table / JSON / CSV output."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time

import click
import pytest

from replytrack.cli.common import emit, iso, parse_since

ROWS = [
    {"campaign": "spring", "sent": 3, "recipients": ["a@x", "b@y"], "detail": {"k": 1}},
    {"campaign": "autumn", "sent": 10, "recipients": [], "detail": None},
]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), (" 5 s ", 5), ("0d", 0)],
)
def test_parse_since_durations(text: str, seconds: int) -> None:
    before = time.time()
    value = parse_since(text)
    after = time.time()
    assert value is not None
    assert before - seconds <= value <= after - seconds


def test_parse_since_dates() -> None:
    assert parse_since(None) is None
    assert parse_since("2026-11-01") == dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
    assert (
        parse_since("2026-11-01T12:00:00+02:00")
        == dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC).timestamp()
    )
    assert (
        parse_since("2026-11-01T10:00:00Z")
        == dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC).timestamp()
    )


def test_parse_since_huge_duration_means_everything() -> None:
    assert parse_since("9" * 400 + "d") == 0.0


@pytest.mark.parametrize(
    "text", ["", "sometime soon", "7", "7y", "-3d", "2026-13-01", "d7", "tomorrow"]
)
def test_parse_since_rejects_with_a_clear_message(text: str) -> None:
    with pytest.raises(click.BadParameter, match=r"duration like 7d|in the future"):
        parse_since(text)


def test_parse_since_words() -> None:
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert parse_since("yesterday") == (today - dt.timedelta(days=1)).timestamp()
    assert parse_since("today") == today.timestamp()
    assert abs(parse_since("3 days ago") - (time.time() - 3 * 86400)) < 60  # type: ignore[operator]
    november = dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC)
    assert parse_since("1 Nov 2026 10:00") == november.timestamp()


def test_iso() -> None:
    assert iso(None) is None
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(1_760_000_000.7) == "2025-10-09T08:53:20Z"


def test_emit_json_keeps_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    emit(ROWS, "json", columns=["campaign"])
    assert json.loads(capsys.readouterr().out) == ROWS
    emit([], "json")
    assert json.loads(capsys.readouterr().out) == []


def test_emit_csv(capsys: pytest.CaptureFixture[str]) -> None:
    emit(ROWS, "csv", columns=["campaign", "sent", "recipients", "missing"])
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [
        ["campaign", "sent", "recipients", "missing"],
        ["spring", "3", "a@x, b@y", ""],
        ["autumn", "10", "", ""],
    ]
    emit([{"subject": 'a "quoted",\nmulti-line'}], "csv")
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["subject"], ['a "quoted",\nmulti-line']]


def test_emit_table(capsys: pytest.CaptureFixture[str]) -> None:
    emit(ROWS, "table", columns=["campaign", "sent", "recipients", "detail"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["campaign", "sent", "recipients", "detail"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split(None, 2)[:2] == ["spring", "3"]
    assert "a@x, b@y" in lines[2] and '{"k": 1}' in lines[2]
    assert lines[3].split() == ["autumn", "10"]
    # Columns line up: every row starts its second column at the same offset.
    offset = lines[0].index("sent")
    assert lines[2][offset:].startswith("3") and lines[3][offset:].startswith("10")
    emit([], "table")
    assert capsys.readouterr().out == "(none)\n"


def test_emit_table_cuts_wide_cells(capsys: pytest.CaptureFixture[str]) -> None:
    emit([{"subject": "x" * 200}], "table")
    line = capsys.readouterr().out.splitlines()[2]
    assert line == "x" * 57 + "..."


def test_emit_table_escapes_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    # Text from inbound mail must not break the table or drive the operator's terminal.
    emit([{"subject": "Hi\nthere\x1b[31mred\r", "sender": "a\udcffb@x"}], "table")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 3
    assert "\x1b" not in out and "\r" not in out
    assert "Hi\\nthere\\x1b[31mred\\r" in lines[2]
    assert "a\\udcffb@x" in lines[2]
