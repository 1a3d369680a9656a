"""The store's business rules as pure functions: no I/O, the same for every backend.

A backend reads what a rule needs inside its transaction, asks the rule, and writes what it
answers, so that SQLite and PostgreSQL cannot drift apart on who is blocked, who is enrolled,
which suppressions are recorded or which enrollment state wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from replytrack.do_not_contact import reason_of
from replytrack.store.records import (
    ACTIVE,
    BOUNCED,
    BRAKED,
    CAMPAIGN_BRAKED,
    CAMPAIGN_STATES,
    CAMPAIGN_STOPPED,
    DNC_ADDRESS,
    FAILED,
    INBOUND_KINDS,
    PAUSED,
    RECIPIENT_SENT,
    RECIPIENT_SUPPRESSED,
    RELAYED,
    RELAYING,
    STOPPED,
    UNCONFIRMED,
    CampaignStop,
    Enrollment,
    Event,
    OutboundRecipient,
    OutboundRecord,
    StatusChange,
    Suppression,
)

# How strongly an enrollment state holds against a change the milter makes on its own: a
# person's reply (stopped) outranks a delivery failure (bounced), which outranks a pause or
# plain activity. A change by hand (``replytrack stop`` / ``resume``) always applies.
_RANK = {ACTIVE: 0, PAUSED: 0, BOUNCED: 1, STOPPED: 2}


# --- outbound -----------------------------------------------------------------------------------
def campaign_stop_reason(stop: CampaignStop) -> str:
    """The reason a campaign-wide stop (or brake) gives each recipient it blocks."""
    head = CAMPAIGN_BRAKED if stop.status == BRAKED else CAMPAIGN_STOPPED
    return head + (f": {stop.reason}" if stop.reason else "")


def blocked_recipients(
    campaign: str,
    addresses: Iterable[str],
    *,
    stop: CampaignStop | None,
    enrollments: Iterable[Enrollment],
    now: float,
    do_not_contact: Mapping[str, Suppression] | None = None,
) -> dict[str, Enrollment]:
    """Who of ``addresses`` the next mail of ``campaign`` must not reach, and why.

    The do-not-contact list outranks everything, in every campaign: an address it covers
    (``do_not_contact``: address to its entry, :func:`replytrack.do_not_contact.covering`)
    is blocked by a ``stopped`` enrollment whose reason starts with DO_NOT_CONTACT. A
    campaign stopped as a whole outranks each recipient's own state: every other address
    is blocked, enrolled or not, by a ``stopped`` enrollment whose reason starts with
    CAMPAIGN_STOPPED; a braked one (:func:`brake_tripped`) by a ``paused`` enrollment
    without an end whose reason starts with CAMPAIGN_BRAKED, so that the proxy defers the
    mail (4xx) instead of refusing it. Otherwise each of ``enrollments`` (the backend's
    read of these addresses in this campaign) that blocks sending (stopped, bounced,
    paused until later) blocks its recipient.
    """
    wanted = sorted(set(addresses))
    listed = {
        address: Enrollment(
            campaign=campaign,
            recipient=address,
            status=STOPPED,
            reason=reason_of(entry),
            since=entry.created_at,
            updated_by=entry.actor,
        )
        for address, entry in (do_not_contact or {}).items()
    }
    if stop is not None:
        reason = campaign_stop_reason(stop)
        return listed | {
            address: Enrollment(
                campaign=campaign,
                recipient=address,
                status=PAUSED if stop.status == BRAKED else STOPPED,
                reason=reason,
                since=stop.since or now,
                updated_by=stop.updated_by,
            )
            for address in wanted
            if address not in listed
        }
    return {e.recipient: e for e in enrollments if e.blocks_sending(now)} | listed


def enrolled_by(record: OutboundRecord) -> list[str]:
    """The addresses a recorded campaign mail enrolls (when not enrolled yet): its recipients
    it was sent to, sorted (one lock order for every writer). Also for a mail still
    ``relaying``: once DATA is sent, nothing that fails later may leave a mail that went out
    outside matching and suppression."""
    if record.campaign is None:
        return []
    return sorted({r.address for r in record.recipients if r.status == RECIPIENT_SENT})


def records_suppressions(old_status: str | None, new_status: str) -> bool:
    """Whether a mail moving from ``old_status`` (None: just recorded) to ``new_status``
    records its suppression events now.

    Once, when the mail is settled: recorded settled, or ``relaying`` that became
    ``relayed`` or ``unconfirmed``. An attempt the upstream refused, which the client sends
    again, leaves none behind.
    """
    if old_status is None:
        return new_status != RELAYING
    return old_status == RELAYING and new_status in (RELAYED, UNCONFIRMED)


def suppression_events(
    *,
    message_id: str,
    campaign: str | None,
    sender: str,
    step: int | None,
    created_at: float,
    recipients: Iterable[OutboundRecipient],
) -> list[Event]:
    """The ``suppressed`` events of a settled mail: one per recipient it was not sent to."""
    return [
        Event(
            kind="suppressed",
            created_at=created_at,
            campaign=campaign,
            message_id=message_id,
            sender=sender,
            recipient=r.address,
            detail={"reason": r.reason, "step": step},
        )
        for r in sorted(recipients, key=lambda r: r.address)
        if r.status == RECIPIENT_SUPPRESSED
    ]


def takes_back_enrollments(old_status: str, new_status: str, campaign: str | None) -> bool:
    """Whether settling a mail as ``new_status`` takes back the enrollments it made.

    A campaign mail the upstream refused (``failed`` after ``relaying`` or ``unconfirmed``)
    stands for nothing that went out; the backend then drops the enrollments it made that
    are still active and that no other mail of the campaign, not failed, backs.
    """
    return campaign is not None and old_status in (RELAYING, UNCONFIRMED) and new_status == FAILED


# --- inbound ------------------------------------------------------------------------------------
def changed_by_hand(event: Event) -> bool:
    """Whether the event's enrollment changes are a person's (CLI) rather than the milter's
    own verdict on inbound mail."""
    return event.kind not in INBOUND_KINDS


def settle_status(
    current: Enrollment | None, change: StatusChange, *, by_hand: bool
) -> StatusChange | None:
    """The change to write when ``change`` meets the enrollment's ``current`` state, or None
    to keep the current one.

    By hand, a change always applies. The milter's own changes never weaken a stronger
    state: a bounce arriving after a reply leaves the enrollment ``stopped`` with its reply
    reason (the bounce itself is still recorded as an event), an out-of-office does not
    pause a stopped or bounced enrollment, and a second stop or bounce keeps the first one's
    reason and time. Between active and paused the newer change applies (a later return date
    moves the pause).
    """
    if by_hand or current is None:
        return change
    held, new = _RANK.get(current.status, 0), _RANK.get(change.status, 0)
    if new < held or (new == held and held > 0):
        return None
    return change


def status_changes(items: Iterable[StatusChange | Sequence[object]]) -> list[StatusChange]:
    """``items`` as StatusChange records. The older ``(campaign, recipient, status, reason,
    until)`` tuples are still read, so a caller or a stored entry of that form keeps working."""
    changes: list[StatusChange] = []
    for item in items:
        if isinstance(item, StatusChange):
            changes.append(item)
        else:
            campaign, recipient, status, reason, until = item
            changes.append(
                StatusChange(
                    campaign=str(campaign),
                    recipient=str(recipient),
                    status=str(status),
                    reason=None if reason is None else str(reason),
                    until=None if until is None else float(until),  # type: ignore[arg-type]
                )
            )
    return changes


def check_campaign_status(event: Event, campaign_status: str | None) -> None:
    """Refuse a campaign-wide state change that is not one or names no campaign."""
    if campaign_status is not None and (
        campaign_status not in CAMPAIGN_STATES or event.campaign is None
    ):
        raise ValueError(f"campaign status {campaign_status!r} needs a campaign event")


# --- the bounce brake ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BrakeRule:
    """When a campaign's hard bounces brake it: more than ``ratio`` x ``window`` bounced
    recipients among its last ``window`` sends (``campaign.brake_window`` and
    ``campaign.brake_ratio``). A ``window`` of 0 turns the brake off."""

    window: int = 50
    ratio: float = 0.05

    @property
    def limit(self) -> float:
        """The number of hard bounces the window may hold without braking."""
        return self.ratio * self.window


def brake_tripped(rule: BrakeRule, *, sends: int, hard_bounces: int) -> bool:
    """Whether ``hard_bounces`` among a campaign's last ``sends`` (at most ``rule.window``)
    brake it.

    The threshold is a count over a full window (more than ratio x window), also while the
    campaign has sent fewer: a young campaign whose first sends bounce is braked early,
    and two bounces among its first three sends do not brake it as a 67 % ratio would.
    Only permanent bounces count (the milter marks those enrollments ``bounced``); soft
    bounces and out-of-office replies change no enrollment to ``bounced``.
    """
    return rule.window > 0 and sends > 0 and hard_bounces > rule.limit


def brake_reason(rule: BrakeRule, *, sends: int, hard_bounces: int) -> str:
    """The reason a braked campaign carries (the proxy's 4xx and the event quote it)."""
    return (
        f"{hard_bounces} hard bounces in its last {sends} sends"
        f" (more than {rule.ratio * 100:g} % of {rule.window})"
    )


def brake_event(
    campaign: str, rule: BrakeRule, *, sends: int, hard_bounces: int, now: float
) -> Event:
    """The ``braked`` event (notified) recorded when a campaign is braked."""
    return Event(
        kind=BRAKED,
        created_at=now,
        campaign=campaign,
        actor="replytrack",
        detail={
            "reason": brake_reason(rule, sends=sends, hard_bounces=hard_bounces),
            "scope": "campaign",
            "hard_bounces": hard_bounces,
            "sends": sends,
            "window": rule.window,
            "ratio": rule.ratio,
            "release": f"replytrack resume --campaign {campaign}",
        },
    )


def hash_only_entry(
    held: Iterable[Suppression], digest: str, *, actor: str, now: float
) -> tuple[str, str, str | None, str | None, float]:
    """The (kind, digest, reason, actor, created_at) of the do-not-contact entry that stands
    for an erased address: the oldest of its ``held`` entries keeps its reason, actor and
    time; with none, the erasure itself is the reason."""
    first = min(held, key=lambda e: (e.created_at, e.id or 0), default=None)
    if first is None:
        return (DNC_ADDRESS, digest, "erased on request", actor, now)
    return (DNC_ADDRESS, digest, first.reason, first.actor, first.created_at)
