"""The store's domain records and states: what proxy, milter and CLI read and write.

Plain frozen dataclasses, the same whatever the backend. Times are UNIX seconds (float,
UTC); addresses are lowercase; Message-IDs carry no angle brackets.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

# Enrollment states. Only "active" (and "paused" once its date has passed) lets mail through.
ACTIVE = "active"
STOPPED = "stopped"
PAUSED = "paused"
BOUNCED = "bounced"
ENROLLMENT_STATES = (ACTIVE, STOPPED, PAUSED, BOUNCED)
# A campaign is "active" or, once stopped as a whole, "stopped": then none of its mail goes
# out, to enrolled recipients or new ones. blocked_enrollments reports such a stop as a
# stopped enrollment whose reason starts with CAMPAIGN_STOPPED.
CAMPAIGN_STOPPED = "campaign stopped"
# A campaign whose recent sends bounce too often is "braked" by the store on its own
# (rules.brake_tripped): its mail is deferred (4xx), not suppressed, until `replytrack
# resume --campaign`. blocked_enrollments reports it as a paused enrollment without an end,
# whose reason starts with CAMPAIGN_BRAKED.
BRAKED = "braked"
CAMPAIGN_STATES = (ACTIVE, STOPPED, BRAKED)
CAMPAIGN_BRAKED = "campaign braked"

# States of a recorded outbound mail. "relaying" while the upstream has not answered DATA;
# "unconfirmed" when the proxy never learned the answer (the connection broke or timed out,
# the proxy died, the store failed as the answer came), so the mail may have gone out: like
# "relayed" it counts as sent and keeps its enrollments. "failed": the upstream refused it.
RELAYING = "relaying"
RELAYED = "relayed"
UNCONFIRMED = "unconfirmed"
FAILED = "failed"
SUPPRESSED = "suppressed"
MESSAGE_STATES = (RELAYING, RELAYED, UNCONFIRMED, FAILED, SUPPRESSED)

# States of one recipient of a recorded mail.
RECIPIENT_SENT = "sent"
RECIPIENT_SUPPRESSED = "suppressed"
RECIPIENT_REFUSED = "refused"

# Event kinds. The first six are inbound verdicts (the milter's, made without a person);
# the rest are actions on enrollments (by hand, or the proxy's suppressions). An
# ``unsubscribe`` is a person's own request (by mail or one click): its stops apply like a
# change by hand. ``erased`` records a ``replytrack forget``, without the address.
INBOUND_KINDS = ("reply", "auto_reply", "bounce", "receipt", "feedback", "unrelated")
EVENT_KINDS = (
    *INBOUND_KINDS,
    "stopped",
    "resumed",
    "paused",
    "suppressed",
    "unsubscribe",
    "erased",
    "braked",
)

# The do-not-contact list: whole addresses or whole domains, honoured by every campaign. A
# blocked recipient's reason starts with DO_NOT_CONTACT (the proxy's 550 names it).
DNC_ADDRESS = "address"
DNC_DOMAIN = "domain"
DNC_KINDS = (DNC_ADDRESS, DNC_DOMAIN)
DO_NOT_CONTACT = "do-not-contact"


def iso_time(ts: float | None) -> str | None:
    """A UNIX time as ISO 8601 UTC with seconds precision (``2026-11-25T20:06:17Z``)."""
    if ts is None:
        return None
    stamp = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


@dataclass(frozen=True)
class OutboundRecipient:
    """One recipient of an outbound mail and how it was addressed."""

    address: str
    role: str  # "to", "cc" or "bcc" (envelope only)
    envelope: bool  # named in RCPT TO
    status: str = RECIPIENT_SENT  # "sent", "suppressed", "refused" (upstream refused it)
    reason: str | None = None


@dataclass(frozen=True)
class OutboundRecord:
    """Everything the proxy records about one relayed (or fully suppressed) mail."""

    message_id: str
    original_message_id: str | None
    campaign: str | None
    step: int | None
    sender: str
    from_address: str | None
    subject: str | None
    size: int
    status: str  # MESSAGE_STATES
    recipients: tuple[OutboundRecipient, ...]
    created_at: float
    upstream_reply: str | None = None
    # A threaded follow-up (X-ReplyTrack-Thread): the Outlook Thread-Index root (22 bytes,
    # base64) to keep on this recipient's enrollment, unless it has one already.
    thread: ThreadRoot | None = None


@dataclass(frozen=True)
class ThreadRoot:
    """The Thread-Index root of one enrollment's thread (``proxy.threading``)."""

    recipient: str
    index: str  # base64 of the 22-byte header block


@dataclass(frozen=True)
class ThreadHistory:
    """What a threaded follow-up needs to know of the earlier steps to one recipient."""

    # Stamped Message-IDs of the campaign's mails sent to the recipient, oldest first, with
    # their times (UNIX seconds).
    message_ids: tuple[str, ...] = ()
    sent_at: tuple[float, ...] = ()
    first_subject: str | None = None
    # The enrollment's Thread-Index root (base64), once a threaded step set it.
    index: str | None = None


@dataclass(frozen=True)
class SentMessage:
    """A recorded outbound mail, as the milter and the CLI read it."""

    id: int
    message_id: str
    original_message_id: str | None
    campaign: str | None
    step: int | None
    sender: str
    from_address: str | None
    subject: str | None
    created_at: float
    status: str
    recipients: tuple[OutboundRecipient, ...] = ()


@dataclass(frozen=True)
class Enrollment:
    """A recipient's place in a campaign."""

    campaign: str
    recipient: str
    status: str
    reason: str | None
    since: float
    until: float | None = None
    updated_by: str | None = None

    def blocks_sending(self, now: float) -> bool:
        """True when the next campaign mail must not go to this recipient."""
        if self.status == PAUSED:
            return self.until is None or self.until > now
        return self.status in (STOPPED, BOUNCED)


@dataclass(frozen=True)
class StatusChange:
    """One enrollment to set, recorded with an event (``Store.record_event``).

    Whether it wins over the enrollment's current state is
    :func:`replytrack.store.rules.settle_status`'s call.
    """

    campaign: str
    recipient: str
    status: str  # ENROLLMENT_STATES
    reason: str | None = None
    until: float | None = None  # a pause's end


@dataclass(frozen=True)
class CampaignStop:
    """A campaign stopped as a whole: who stopped it, when and why."""

    reason: str | None
    since: float | None
    updated_by: str | None
    status: str = STOPPED  # or BRAKED


@dataclass(frozen=True)
class Event:
    """Something that happened: an inbound verdict or an action on enrollments."""

    kind: str
    created_at: float
    campaign: str | None = None
    message_id: str | None = None  # the outbound mail it concerns (stamped ID)
    inbound_message_id: str | None = None
    sender: str | None = None
    recipient: str | None = None
    relation: str | None = None  # original_recipient | cc | other_address | same_domain | other
    evidence: tuple[str, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)
    queue_id: str | None = None
    actor: str | None = None
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The event as ``replytrack events --json`` prints it and webhooks receive it (the
        keys are part of both contracts)."""
        return {
            "id": self.id,
            "created_at": iso_time(self.created_at),
            "kind": self.kind,
            "campaign": self.campaign,
            "message_id": self.message_id,
            "inbound_message_id": self.inbound_message_id,
            "sender": self.sender,
            "recipient": self.recipient,
            "relation": self.relation,
            "evidence": list(self.evidence),
            "detail": self.detail,
            "queue_id": self.queue_id,
            "actor": self.actor,
            # A person's reply: what it means (also in detail, with its evidence).
            "intent": self.detail.get("intent"),
        }


@dataclass(frozen=True)
class Suppression:
    """One entry of the do-not-contact list.

    An address entry keeps the address and, when the store has a hasher, a keyed hash of
    it (``digest``). ``replytrack forget`` erases the address and keeps the digest only, so
    the person stays unmailable while the store no longer says who they are: then
    ``value`` is None.
    """

    kind: str  # DNC_KINDS
    value: str | None  # the address or domain (lowercase); None once an address is erased
    reason: str | None
    actor: str | None
    created_at: float
    digest: str | None = None
    id: int | None = None

    @property
    def erased(self) -> bool:
        """Whether only the keyed hash of the address is left."""
        return self.value is None

    def to_json(self) -> dict[str, Any]:
        """The entry as ``replytrack suppress list --json`` prints it."""
        return {
            "kind": self.kind,
            "address": self.value if self.kind == DNC_ADDRESS else None,
            "domain": self.value if self.kind == DNC_DOMAIN else None,
            "erased": self.erased,
            "reason": self.reason,
            "actor": self.actor,
            "created_at": iso_time(self.created_at),
        }


@dataclass(frozen=True)
class CampaignStats:
    """Per-campaign counts for ``replytrack campaigns``."""

    campaign: str
    sent: int
    recipients: int
    replied: int
    stopped: int
    bounced: int
    paused: int
    active: int
    suppressed: int
    first_sent: float | None
    last_sent: float | None
    status: str = ACTIVE  # the campaign's own state (CAMPAIGN_STATES)
    reason: str | None = None


@dataclass(frozen=True)
class OutboxItem:
    """A queued notification claimed by a sender: the event and what was delivered so far."""

    id: int
    event: Event
    attempts: int
    created_at: float
    delivered_urls: frozenset[str] = frozenset()
