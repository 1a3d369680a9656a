"""``replytrack stop`` and ``resume``: steer enrollments by hand, recorded with who and when."""

from __future__ import annotations

import getpass
import os
import time
from collections import defaultdict
from collections.abc import Sequence

import click

from replytrack.cli.common import State, cli, pass_state
from replytrack.headers import InvalidMetadata, check_campaign_id, normalize_address
from replytrack.store import (
    ACTIVE,
    BOUNCED,
    BRAKED,
    PAUSED,
    STOPPED,
    Enrollment,
    Event,
    StatusChange,
    Store,
)

# How many addresses an event's detail lists; a campaign-wide stop may touch thousands.
_DETAIL_LIMIT = 100


def actor() -> str:
    """Who runs this command: the user behind sudo, else the login user."""
    for name in ("SUDO_USER", "USER", "LOGNAME"):
        value = os.environ.get(name)
        if value:
            return value
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _replied(enrollment: Enrollment) -> bool:
    """True when this enrollment was stopped because the recipient (or someone) replied."""
    return enrollment.status == STOPPED and (
        enrollment.updated_by == "reply" or (enrollment.reason or "").startswith("reply")
    )


def campaign_option(state: State, value: str | None, *, known_ok: bool = True) -> str | None:
    """A ``--campaign`` value checked against the campaign id rule (``check_campaign_id``).

    An empty or blank id is always refused: it names no campaign, and a store call taking
    "" as "no filter" would act on every campaign. With ``known_ok`` an id that breaks the
    rule is still taken when the store already holds that campaign: one recorded before
    the rule existed must stay reachable (to list, stop, resume). A usage error, exit 2,
    otherwise.
    """
    if value is None:
        return None
    try:
        return check_campaign_id(value)
    except InvalidMetadata as exc:
        if known_ok and value.strip():
            store = state.store()
            if store.campaign_stats(value) or store.enrollments(campaign=value, limit=1):
                return value
        raise click.BadParameter(f"{value!r}: {exc}", param_hint="'--campaign'") from None


def _select(store: Store, campaign: str | None, recipient: str | None) -> list[Enrollment]:
    if campaign is None and recipient is None:
        raise click.UsageError("name a --campaign, a --recipient, or both")
    return store.enrollments(campaign=campaign, recipient=recipient)


def record_changes(
    store: Store,
    kind: str,
    status: str,
    reason: str,
    targets: Sequence[tuple[str, str]],
    recipient: str | None,
    *,
    whole_campaign: str | None = None,
) -> int:
    """One event per campaign, changing every targeted enrollment in the same transaction.

    With ``whole_campaign`` the campaign itself takes ``status`` too (in its event's
    transaction), even when none of its enrollments change.
    """
    by_campaign: dict[str, list[str]] = defaultdict(list)
    if whole_campaign is not None:
        by_campaign[whole_campaign] = []
    for campaign, address in targets:
        by_campaign[campaign].append(address)
    who = actor()
    now = time.time()
    for campaign, addresses in sorted(by_campaign.items()):
        whole = campaign == whole_campaign
        single = addresses[0] if len(addresses) == 1 and not whole else None
        detail: dict[str, object] = {
            "reason": reason,
            "count": len(addresses),
            "recipients": addresses[:_DETAIL_LIMIT],
        }
        if whole:
            detail["scope"] = "campaign"
        store.record_event(
            Event(
                kind=kind,
                created_at=now,
                campaign=campaign,
                recipient=recipient or single,
                actor=who,
                detail=detail,
            ),
            set_status=[StatusChange(campaign, a, status, reason) for a in addresses],
            campaign_status=status if whole else None,
        )
    return len(by_campaign)


def _normalize(recipient: str | None) -> str | None:
    if recipient is None:
        return None
    address = normalize_address(recipient)
    if "@" not in address:
        raise click.BadParameter(f"{recipient!r} is not an address", param_hint="--recipient")
    return address


@cli.command("stop")
@click.option("--campaign", metavar="ID", help="Stop this campaign (all its recipients).")
@click.option("--recipient", metavar="ADDR", help="Stop this recipient (in every campaign).")
@click.option("--reason", default="stopped by hand", show_default=True, help="Why, for the record.")
@pass_state
def stop_command(state: State, campaign: str | None, recipient: str | None, reason: str) -> None:
    """Stop campaign mail: to a recipient, for a whole campaign, or one recipient in one
    campaign. Recorded as a "stopped" event with your user name, and notified.

    With --campaign alone the campaign itself is stopped: its mail is suppressed for every
    recipient, including addresses it has not mailed yet, until `replytrack resume
    --campaign`. With both --campaign and --recipient the recipient is stopped even if not
    enrolled yet, so the first mail of that campaign is suppressed too.

    \b
    Example:
      replytrack stop --recipient ann@example.org --reason "asked by phone"
      replytrack stop --campaign spring-2026 --reason "pricing changed"
    """
    address = _normalize(recipient)
    # An id the store does not hold yet (a stop in advance) must be one the proxy accepts.
    campaign = campaign_option(state, campaign)
    store = state.store()
    enrollments = _select(store, campaign, address)
    if campaign is not None and address is None:
        # The whole campaign: its state and its enrollments change in one transaction per
        # campaign, and a campaign that has sent nothing yet can be stopped in advance.
        targets = [(e.campaign, e.recipient) for e in enrollments if e.status in (ACTIVE, PAUSED)]
        already = [e for e in enrollments if e.status not in (ACTIVE, PAUSED)]
        record_changes(store, "stopped", STOPPED, reason, targets, None, whole_campaign=campaign)
        click.echo(
            f"stopped campaign {campaign} (no further mail to anyone);"
            f" stopped {len(targets)} enrollment(s)"
            + (f"; {len(already)} already stopped or bounced" if already else "")
        )
        return
    if not enrollments and campaign is not None and address is not None:
        targets = [(campaign, address)]
        skipped: list[Enrollment] = []
    elif not enrollments:
        raise click.ClickException(_nothing(campaign, address))
    else:
        targets = [(e.campaign, e.recipient) for e in enrollments if e.status in (ACTIVE, PAUSED)]
        skipped = [e for e in enrollments if e.status not in (ACTIVE, PAUSED)]
    if targets:
        record_changes(store, "stopped", STOPPED, reason, targets, address)
    click.echo(
        f"stopped {len(targets)} enrollment(s)"
        + (f"; {len(skipped)} already stopped or bounced" if skipped else "")
    )


@cli.command("resume")
@click.option("--campaign", metavar="ID", help="Resume this campaign.")
@click.option("--recipient", metavar="ADDR", help="Resume this recipient (in every campaign).")
@click.option("--reason", default="resumed by hand", show_default=True, help="Why, for the record.")
@click.option(
    "--force",
    is_flag=True,
    help="Also resume bounced recipients and those stopped by a reply.",
)
@pass_state
def resume_command(
    state: State, campaign: str | None, recipient: str | None, reason: str, force: bool
) -> None:
    """Let campaign mail flow again to stopped or paused enrollments. Recorded as a
    "resumed" event with your user name, and notified.

    With --campaign alone a campaign stopped as a whole is resumed too, and so is one the
    bounce brake held back (its bounce count starts again from the resume). Bounced recipients
    and recipients who replied stay stopped unless --force: mailing a dead address hurts
    your reputation, and mailing someone who answered annoys them.

    \b
    Example:
      replytrack resume --recipient ann@example.org --campaign spring-2026
      replytrack resume --campaign spring-2026 --reason "pricing fixed"
    """
    address = _normalize(recipient)
    campaign = campaign_option(state, campaign)
    store = state.store()
    enrollments = _select(store, campaign, address)
    whole = None
    if campaign is not None and address is None:
        stats = store.campaign_stats(campaign)
        if stats and stats[0].status in (STOPPED, BRAKED):
            whole = campaign
    if not enrollments and whole is None:
        raise click.ClickException(_nothing(campaign, address))
    candidates = [e for e in enrollments if e.status in (STOPPED, PAUSED, BOUNCED)]
    held = [e for e in candidates if not force and (e.status == BOUNCED or _replied(e))]
    targets = [(e.campaign, e.recipient) for e in candidates if e not in held]
    if whole is not None:
        record_changes(store, "resumed", ACTIVE, reason, targets, None, whole_campaign=whole)
        click.echo(
            f"resumed campaign {whole}; resumed {len(targets)} enrollment(s)"
            + (f"; {len(held)} bounced or replied kept stopped (use --force)" if held else "")
        )
        return
    if held and not targets:
        first = held[0]
        why = "bounced" if first.status == BOUNCED else "stopped by a reply"
        raise click.ClickException(
            f"{first.recipient} in {first.campaign} is {why}"
            + (f" (and {len(held) - 1} more)" if len(held) > 1 else "")
            + "; add --force to resume anyway"
        )
    if targets:
        record_changes(store, "resumed", ACTIVE, reason, targets, address)
    click.echo(
        f"resumed {len(targets)} enrollment(s)"
        + (f"; {len(held)} bounced or replied kept stopped (use --force)" if held else "")
    )


def _nothing(campaign: str | None, address: str | None) -> str:
    if campaign and address:
        return f"{address} is not enrolled in campaign {campaign}"
    if campaign:
        return f"campaign {campaign} has no enrollments"
    return f"{address} is not enrolled in any campaign"
