"""``replytrack journal replay``: write journaled inbound verdicts to the store by hand.

The milter replays its journal locations by itself once the store is back. By hand is for
the rest: entries the milter could only write to its log (no journal location was
writable), and a journal left behind by a milter that no longer runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import click

from replytrack.cli.common import State, cli, emit, pass_state
from replytrack.milter.engine import Engine, Inbound
from replytrack.milter.journal import JournalChain, entries_from_log
from replytrack.store import StoreError
from replytrack.tokens import load_keyring


@cli.group("journal")
def journal_group() -> None:
    """The milter's journal of inbound verdicts the store could not take.

    \b
    Example:
      replytrack journal replay
      journalctl -u replytrack-milter -o cat > milter.log
      replytrack journal replay --from-log milter.log
    """


def _log_lines(names: tuple[str, ...]) -> Iterator[tuple[str, int, dict[str, Any] | None, str]]:
    """``(file, line number, entry or None, problem)`` for every entry in the named logs."""
    for name in names:
        if name == "-":
            yield from ((name, n, e, p) for n, e, p in entries_from_log(sys.stdin))
            continue
        try:
            with open(name, encoding="utf-8", errors="replace") as handle:
                yield from ((name, n, e, p) for n, e, p in entries_from_log(handle))
        except OSError as exc:
            raise click.ClickException(f"cannot read {name}: {exc.strerror or exc}") from None


def _apply(engine: Engine, msg: Inbound) -> tuple[str, str]:
    """Decide on ``msg`` against the store as it is now and record it: (kind, outcome)."""
    verdict, recorded = engine.run(msg)
    if verdict.event is None:
        return verdict.kind, "nothing to record"
    return verdict.kind, "recorded" if recorded else "already recorded"


@journal_group.command("replay")
@click.option(
    "--from-log",
    "logs",
    multiple=True,
    metavar="FILE",
    help="Replay the entries the milter wrote to its log (repeatable; '-' reads stdin).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of objects).")
@pass_state
def replay_command(state: State, logs: tuple[str, ...], as_json: bool) -> None:
    """Write journaled inbound verdicts to the store now.

    Without --from-log, replays every journal location (milter.journal, then
    milter.journal_fallback) as the running milter would. With --from-log, reads the
    lines that hold `replytrack-journal-entry:` (written when no journal location was
    writable) from FILE: a copy of the milter's log, whatever prefixes its lines carry.
    Each mail is decided against the store as it is now; replaying twice records it once.
    Exits 1 when the store is unavailable or an entry could not be read.

    \b
    Example:
      replytrack journal replay
      journalctl -u replytrack-milter -o cat | replytrack journal replay --from-log -
    """
    config = state.config()
    engine = Engine(config, load_keyring(config.secret_path, create=False), state.store())
    if not logs:
        chain = JournalChain.for_config(config)
        done = chain.replay(engine.process)
        waiting = chain.backlog()
        click.echo(f"replayed {done} journaled mail(s); {waiting} waiting")
        if waiting:
            where = ", ".join(str(p) for p in chain.paths)
            raise click.ClickException(
                f"{waiting} entry(ies) still waiting in {where}: the store or a journal"
                " location is not available (see the log lines above); nothing is lost,"
                " run this again"
            )
        return
    rows: list[dict[str, Any]] = []
    unreadable = 0
    for name, number, data, problem in _log_lines(logs):
        row: dict[str, Any] = {"file": name, "line": number, "queue_id": None, "kind": None}
        rows.append(row)
        if data is None:
            unreadable += 1
            row["outcome"] = problem
            continue
        msg = Inbound.from_json(data["inbound"])
        row["queue_id"] = msg.queue_id
        try:
            row["kind"], row["outcome"] = _apply(engine, msg)
        except StoreError as exc:
            _report(rows[:-1], as_json)
            raise click.ClickException(
                f"store unavailable at {name} line {number} ({exc}); the entries before it"
                " are recorded, run this again"
            ) from None
    _report(rows, as_json)
    if unreadable:
        raise click.ClickException(
            f"{unreadable} entry(ies) could not be read (cut short by the log?): replay those"
            " mails with `replytrack check` and `replytrack stop`"
        )


def _report(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    emit(rows, "table", columns=["file", "line", "queue_id", "kind", "outcome"])
    recorded = sum(r.get("outcome") == "recorded" for r in rows)
    click.echo(f"\n{len(rows)} entry(ies), {recorded} recorded now")
