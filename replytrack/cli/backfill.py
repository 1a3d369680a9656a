"""``replytrack import``: record mail sent before installation, so replies to it are tracked."""

from __future__ import annotations

import email.header
import mailbox
import sys
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import click

from replytrack.cli.common import State, cli, pass_state
from replytrack.headers import (
    InvalidMetadata,
    check_campaign_id,
    extract_addresses,
    extract_msgids,
    header_values,
    parse_step,
    split_message,
)
from replytrack.store import RELAYED, OutboundRecipient, OutboundRecord
from replytrack.tokens import load_keyring, mint

# Imported mail was sent: recorded as relayed, it counts as sent in `campaigns` (which counts
# relayed and unconfirmed mail) like the mail the proxy relays. Where it came from is kept
# where the upstream's answer would be.
IMPORTED_REPLY = "imported by replytrack import"


def _open(path: Path, fmt: str) -> mailbox.Mailbox:
    """An mbox file or a Maildir directory, opened for reading."""
    if fmt == "auto":
        fmt = "maildir" if path.is_dir() else "mbox"
    if fmt == "maildir":
        if not (path / "cur").is_dir() or not (path / "new").is_dir():
            raise click.ClickException(f"{path} is not a Maildir (no cur/ and new/ inside)")
        box: mailbox.Mailbox = mailbox.Maildir(path, factory=None, create=False)
    else:
        if path.is_dir():
            raise click.ClickException(f"{path} is a directory, not an mbox file")
        box = mailbox.mbox(path, create=False)
    return box


def _messages(path: Path, fmt: str) -> Iterator[bytes]:
    """The raw bytes of every message in an mbox file or a Maildir directory, with a
    progress bar on a terminal."""
    box = _open(path, fmt)
    try:
        # Listing the keys reads an mbox's "From " lines once: it gives the bar its length.
        keys = list(box.iterkeys())
        # click's bar (click is the CLI's library already): on stderr, so the summary on
        # stdout stays clean; hidden when stderr is no terminal (cron, pipes, logs).
        with click.progressbar(
            keys,
            label="importing",
            file=sys.stderr,
            hidden=not sys.stderr.isatty(),
            show_pos=True,
        ) as bar:
            for key in bar:
                yield box.get_bytes(key)
    finally:
        box.close()


def _first(header: bytes, name: str) -> str | None:
    values = header_values(header, name)
    return values[0] if values else None


def _decoded(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def _sent_at(header: bytes) -> float:
    value = _first(header, "Date")
    if value:
        try:
            return parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return time.time()


def _metadata(header: bytes, default: str | None) -> tuple[str | None, int | None]:
    """(campaign, step) of a sent mail, read as the proxy reads them; InvalidMetadata when
    they break the rule (``check_campaign_id``, ``parse_step``)."""
    campaign = _first(header, "X-ReplyTrack-Campaign")
    step = _first(header, "X-ReplyTrack-Step")
    if campaign is not None:
        check_campaign_id(campaign)
    return campaign if campaign is not None else default, None if step is None else parse_step(step)


@cli.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--campaign", metavar="ID", help="Campaign of mails without X-ReplyTrack-Campaign.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "mbox", "maildir"]),
    default="auto",
    show_default=True,
    help="Mailbox format (auto: a directory is a Maildir, a file an mbox).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be imported; change nothing.")
@pass_state
def import_command(state: State, path: Path, campaign: str | None, fmt: str, dry_run: bool) -> None:
    """Backfill: record the Message-IDs of mail sent before replytrack was installed (an
    mbox or a Maildir of SENT mail), so replies to it are matched and stop its campaign.

    Recipients come from To and Cc, the campaign from X-ReplyTrack-Campaign or --campaign.
    Importing the same mail twice records it once.

    \b
    Example:
      replytrack import ~/Mail/Sent --campaign spring-2026
      replytrack import sent.mbox --dry-run
    """
    if campaign is not None:
        # Import writes this id into every record: it must be one the proxy would accept.
        try:
            check_campaign_id(campaign)
        except InvalidMetadata as exc:
            raise click.BadParameter(f"{campaign!r}: {exc}", param_hint="'--campaign'") from None
    config = state.config()
    store = state.store()
    keyring = load_keyring(config.secret_path)
    imported = already = skipped = bad = 0
    seen: set[str] = set()
    for data in _messages(path, fmt):
        header, _ = split_message(data)
        ids = extract_msgids(" ".join(header_values(header, "Message-ID")))
        if not ids:
            skipped += 1
            continue
        original = ids[0]
        if original in seen or store.find_sent([original]):
            already += 1
            continue
        try:
            mail_campaign, step = _metadata(header, campaign)
        except InvalidMetadata as exc:
            click.echo(f"skipped <{original}>: X-ReplyTrack metadata: {exc}", err=True)
            bad += 1
            continue
        seen.add(original)
        recipients: list[OutboundRecipient] = []
        for role in ("to", "cc", "bcc"):
            for address in extract_addresses(header_values(header, role)):
                if all(r.address != address for r in recipients):
                    recipients.append(OutboundRecipient(address=address, role=role, envelope=True))
        senders = extract_addresses(header_values(header, "From"))
        record = OutboundRecord(
            # message_id is unique and required: the row gets a stamped ID of its own, and
            # the mail's real Message-ID is what replies will reference.
            message_id=mint(keyring, config.domain),
            original_message_id=original,
            campaign=mail_campaign,
            step=step,
            sender=senders[0] if senders else "",
            from_address=senders[0] if senders else None,
            subject=_decoded(_first(header, "Subject")),
            size=len(data),
            status=RELAYED,
            upstream_reply=IMPORTED_REPLY,
            recipients=tuple(recipients),
            created_at=_sent_at(header),
        )
        if not dry_run:
            store.record_outbound(record)
        imported += 1
    verb = "would import" if dry_run else "imported"
    click.echo(
        f"{verb} {imported} message(s); {already} already recorded;"
        f" {skipped} skipped (no Message-ID)"
        + (f"; {bad} skipped (bad X-ReplyTrack metadata)" if bad else "")
    )
