"""``replytrack messages``: the mails the proxy stamped and recorded."""

from __future__ import annotations

from typing import Any

import click

from replytrack.cli.common import State, cli, emit, iso, output_options, parse_since, pass_state
from replytrack.cli.control import campaign_option
from replytrack.store import SentMessage
from replytrack.store.base import MESSAGE_STATES


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
@click.option("--since", metavar="WHEN", help="Only newer than this (7d, 12h, 2026-11-01).")
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
      replytrack messages --json | jq '.[0].message_id'
    """
    campaign = campaign_option(state, campaign)
    store = state.store()
    rows = [
        message_row(m)
        for m in store.messages(
            campaign=campaign, since=parse_since(since), limit=limit, status=status
        )
    ]
    emit(
        rows,
        fmt,
        columns=["sent_at", "campaign", "step", "message_id", "recipients", "status"],
    )
