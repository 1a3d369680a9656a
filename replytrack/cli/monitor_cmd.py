"""``replytrack monitor apply``: carry out what monitor mode recorded but did not do.

In monitor mode (``mode = "monitor"``) the milter records each verdict with the enrollment
changes enforce mode would have made (``detail.would_set``) and changes nothing. Switching
to enforce does not look back: a prospect who replied during the monitor week is still
active and would get the next step. This command makes those stops, as a stop by hand
does (one ``stopped`` event per campaign, with who ran it, notified), for the enrollments
that are still active or paused, and puts the writers of monitored "remove me" replies on
the do-not-contact list. What is stopped already is left alone, so running it twice
changes nothing the second time.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import click

from replytrack.cli.common import State, cli, emit, output_options, pass_state
from replytrack.cli.control import actor, campaign_option, record_changes
from replytrack.config import MONITOR
from replytrack.store import ACTIVE, BOUNCED, PAUSED, STOPPED, Event, Store
from replytrack.store.records import DNC_ADDRESS, Suppression

# The would-be changes carried out: pauses for an absence are over by now, so left out.
_CARRIED = (STOPPED, BOUNCED)
_REASON_SUFFIX = " (recorded in monitor mode)"


def would_be_changes(events: list[Event]) -> dict[tuple[str, str], tuple[str, str, int]]:
    """(campaign, recipient) -> (status, reason, event id) from the monitored events'
    ``would_set``; the first event to name a pair decides, as it would have in enforce."""
    found: dict[tuple[str, str], tuple[str, str, int]] = {}
    for event in events:
        for change in event.detail.get("would_set") or []:
            if not isinstance(change, dict) or change.get("status") not in _CARRIED:
                continue
            pair = (str(change.get("campaign")), str(change.get("recipient")))
            reason = str(change.get("reason") or event.kind)
            found.setdefault(pair, (str(change["status"]), reason, event.id or 0))
    return found


def would_be_listed(events: list[Event]) -> list[str]:
    """The writers of monitored replies whose intent was ``unsubscribe``."""
    return sorted(
        {
            str(event.detail["would_do_not_contact"])
            for event in events
            if event.detail.get("would_do_not_contact")
        }
    )


def _current(store: Store, campaign: str, recipient: str) -> str | None:
    found = store.enrollments(campaign=campaign, recipient=recipient, limit=1)
    return found[0].status if found else None


@cli.group("monitor")
def monitor_group() -> None:
    """What monitor mode (mode = "monitor") recorded, carried out after the switch to
    enforce mode.

    \b
    Example:
      replytrack monitor apply --dry-run
      replytrack monitor apply --campaign spring-2026
    """


@monitor_group.command("apply")
@click.option("--campaign", metavar="ID", help="Only this campaign's stops.")
@click.option("--dry-run", is_flag=True, help="List what would change; change nothing.")
@output_options
@pass_state
def apply_command(state: State, campaign: str | None, dry_run: bool, fmt: str) -> None:
    """Make the stops monitor mode recorded but did not make.

    Run it once when switching from monitor to enforce mode: every enrollment a monitored
    reply or bounce would have stopped (or marked bounced) and that is still active or
    paused is changed now, recorded as a stop by hand with your user name and notified;
    the writers of monitored "remove me" replies go on the do-not-contact list. Running it
    again changes nothing more.

    \b
    Example:
      replytrack monitor apply --dry-run
      replytrack monitor apply
    """
    campaign = campaign_option(state, campaign)
    if state.config().mode == MONITOR and not dry_run:
        # The stops are made all the same; the proxy honours them once enforce mode is on.
        click.echo(
            "note: this configuration still says mode = \"monitor\": the proxy relays to"
            " stopped recipients until mode = \"enforce\" (and a reload)",
            err=True,
        )
    store = state.store()
    events = store.monitored_events(campaign)
    rows: list[dict[str, Any]] = []
    groups: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for (name, recipient), (status, reason, event_id) in sorted(would_be_changes(events).items()):
        current = _current(store, name, recipient)
        if current not in (ACTIVE, PAUSED):
            continue  # stopped or bounced since (or erased): nothing to carry out
        groups[status, reason + _REASON_SUFFIX].append((name, recipient))
        rows.append(
            {
                "campaign": name,
                "recipient": recipient,
                "from": current,
                "to": status,
                "reason": reason,
                "event": event_id,
            }
        )
    new_listed = [a for a in would_be_listed(events) if not store.suppressed([a])]
    if not dry_run:
        for (status, reason), targets in sorted(groups.items()):
            record_changes(store, "stopped", status, reason, targets, None)
        if new_listed:
            now = time.time()
            store.add_suppressions(
                [
                    Suppression(
                        kind=DNC_ADDRESS,
                        value=address,
                        reason="unsubscribe reply" + _REASON_SUFFIX,
                        actor=actor(),
                        created_at=now,
                    )
                    for address in new_listed
                ]
            )
    if fmt != "table":
        emit(rows, fmt, ["campaign", "recipient", "from", "to", "reason", "event"])
        return
    if rows:
        emit(rows, fmt, ["campaign", "recipient", "from", "to", "reason", "event"])
    verb = "would change" if dry_run else "changed"
    click.echo(
        f"{verb} {len(rows)} enrollment(s) from {len(events)} monitored event(s);"
        f" {'would list' if dry_run else 'listed'} {len(new_listed)} address(es) as"
        " do-not-contact"
    )
