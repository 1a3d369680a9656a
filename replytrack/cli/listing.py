"""``replytrack events``, ``campaigns``, ``enrollments``: what happened, where things stand."""

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
from replytrack.cli.monitor_view import MONITOR_COLUMNS, add_monitor_counts
from replytrack.store import CampaignStats, Enrollment, Event
from replytrack.store.records import ENROLLMENT_STATES, EVENT_KINDS, INBOUND_KINDS


def event_row(event: Event) -> dict[str, Any]:
    """An event as a row: the JSON keys are part of the CLI contract. ``actor`` says who
    acted (the milter, the proxy, or the user who ran stop/resume) and ``reason`` why."""
    row = event.to_json()
    row["created_at"] = iso(event.created_at)
    row["actor"] = event.actor or _ACTORS.get(event.kind)
    row["reason"] = event.detail.get("reason") or _reason(event)
    return row


# Events recorded before actors were, or by a part that does not name itself: who acts for
# each kind is fixed (the proxy suppresses, the milter classifies).
_ACTORS = {"suppressed": "proxy", **{kind: "milter" for kind in INBOUND_KINDS}}


def _reason(event: Event) -> str | None:
    """Why, for events that keep no reason of their own: what the milter saw."""
    if event.kind in INBOUND_KINDS:
        subtype = event.detail.get("subtype")
        return f"{event.kind} ({subtype})" if subtype else event.kind
    return None


def campaign_row(stats: CampaignStats) -> dict[str, Any]:
    """Campaign counts as a row: the JSON keys are part of the CLI contract."""
    return {
        "campaign": stats.campaign,
        # The campaign's own state: "stopped" after `replytrack stop --campaign`.
        "status": stats.status,
        "status_reason": stats.reason,
        "sent": stats.sent,
        "recipients": stats.recipients,
        "replied": stats.replied,
        "stopped": stats.stopped,
        "bounced": stats.bounced,
        "paused": stats.paused,
        "active": stats.active,
        "suppressed": stats.suppressed,
        "first_sent": iso(stats.first_sent),
        "last_sent": iso(stats.last_sent),
    }


def enrollment_row(enrollment: Enrollment) -> dict[str, Any]:
    """An enrollment as a row: the JSON keys are part of the CLI contract."""
    return {
        "campaign": enrollment.campaign,
        "recipient": enrollment.recipient,
        "status": enrollment.status,
        "reason": enrollment.reason,
        "since": iso(enrollment.since),
        "until": iso(enrollment.until),
        "updated_by": enrollment.updated_by,
    }


@cli.command("events")
@click.option("--kind", type=click.Choice(EVENT_KINDS), help="Only this kind of event.")
@click.option("--campaign", metavar="ID", help="Only this campaign.")
@click.option("--recipient", metavar="ADDR", help="Only events concerning this address.")
@click.option(
    "--since", metavar="WHEN", help="Only newer than this (7d, 12h, 2026-11-01, yesterday)."
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@output_options
@pass_state
def events_command(
    state: State,
    kind: str | None,
    campaign: str | None,
    recipient: str | None,
    since: str | None,
    limit: int,
    fmt: str,
) -> None:
    """List events, newest first: inbound verdicts (reply, auto_reply, bounce, receipt,
    feedback, unrelated) and actions (stopped, resumed, paused, suppressed).

    \b
    Example:
      replytrack events --kind reply --since yesterday --tz local
      replytrack events --recipient ann@example.org --wide
      replytrack events --campaign spring-2026 --json | jq '.[].evidence'
    """
    campaign = campaign_option(state, campaign)
    store = state.store()
    start = parse_since(since)

    address = recipient.strip().lower() if recipient else None

    def fetch(n: int | None) -> list[Event]:
        return store.events(kind=kind, campaign=campaign, since=start, limit=n, recipient=address)

    events, more = fetch_rows(fetch, limit)
    emit(
        [event_row(e) for e in events],
        fmt,
        columns=[
            "created_at",
            "kind",
            "campaign",
            "sender",
            "recipient",
            "relation",
            "actor",
            "reason",
            "evidence",
        ],
    )
    if more:
        say_more(limit, "events")


@cli.command("campaigns")
@click.option("--campaign", metavar="ID", help="Only this campaign.")
@output_options
@pass_state
def campaigns_command(state: State, campaign: str | None, fmt: str) -> None:
    """Per-campaign state and counts: whether the campaign is stopped as a whole, mails
    sent, recipients, replies, stopped enrollments, bounces, suppressions. In monitor mode
    (mode = "monitor"), would_stop and would_suppress count the recipients enforce mode
    would have stopped (or marked bounced) and those it would not have sent the mail to.

    \b
    Example:
      replytrack campaigns
      replytrack campaigns --campaign spring-2026 --json
    """
    campaign = campaign_option(state, campaign)
    rows = [campaign_row(s) for s in state.store().campaign_stats(campaign)]
    add_monitor_counts(rows, state.store(), campaign)  # mode = "monitor": cli/monitor_view.py
    emit(
        rows,
        fmt,
        columns=[
            "campaign",
            "status",
            "sent",
            "recipients",
            "replied",
            "stopped",
            "bounced",
            "paused",
            "active",
            "suppressed",
            *MONITOR_COLUMNS,
            "last_sent",
        ],
    )


@cli.command("enrollments")
@click.option("--campaign", metavar="ID", help="Only this campaign.")
@click.option("--recipient", metavar="ADDR", help="Only this recipient address.")
@click.option("--domain", metavar="DOMAIN", help="Only recipients at this domain.")
@click.option("--status", type=click.Choice(ENROLLMENT_STATES), help="Only this status.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@output_options
@pass_state
def enrollments_command(
    state: State,
    campaign: str | None,
    recipient: str | None,
    domain: str | None,
    status: str | None,
    limit: int,
    fmt: str,
) -> None:
    """List recipients' places in campaigns: active, stopped, paused or bounced, and why.

    \b
    Example:
      replytrack enrollments --campaign spring-2026 --status stopped
      replytrack enrollments --recipient ann@example.org --json
    """
    campaign = campaign_option(state, campaign)
    store = state.store()
    enrollments, more = fetch_rows(
        lambda n: store.enrollments(
            campaign=campaign,
            recipient=recipient.strip().lower() if recipient else None,
            domain=domain.strip().lower() if domain else None,
            status=status,
            limit=n,
        ),
        limit,
    )
    emit(
        [enrollment_row(e) for e in enrollments],
        fmt,
        columns=["campaign", "recipient", "status", "reason", "since", "until"],
    )
    if more:
        say_more(limit, "enrollments")
