"""What the proxy, the milter and the CLI need from a store, independent of the backend.

The embedded backend is SQLite (``replytrack.store.sqlite``); a PostgreSQL backend for
multi-host sites implements the same interface. Records are plain dataclasses; times are
UNIX seconds (float, UTC); addresses are lowercase; Message-IDs carry no angle brackets.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
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
CAMPAIGN_STATES = (ACTIVE, STOPPED)
CAMPAIGN_STOPPED = "campaign stopped"

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

# Event kinds. The first six are inbound verdicts; the rest are actions on enrollments.
EVENT_KINDS = (
    "reply",
    "auto_reply",
    "bounce",
    "receipt",
    "feedback",
    "unrelated",
    "stopped",
    "resumed",
    "paused",
    "suppressed",
)


def iso_time(ts: float | None) -> str | None:
    """A UNIX time as ISO 8601 UTC with seconds precision (``2026-11-25T20:06:17Z``)."""
    if ts is None:
        return None
    stamp = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


class StoreError(Exception):
    """The store could not do what was asked (locked, read-only, full, corrupt)."""


class StoreLocked(StoreError):
    """Another writer holds the store and this caller asked not to wait; nothing was written."""


@dataclass(frozen=True)
class OutboundRecipient:
    """One recipient of an outbound mail and how it was addressed."""

    address: str
    role: str  # "to", "cc" or "bcc" (envelope only)
    envelope: bool  # named in RCPT TO
    status: str = "sent"  # "sent", "suppressed", "refused" (upstream refused it)
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
    status: str  # "relayed" or "suppressed"
    recipients: tuple[OutboundRecipient, ...]
    created_at: float
    upstream_reply: str | None = None


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


class Store(abc.ABC):
    """The store interface. Writes are short transactions; every method is thread-safe."""

    # --- outbound -------------------------------------------------------------------------
    @abc.abstractmethod
    def blocked_enrollments(self, campaign: str, addresses: Iterable[str]) -> dict[str, Enrollment]:
        """Enrollments of these addresses in ``campaign`` that block the next mail.

        When the whole campaign is stopped, every address is blocked: each gets a
        ``stopped`` enrollment (enrolled or not) whose reason starts with CAMPAIGN_STOPPED.
        """

    @abc.abstractmethod
    def record_outbound(self, record: OutboundRecord) -> int:
        """Record a mail, its recipients, the campaign, new enrollments and suppressions.

        One transaction: when this returns the record is committed. Returns the row id.
        A ``relaying`` record (the proxy records before it sends DATA upstream) enrolls its
        recipients at once, like a settled one: whatever happens after the upstream's
        answer, the mail is already inside reply matching and suppression. Its suppression
        events wait for the settling (``relayed``, or ``unconfirmed`` by the sweep), so that
        a refused attempt the client sends again does not count its suppressions twice.
        """

    @abc.abstractmethod
    def set_message_status(self, pk: int, status: str, upstream_reply: str | None) -> None:
        """Settle a ``relaying`` mail as ``relayed`` or ``failed`` with the upstream's reply.

        For a relayed mail this is bookkeeping (and its suppression events). A ``failed``
        one (the upstream refused it; the client keeps it and may send it again) takes back
        the enrollments it made that are still ``active`` and that no other mail of the
        campaign, not failed, backs.
        """

    @abc.abstractmethod
    def reconcile_relaying(self, older_than: float) -> int:
        """Mark mails still ``relaying`` that were recorded before ``older_than`` as
        ``unconfirmed``: the proxy died or lost the store mid-transaction, so the upstream
        may have taken them. They stay in matching and suppression and count as sent.
        Returns how many were marked."""

    @abc.abstractmethod
    def count_relaying(self, older_than: float) -> int:
        """How many mails recorded before ``older_than`` are still ``relaying``."""

    # --- inbound --------------------------------------------------------------------------
    @abc.abstractmethod
    def find_sent(self, message_ids: Sequence[str]) -> list[SentMessage]:
        """Recorded mails whose stamped or original Message-ID is among ``message_ids``."""

    @abc.abstractmethod
    def enrollments_of(self, address: str) -> list[Enrollment]:
        """All enrollments of one recipient address."""

    @abc.abstractmethod
    def enrollments(
        self,
        *,
        campaign: str | None = None,
        recipient: str | None = None,
        domain: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[Enrollment]:
        """Enrollments filtered by campaign, recipient, recipient domain and status (one
        status or any of several), ordered by campaign and recipient."""

    @abc.abstractmethod
    def last_message_to(self, address: str, campaign: str | None = None) -> SentMessage | None:
        """The newest recorded mail sent to ``address`` (in ``campaign`` when given)."""

    @abc.abstractmethod
    def record_event(
        self,
        event: Event,
        *,
        dedupe_key: str | None = None,
        set_status: Sequence[tuple[str, str, str, str | None, float | None]] = (),
        notify: bool = True,
        campaign_status: str | None = None,
    ) -> int | None:
        """Record an event and change enrollments in one transaction.

        ``set_status`` holds ``(campaign, recipient, status, reason, until)`` changes.
        ``campaign_status`` (one of CAMPAIGN_STATES) sets the state of the event's campaign
        as a whole, with the event's ``detail["reason"]``, time and actor.
        With ``dedupe_key`` an event already recorded under that key is not recorded again
        and nothing changes: the method returns None. ``notify`` queues it in the outbox.
        """

    @abc.abstractmethod
    def remember_ooo(self, address: str, until: float) -> None:
        """Remember that ``address`` is out of office until ``until`` (across campaigns)."""

    @abc.abstractmethod
    def ooo_until(self, address: str) -> float | None:
        """When ``address`` is back, if we know they are away."""

    @abc.abstractmethod
    def reactivate_due(self, now: float) -> int:
        """Turn paused enrollments whose date has passed active again; returns how many."""

    # --- listing ---------------------------------------------------------------------------
    @abc.abstractmethod
    def messages(
        self,
        *,
        campaign: str | None = None,
        since: float | None = None,
        limit: int | None = None,
        status: str | None = None,
    ) -> list[SentMessage]:
        """Recorded mails, newest first, with their recipients (``status``: one state only)."""

    @abc.abstractmethod
    def events(
        self,
        *,
        kind: str | None = None,
        campaign: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Events, newest first."""

    @abc.abstractmethod
    def campaign_stats(self, campaign: str | None = None) -> list[CampaignStats]:
        """Counts per campaign."""

    # --- notify outbox -----------------------------------------------------------------------
    @abc.abstractmethod
    def claim_outbox(
        self, owner: str, *, now: float, lease_seconds: float, limit: int = 1
    ) -> list[OutboxItem]:
        """Lease up to ``limit`` due, undelivered, live outbox rows to ``owner``.

        A row leased to another sender is not handed out until its lease expires, so two
        senders never deliver the same row at once; a sender that died loses its lease.
        """

    @abc.abstractmethod
    def mark_outbox_url_delivered(self, outbox_id: int, url: str, now: float) -> None:
        """Remember that ``url`` answered 2xx for this row (it is not posted there again)."""

    @abc.abstractmethod
    def finish_outbox_attempt(
        self,
        outbox_id: int,
        owner: str,
        *,
        now: float,
        delivered: bool,
        next_attempt_at: float | None = None,
        error: str | None = None,
        dead: bool = False,
    ) -> None:
        """Count one attempt, release the lease, and mark the row delivered, dead or due later."""

    @abc.abstractmethod
    def retry_dead_outbox(self, now: float) -> int:
        """Give every dead outbox row a fresh set of attempts, due now; returns how many."""

    @abc.abstractmethod
    def outbox_counts(self, now: float | None = None) -> dict[str, int]:
        """Outbox rows by state: ``pending`` (not delivered, not dead), ``due``, ``dead``,
        ``delivered``."""

    # --- maintenance ---------------------------------------------------------------------
    @abc.abstractmethod
    def check_writable(self) -> None:
        """Raise StoreError unless a write really reaches the store (committed, then undone)."""

    @abc.abstractmethod
    def prune(self, before: float, *, dry_run: bool = False) -> dict[str, int]:
        """Drop messages, events and delivered or dead outbox rows older than ``before``.

        Events whose notification is still pending are kept. Returns counts per table.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close this thread's connection (other threads close theirs on exit)."""

    def close_all(self) -> None:
        """Close every thread's connection (when a command ends, at shutdown)."""
        self.close()

    @contextmanager
    def session(self, *, deadline: float | None = None) -> Iterator[None]:
        """Run the block's calls on one connection, given back at the end, within ``deadline``.

        For callers on libmilter's C threads, where pymilter gives each milter connection a
        Python thread state of its own, so per-thread connections would be opened for every
        SMTP connection. ``deadline`` is a ``time.monotonic()`` value; a
        backend that can interrupt a statement still running then raises StoreError. The
        default does nothing special.
        """
        yield

    def nonblocking(self) -> None:
        """From now on, this thread's writes never wait: one that finds another writer
        holding the store raises StoreLocked at once, and this thread's commits leave the
        write-ahead log to :meth:`checkpoint`. For an event loop that tries its store calls
        inline and hands them to a thread only when they would wait. Default: no change
        (writes wait as usual)."""
        return None

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the store file (nothing where there is none)."""
        return None
