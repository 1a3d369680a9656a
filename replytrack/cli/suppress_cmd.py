"""``replytrack suppress add|remove|list|import`` (the do-not-contact list) and
``replytrack forget`` (erasure on request)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from replytrack.cli.common import State, cli, emit, iso, output_options, pass_state
from replytrack.cli.control import actor
from replytrack.config import ConfigError
from replytrack.do_not_contact import (
    AddressHasher,
    Entry,
    EntryError,
    address_hasher,
    counts_line,
    parse_entry,
    read_csv,
)
from replytrack.store import Store
from replytrack.store.records import DNC_ADDRESS, Suppression
from replytrack.tokens import KeyFileError, load_keyring

ERASED = "(erased)"


def _hasher(state: State, *, required: bool) -> AddressHasher | None:
    """The list's hasher from the token key file. Without the key entries are still kept
    and matched by address; ``forget`` needs it (``required``)."""
    try:
        return address_hasher(load_keyring(state.config().secret_path))
    except (KeyFileError, ConfigError) as exc:
        if required:
            raise click.ClickException(f"{exc} (the key hashes erased addresses)") from None
        return None


def _store(state: State, *, required: bool = False) -> Store:
    store = state.store()
    store.use_hasher(_hasher(state, required=required))
    return store


def _entries(values: tuple[str, ...]) -> list[Entry]:
    try:
        return [parse_entry(v) for v in values]
    except EntryError as exc:
        raise click.BadParameter(str(exc), param_hint="ADDRESS_OR_DOMAIN") from None


def _suppressions(entries: list[Entry], reason: str | None) -> list[Suppression]:
    who, now = actor(), time.time()
    return [
        Suppression(kind=e.kind, value=e.value, reason=reason, actor=who, created_at=now)
        for e in entries
    ]


@cli.group("suppress")
def suppress_group() -> None:
    """The do-not-contact list: addresses and whole domains that no campaign mails.

    The proxy refuses campaign mail to them in every campaign (550 5.7.1 naming the
    list, or the recipient is left out and recorded as suppressed); one-to-one mail is
    not affected. Unsubscribes (by mail or one click) add to it.

    \b
    Example:
      replytrack suppress add ann@example.org --reason "asked by phone"
      replytrack suppress add competitor.example --reason "never mail"
      replytrack suppress list --json
    """


@suppress_group.command("add")
@click.argument("values", metavar="ADDRESS_OR_DOMAIN...", nargs=-1, required=True)
@click.option("--reason", help="Why (recorded with who and when).")
@pass_state
def add_command(state: State, values: tuple[str, ...], reason: str | None) -> None:
    """Put addresses or whole domains (``example.com`` or ``@example.com``, which also
    covers its subdomains) on the list.

    \b
    Example:
      replytrack suppress add ann@example.org bob@example.org --reason "GDPR objection"
      replytrack suppress add @example.net
    """
    entries = _entries(values)
    added = _store(state).add_suppressions(_suppressions(entries, reason))
    click.echo(f"{added} added, {len(entries) - added} already listed")


@suppress_group.command("remove")
@click.argument("values", metavar="ADDRESS_OR_DOMAIN...", nargs=-1, required=True)
@pass_state
def remove_command(state: State, values: tuple[str, ...]) -> None:
    """Take addresses or domains off the list (an erased address too, by naming it).

    \b
    Example:
      replytrack suppress remove ann@example.org
    """
    store = _store(state)
    missing = [e.value for e in _entries(values) if not store.remove_suppression(e.kind, e.value)]
    click.echo(f"{len(values) - len(missing)} removed")
    if missing:
        raise click.ClickException(f"not on the list: {', '.join(missing)}")


@suppress_group.command("list")
@click.argument("values", metavar="[ADDRESS_OR_DOMAIN]...", nargs=-1)
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@output_options
@pass_state
def list_command(state: State, values: tuple[str, ...], limit: int, fmt: str) -> None:
    """List the entries, newest first; with addresses, whether and why each is listed.

    An erased address (``replytrack forget``) is kept only as a keyed hash: it shows as
    (erased), or by the address when you name it here and it matches.

    \b
    Example:
      replytrack suppress list
      replytrack suppress list ann@example.org --json
    """
    store = _store(state)
    rows: list[dict[str, Any]] = []
    if values:
        entries = _entries(values)
        addresses = [e.value for e in entries if e.kind == DNC_ADDRESS]
        found = store.suppressed(addresses)
        for address in addresses:
            if address in found:
                rows.append(_row(found[address], shown=address))
        domains = {e.value for e in entries if e.kind != DNC_ADDRESS}
        rows += [
            _row(s) for s in store.suppressions() if s.kind != DNC_ADDRESS and s.value in domains
        ]
        if not rows and fmt == "table":
            click.echo("not listed: " + ", ".join(values))
            return
    else:
        rows = [_row(s) for s in store.suppressions(limit=limit)]
    if fmt == "table":
        for row in rows:
            row["entry"] = row["address"] or row["domain"] or ERASED
    emit(rows, fmt, columns=["created_at", "kind", "entry", "reason", "actor"])


def _row(entry: Suppression, *, shown: str | None = None) -> dict[str, Any]:
    row = entry.to_json()
    row["created_at"] = iso(entry.created_at)
    if shown is not None and entry.kind == DNC_ADDRESS:
        row["address"] = shown  # the operator named it; the store only matched its hash
    return row


@suppress_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@click.option("--reason", help="Why (recorded on each entry).")
@click.option("--skip-invalid", is_flag=True, help="Import the readable rows, skip the others.")
@pass_state
def import_command(state: State, file: Path, reason: str | None, skip_invalid: bool) -> None:
    """Add the addresses of a CSV file: the column named email (or address), else the
    first. Nothing is imported when a row is not an address, unless --skip-invalid.

    \b
    Example:
      replytrack suppress import optouts.csv --reason "CRM opt-outs 2026-11"
    """
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {file}: {exc}") from None
    entries, problems = read_csv(text)
    for problem in problems[:20]:
        click.echo(f"{file}: {problem}", err=True)
    if problems and not skip_invalid:
        raise click.ClickException(
            f"{len(problems)} row(s) are not addresses; nothing imported (--skip-invalid"
            " imports the others)"
        )
    added = _store(state).add_suppressions(_suppressions(entries, reason))
    click.echo(
        f"{added} added, {len(entries) - added} already listed"
        + (f", {len(problems)} skipped" if problems else "")
    )


@cli.command("forget")
@click.argument("address")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
@pass_state
def forget_command(state: State, address: str, yes: bool, as_json: bool) -> None:
    """Erase a person on request (data protection) and keep them unmailable.

    Removes the address from recipients, enrollments, events (with their notifications
    not yet sent) and out-of-office memory, drops mails that had no other recipient, and
    keeps a keyed hash of the address on the do-not-contact list so no campaign mails it
    again. The erasure is recorded (event "erased") without the address. On SQLite the
    store file is then rebuilt (VACUUM) and its write-ahead log emptied, so the address
    is gone from the files; on PostgreSQL the touched tables are vacuumed, which removes
    dead rows from the pages but not from WAL segments, archives, backups or standbys.

    \b
    Example:
      replytrack forget ann@example.org --yes
    """
    try:
        entry = parse_entry(address)
    except EntryError as exc:
        raise click.BadParameter(str(exc), param_hint="ADDRESS") from None
    if entry.kind != DNC_ADDRESS:
        raise click.BadParameter(f"{address!r} is a domain, not an address", param_hint="ADDRESS")
    store = _store(state, required=True)
    if not yes:
        click.confirm(f"Erase {entry.value} from the store for good?", abort=True, err=True)
    counts = store.forget(entry.value, actor=actor(), now=time.time())
    cleared = bool(counts.pop("files_cleared", 0))
    if as_json:
        click.echo(json.dumps({"removed": counts, "files_cleared": cleared}, indent=2))
    else:
        click.echo(f"erased: {counts_line(counts)}; kept on the do-not-contact list as a hash")
    if not cleared:
        raise click.ClickException(
            "the rows are gone, but the store's freed space could not be cleared now"
            " (another process held the write-ahead log, or VACUUM was not allowed):"
            " run `replytrack forget` again later, or see the log"
        )
