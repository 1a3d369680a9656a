"""``replytrack messages``: the mails the proxy stamped and recorded."""

from __future__ import annotations

from typing import Any

import click

from replytrack.cli.common import (
    State,
    cli,
    emit,
    fetch_rows,
    iso,
    output_options,
    parse_since,
    pass_state,
    say_more,
)
from replytrack.cli.control import campaign_option
from replytrack.store import SentMessage
from replytrack.store.records import MESSAGE_STATES


def message_row(message: SentMessage) -> dict[str, Any]:
    """A recorded mail as a row: the JSON keys are part of the CLI contract."""
    return {
        "message_id": message.message_id,
        "original_message_id": message.original_message_id,
        "campaign": message.campaign,
        "step": message.step,
        "sender": message.sender,
        "subject": message.subject,
        "recipients": [r.address for r in message.recipients],
        "recipient_roles": {r.address: r.role for r in message.recipients},
        "suppressed": [r.address for r in message.recipients if r.status == "suppressed"],
        "status": message.status,
        "sent_at": iso(message.created_at),
    }


@cli.command("messages")
@click.option("--campaign", metavar="ID", help="Only this campaign.")
@click.option("--recipient", metavar="ADDR", help="Only mails to this address (To, Cc, envelope).")
@click.option(
    "--since", metavar="WHEN", help="Only newer than this (7d, 12h, 2026-11-01, yesterday)."
)
@click.option(
    "--status",
    type=click.Choice(MESSAGE_STATES),
    help="Only mails in this state (unconfirmed: the proxy never learned the upstream's answer).",
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@output_options
@pass_state
def messages_command(
    state: State,
    campaign: str | None,
    recipient: str | None,
    since: str | None,
    status: str | None,
    limit: int,
    fmt: str,
) -> None:
    """List recorded outbound mails, newest first.

    \b
    Example:
      replytrack messages --campaign spring-2026 --since 7d
      replytrack messages --status unconfirmed
      replytrack messages --recipient ann@example.org --wide
      replytrack messages --json | jq '.[0].message_id'
    """
    campaign = campaign_option(state, campaign)
    store = state.store()
    start = parse_since(since)

    address = recipient.strip().lower() if recipient else None

    def fetch(n: int | None) -> list[SentMessage]:
        return store.messages(
            campaign=campaign, since=start, limit=n, status=status, recipient=address
        )

    messages, more = fetch_rows(fetch, limit)
    emit(
        [message_row(m) for m in messages],
        fmt,
        columns=["sent_at", "campaign", "step", "message_id", "recipients", "status"],
    )
    if more:
        say_more(limit, "messages")
