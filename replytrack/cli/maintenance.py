"""``replytrack prune`` and ``export``: keep the store small, take data out of it."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

import click

from replytrack.cli.common import State, cli, iso, parse_since, pass_state
from replytrack.cli.control import campaign_option
from replytrack.cli.listing import enrollment_row, event_row
from replytrack.cli.messages import message_row


@cli.command("prune")
@click.option(
    "--older-than",
    metavar="AGE",
    help="Drop records older than this (365d, 12w, or an ISO date) [default: retention_days].",
)
@click.option("--dry-run", is_flag=True, help="Print what would be dropped; change nothing.")
@pass_state
def prune_command(state: State, older_than: str | None, dry_run: bool) -> None:
    """Drop recorded mails, events and delivered notifications older than the retention
    period. Enrollments (who is stopped) are kept; events still waiting to be notified too.

    \b
    Example:
      replytrack prune --older-than 180d --dry-run
      replytrack prune
    """
    config = state.config()
    before = parse_since(older_than)
    if before is None:
        before = time.time() - config.retention_days * 86400
    counts = state.store().prune(before, dry_run=dry_run)
    verb = "would drop" if dry_run else "dropped"
    click.echo(
        f"{verb} {counts['messages']} message(s), {counts['events']} event(s),"
        f" {counts['outbox']} outbox row(s) older than {iso(before)}"
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _write(rows: Iterable[dict[str, Any]], fmt: str, out: TextIO) -> int:
    count = 0
    writer = None
    for row in rows:
        if fmt == "jsonl":
            out.write(json.dumps(row, sort_keys=True, default=str) + "\n")
        else:
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(row), lineterminator="\n")
                writer.writeheader()
            writer.writerow({k: _cell(v) for k, v in row.items()})
        count += 1
    return count


@cli.command("export")
@click.argument("what", type=click.Choice(["messages", "events", "enrollments"]))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="JSON lines (one object per line) or CSV with a header row.",
)
@click.option("-o", "--output", metavar="FILE", help="Write here instead of standard output.")
@click.option("--campaign", metavar="ID", help="Only this campaign.")
@click.option("--since", metavar="WHEN", help="Only newer than this (messages, events).")
@pass_state
def export_command(
    state: State,
    what: str,
    fmt: str,
    output: str | None,
    campaign: str | None,
    since: str | None,
) -> None:
    """Export every recorded message, event or enrollment (no row limit), e.g. for a CRM
    or a data warehouse.

    \b
    Example:
      replytrack export events --since 30d > events.jsonl
      replytrack export enrollments --format csv -o enrollments.csv
    """
    campaign = campaign_option(state, campaign)
    store = state.store()
    start = parse_since(since)
    rows: Iterable[dict[str, Any]]
    # Streamed: a SQLite store is read a page at a time (through sqlite-utils), so an export
    # of millions of rows needs no memory for them and holds no long read snapshot.
    if what == "messages":
        rows = (message_row(m) for m in store.export_messages(campaign=campaign, since=start))
    elif what == "events":
        rows = (event_row(e) for e in store.export_events(campaign=campaign, since=start))
    else:
        rows = (
            enrollment_row(e) for e in store.export_enrollments(campaign=campaign, since=start)
        )
    if output is None:
        _write(rows, fmt, sys.stdout)
        return
    with open(output, "w", encoding="utf-8", newline="") as out:
        count = _write(rows, fmt, out)
    click.echo(f"wrote {count} {what} to {output}", err=True)
