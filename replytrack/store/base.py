"""What the proxy, the milter and the CLI need from a store, whatever the backend.

One interface, two engines: ``replytrack.store.sqlite`` (the embedded default, one file)
and ``replytrack.store.postgresql`` (one database shared by several hosts). The records it
speaks in live in :mod:`replytrack.store.records`, the rules both engines follow in
:mod:`replytrack.store.rules`, the errors in :mod:`replytrack.store.errors`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from replytrack.store.monitor_counts import MonitorCounts
from replytrack.store.records import (
    CampaignStats,
    Enrollment,
    Event,
    OutboundRecord,
    OutboxItem,
    SentMessage,
    StatusChange,
    Suppression,
    ThreadHistory,
)
from replytrack.store.rules import BrakeRule

#: ``hasher(address)``: keyed hashes of an address, the current key's first
#: (:func:`replytrack.do_not_contact.address_hasher`).
AddressHasher = Callable[[str], Sequence[str]]


class Store(abc.ABC):
    """The store interface. Writes are short transactions; every method is thread-safe and
    bounded in time; failures raise :class:`~replytrack.store.errors.StoreError`."""

    #: How often (seconds) :meth:`upkeep` wants to run while a daemon serves mail; None:
    #: never.
    upkeep_interval: float | None = None
    #: Whether calls may run on threads Python did not start (libmilter's C threads, on
    #: which pymilter moves one borrowed thread state). False: the milter hands each call
    #: to threads of its own.
    runs_on_foreign_threads: bool = True
    #: Hashes addresses for the do-not-contact list (given at open, or by
    #: :meth:`use_hasher`). Without one, entries are kept and matched by address and
    #: domain only, and erased entries (hash only) cannot be matched.
    hasher: AddressHasher | None = None

    #: When hard bounces brake a campaign (``campaign.brake_window``/``brake_ratio``),
    #: checked by :meth:`record_event` as it records a bounce; the defaults until
    #: :meth:`use_brake` says otherwise.
    brake: BrakeRule = BrakeRule()

    def use_hasher(self, hasher: AddressHasher | None) -> None:
        """Hash do-not-contact addresses with ``hasher`` from now on."""
        self.hasher = hasher

    def use_brake(self, rule: BrakeRule) -> None:
        """Brake campaigns by ``rule`` from now on (the milter's settings)."""
        self.brake = rule

    # --- outbound -------------------------------------------------------------------------
    @abc.abstractmethod
    def blocked_enrollments(self, campaign: str, addresses: Iterable[str]) -> dict[str, Enrollment]:
        """Enrollments of these addresses in ``campaign`` that block the next mail
        (:func:`replytrack.store.rules.blocked_recipients`).

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
    def thread_history(self, campaign: str, recipient: str) -> ThreadHistory:
        """The earlier mails of ``campaign`` sent to ``recipient`` (relayed or unconfirmed,
        oldest first, at most the first and the latest few) and the enrollment's
        Thread-Index root: what a threaded follow-up is built from (``proxy.threading``)."""

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
    def find_by_thread_guid(self, guid: bytes, *, limit: int = 20) -> list[SentMessage]:
        """The newest mail of each threaded enrollment whose Thread-Index root carries the
        conversation GUID ``guid`` (16 bytes), newest first: Outlook's thread key as evidence."""

    @abc.abstractmethod
    def recent_campaign_mail(
        self, domain: str, *, since: float, limit: int = 200
    ) -> list[SentMessage]:
        """Campaign mails sent (relayed or unconfirmed) since ``since`` to an enrolled
        recipient at ``domain``, newest first: what a header-less answer from that domain
        may answer."""

    def enrollments_of(self, address: str) -> list[Enrollment]:
        """All enrollments of one recipient address."""
        return self.enrollments(recipient=address)

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
        set_status: Sequence[StatusChange] = (),
        notify: bool = True,
        campaign_status: str | None = None,
    ) -> int | None:
        """Record an event and change enrollments in one transaction.

        Each of ``set_status`` is applied as :func:`replytrack.store.rules.settle_status`
        decides against the enrollment's state in that transaction: by hand it always
        applies; the milter's own changes never weaken a stronger state (a bounce after a
        reply leaves the enrollment stopped; the bounce event is recorded all the same).
        ``campaign_status`` (one of CAMPAIGN_STATES) sets the state of the event's campaign
        as a whole, with the event's ``detail["reason"]``, time and actor.
        A change that marks an enrollment ``bounced`` checks :attr:`brake` on its campaign
        in the same transaction: past it, an active campaign becomes ``braked`` and a
        ``braked`` event (notified) says why.
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

    # --- do-not-contact ----------------------------------------------------------------------
    @abc.abstractmethod
    def add_suppressions(self, entries: Sequence[Suppression]) -> int:
        """Put entries on the do-not-contact list in one transaction; an entry already
        there (same address, hash or domain) is kept as it was. Address entries get their
        keyed hash when the store has a hasher. Returns how many were new."""

    @abc.abstractmethod
    def remove_suppression(self, kind: str, value: str) -> bool:
        """Take an address or domain off the list (an erased address by its address,
        through its hash); False when it was not there."""

    @abc.abstractmethod
    def suppressions(
        self, *, kind: str | None = None, limit: int | None = None
    ) -> list[Suppression]:
        """The list's entries, newest first."""

    @abc.abstractmethod
    def suppressed(self, addresses: Iterable[str]) -> dict[str, Suppression]:
        """Which of ``addresses`` the list covers (by address, keyed hash, domain or parent
        domain), each with the entry that covers it. blocked_enrollments folds this in."""

    @abc.abstractmethod
    def forget(self, address: str, *, actor: str, now: float) -> dict[str, int]:
        """Erase ``address`` from every table and keep it unmailable (``replytrack forget``).

        One transaction: its recipient rows, enrollments, out-of-office memory, events that
        name it (and their notifications not yet sent), mails left with no recipient; its
        do-not-contact entry keeps only the keyed hash (one is added when there was none).
        An ``erased`` event without the address records that it happened. Then the freed
        space is cleared (what that covers depends on the backend). Needs a hasher: raises
        StoreError without one. Returns the number of rows removed per table.
        """

    # --- listing ---------------------------------------------------------------------------
    @abc.abstractmethod
    def messages(
        self,
        *,
        campaign: str | None = None,
        since: float | None = None,
        limit: int | None = None,
        status: str | None = None,
        recipient: str | None = None,
    ) -> list[SentMessage]:
        """Recorded mails, newest first, with their recipients (``status``: one state only;
        ``recipient``: only mails with this address among their recipients)."""

    @abc.abstractmethod
    def events(
        self,
        *,
        kind: str | None = None,
        campaign: str | None = None,
        since: float | None = None,
        limit: int | None = None,
        recipient: str | None = None,
    ) -> list[Event]:
        """Events, newest first (``recipient``: only those concerning this address, as the
        event's recipient, the inbound mail's sender, or among the addresses a stop or
        resume listed)."""

    @abc.abstractmethod
    def campaign_stats(self, campaign: str | None = None) -> list[CampaignStats]:
        """Counts per campaign."""

    @abc.abstractmethod
    def monitor_counts(self, campaign: str | None = None) -> dict[str, MonitorCounts]:
        """What monitor mode let happen, per campaign (only campaigns with some)."""

    @abc.abstractmethod
    def monitored_events(self, campaign: str | None = None) -> list[Event]:
        """The events monitor mode recorded (``detail.monitor``), oldest first."""

    # --- export ----------------------------------------------------------------------------
    # Every row, for ``replytrack export``: an iterator, so that a backend can stream. The
    # default reads through the listing calls.
    def export_messages(
        self, *, campaign: str | None = None, since: float | None = None
    ) -> Iterator[SentMessage]:
        """Every recorded mail (in ``campaign``, recorded since ``since``), newest first."""
        yield from self.messages(campaign=campaign, since=since)

    def export_events(
        self, *, campaign: str | None = None, since: float | None = None
    ) -> Iterator[Event]:
        """Every event (of ``campaign``, since ``since``), newest first."""
        yield from self.events(campaign=campaign, since=since)

    def export_enrollments(
        self, *, campaign: str | None = None, since: float | None = None
    ) -> Iterator[Enrollment]:
        """Every enrollment (in ``campaign``, in its state since ``since``), by campaign and
        recipient."""
        for enrollment in self.enrollments(campaign=campaign):
            if since is None or enrollment.since >= since:
                yield enrollment

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
    def schema_version(self) -> int:
        """The schema version the store holds (0: none yet)."""

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

    # --- how callers with special needs call -------------------------------------------------
    @contextmanager
    def session(self, *, deadline: float | None = None) -> Iterator[None]:
        """Run the block's calls as one piece of bounded work, finished by ``deadline``.

        For the milter, whose callbacks run on libmilter's threads: the store work for one
        mail must end in time whatever the store does (past the deadline a call raises
        StoreError and the mail is journaled), and the block's calls share what the backend
        lends them (a connection) instead of keeping one per milter connection. ``deadline``
        is a ``time.monotonic()`` value. The default does nothing special.
        """
        yield

    def prepare_for_event_loop(self) -> bool:
        """Prepare this thread to call the store from an event loop; True when its calls
        from now on never wait (one that would, raises StoreWouldWait having done nothing),
        so the loop may call inline and hand only those to a thread. False: every call may
        wait, the loop must run each in a thread. Default: False."""
        return False

    def upkeep(self) -> None:
        """Periodic housekeeping, every :attr:`upkeep_interval` seconds, off the event loop.
        Default: nothing."""
        return None
