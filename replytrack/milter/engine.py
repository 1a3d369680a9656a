"""The milter's shell around the pure decision: the store reads before it, the writes after.

One inbound mail takes three steps, each a method here:

1. :meth:`Engine.screen` at end of headers: is the mail any of our business (a match on
   its threading headers, an enrolled sender), and does the body matter? Most mail is
   accepted here.
2. :meth:`Engine.decide` at end of message: classify, read the facts the decision needs
   (:meth:`Engine.facts`), and ask :func:`~replytrack.milter.decision.decide`.
3. :meth:`Engine.apply`: record the verdict's event and enrollment changes.

The milter adapter runs all three; ``replytrack check`` the first two (no side effects);
journal replay all three in one go (:meth:`Engine.run`). Store errors leave this
module untouched so the caller can journal the mail (inbound fails open, nothing is lost).
Without a store (``check`` with none) there are no facts: nothing matches.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from replytrack import classify as classifier
from replytrack import unsubscribe
from replytrack.config import Config
from replytrack.headers import extract_msgids
from replytrack.milter import decision, monitor, policy
from replytrack.milter import match as matching
from replytrack.milter.decision import NO_FACTS, Facts, Verdict
from replytrack.milter.inbound import Inbound, outside_copies, weak_sender
from replytrack.store.base import Store
from replytrack.store.errors import StoreError
from replytrack.store.records import ACTIVE, PAUSED, Enrollment, SentMessage
from replytrack.tokens import Keyring, verify

__all__ = ["Engine", "Inbound", "Screening", "Verdict"]

log = logging.getLogger("replytrack.milter")


@dataclass(frozen=True)
class Screening:
    """What end of headers found out: enough to accept at once, or what to do at the end."""

    skip_reason: str | None = None  # never a reply: own mail, authenticated, internal
    # The Message-IDs a mailto unsubscribe names (verified tokens): recorded at end of
    # headers (skip_reason is then "unsubscribe-mail").
    unsubscribes: tuple[str, ...] = ()
    match: matching.Match | None = None
    # The sender's active and paused enrollments (weak evidence), active first.
    weak: tuple[Enrollment, ...] = ()
    evidence: tuple[str, ...] = ()
    strip_count: int = 0  # copies of our header from outside, to remove
    needs_body: bool = False  # asked only of mail that nothing matched
    store_failed: bool = False

    @property
    def accept_now(self) -> bool:
        """True when nothing can follow from this mail: accept at end of headers."""
        if self.strip_count or self.store_failed:
            return False
        if self.skip_reason:
            return True
        return self.match is None and not self.weak and not self.needs_body

    @property
    def wants_body(self) -> bool:
        """True when the body must be read before deciding."""
        if self.skip_reason:
            return False
        return self.store_failed or self.needs_body or self.match is not None or bool(self.weak)


class Engine:
    """Screens, decides and records inbound mail against the store."""

    def __init__(self, config: Config, keyring: Keyring, store: Store | None) -> None:
        self.config = config
        self.keyring = keyring
        self.store = store
        self.domain = config.domain.lower()
        # Mail to unsubscribe+TOKEN@ this address is a mailto unsubscribe (List-Unsubscribe).
        self.unsubscribe_address = config.unsubscribe_address or f"unsubscribe@{self.domain}"

    # --- end of headers ----------------------------------------------------------------------
    def prescreen(self, msg: Inbound) -> Screening | None:
        """The pure part of screening: the screening of mail that is never a reply (own,
        authenticated, a mailto unsubscribe, internal), or None."""
        reason, unsubscribes = self._never_a_reply(msg)
        if reason is None:
            return None
        return Screening(
            reason,
            unsubscribes=unsubscribes,
            evidence=(reason,),
            strip_count=outside_copies(msg.headers),
        )

    def _never_a_reply(self, msg: Inbound) -> tuple[str | None, tuple[str, ...]]:
        message_id = msg.header("Message-ID")
        for own in extract_msgids(message_id, limit=1) if message_id else []:
            if matching.looks_like_our_token(own, self.domain) and verify(self.keyring, own):
                # Our own outbound mail (a follow-up step quotes the earlier ones).
                return "own-message", ()
        if msg.authenticated:
            return "authenticated-submission", ()
        unsubscribes = self.unsubscribe_requests(msg)
        if unsubscribes or unsubscribe.only_to_unsubscribe(
            msg.recipients, address=self.unsubscribe_address
        ):
            return "unsubscribe-mail", tuple(unsubscribes)
        internal = self.config.milter_internal_domains
        if internal:
            if policy.is_internal(msg.sender, internal):
                return "internal-sender", ()
            if msg.envelope and policy.is_internal(msg.envelope, internal):
                return "internal-sender", ()
        return None, ()

    def screen(self, msg: Inbound, *, strict: bool = False) -> Screening:
        """Decide at end of headers whether the mail concerns us and whether the body matters.

        Store reads failing set ``store_failed`` (the adapter journals the mail) unless
        ``strict``, when the StoreError propagates (replay, check).
        """
        skip = self.prescreen(msg)
        if skip is not None:
            return skip
        screened = matching.screen(msg.headers, keyring=self.keyring, domain=self.domain)
        evidence = list(screened.evidence)
        found: matching.Match | None = None
        weak: tuple[Enrollment, ...] = ()
        store_failed = False
        if self.store is not None:
            try:
                found = matching.match(screened, self.store.find_sent)
                if found is None:
                    found = matching.match_thread_index(msg.headers, self.store.find_by_thread_guid)
                config = self.config
                if found is None and (config.milter_weak_match or config.milter_subject_match):
                    sender = weak_sender(msg)
                    if config.milter_weak_match:
                        weak = self._weak_enrollments(sender, evidence)
                    if not weak and config.milter_subject_match:
                        found = self._subject_match(msg, sender)
            except StoreError as exc:
                if strict:
                    raise
                log.warning(
                    "qid=%s store read failed at end of headers: %s", msg.queue_id or "-", exc
                )
                store_failed = True
                evidence.append("store-unavailable")
        # The body of mail that is ours is read anyway: only the rest asks the classifier.
        needs_body = False
        if found is None and not weak and not store_failed:
            try:
                needs_body = classifier.needs_body(msg.headers, envelope_from=msg.envelope)
            except Exception:  # the classifier must never cost us a mail
                needs_body = True
        return Screening(
            match=found,
            weak=weak,
            evidence=tuple(evidence),
            strip_count=outside_copies(msg.headers),
            needs_body=needs_body,
            store_failed=store_failed,
        )

    def _weak_enrollments(self, sender: str | None, evidence: list[str]) -> tuple[Enrollment, ...]:
        """The enrollments weak evidence names: ``sender``'s (:func:`weak_sender`)."""
        assert self.store is not None
        if sender is None:
            evidence.append("weak:envelope-differs-from-from")
            return ()
        # A paused person (out of office) writing fresh mail is back and replying too.
        # Active ones first; one query for both states.
        found = self.store.enrollments(recipient=sender, status=(ACTIVE, PAUSED))
        found.sort(key=lambda e: e.status != ACTIVE)
        return tuple(found[: decision.MAX_CAMPAIGNS])

    def _subject_match(self, msg: Inbound, sender: str | None) -> matching.Match | None:
        """A header-less answer from another address at a campaign mail's domain, by its
        subject (the weakest evidence). Only when the envelope sender is the From address:
        without threading headers the sender is all there is, and a From alone is anyone's
        to write."""
        assert self.store is not None
        if sender is None:
            return None
        domain = matching.subject_domain(msg.headers, sender, self.config.milter_freemail_domains)
        if domain is None:
            return None
        store = self.store
        since = msg.received_at - self.config.milter_subject_match_days * 86400

        def recent(at: str) -> list[SentMessage]:
            return store.recent_campaign_mail(at, since=since)

        return matching.match_subject(sender, msg.header("Subject"), domain, recent)

    # --- end of message -------------------------------------------------------------------
    def decide(self, msg: Inbound, screening: Screening, *, now: float | None = None) -> Verdict:
        """The verdict on a screened mail (store reads only; StoreError propagates)."""
        now = msg.received_at if now is None else now
        if screening.skip_reason:
            return Verdict(kind="unrelated", sender=msg.sender, evidence=screening.evidence)
        classification = self.classify(msg, now)
        facts = self.facts(msg, screening, classification)
        return decision.decide(
            msg, classification, facts, self.config, now=now, evidence=screening.evidence
        )

    def classify(self, msg: Inbound, now: float) -> classifier.Classification:
        """The classifier's view of the mail; a fault in it is a person's mail (fail open)."""
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        try:
            return classifier.classify(
                msg.headers, msg.body, envelope_from=msg.envelope, today=today
            )
        except Exception as exc:
            return classifier.Classification("human", (f"classifier-error:{type(exc).__name__}",))

    def facts(
        self, msg: Inbound, screening: Screening, classification: classifier.Classification
    ) -> Facts:
        """Read what the decision on this mail needs from the store (StoreError propagates)."""
        store = self.store
        if store is None:
            return NO_FACTS
        found = screening.match
        if found is None and classification.referenced_ids:
            # A bounce or receipt names our mail in its body (the returned headers part).
            rescreen = matching.screen(
                [],
                keyring=self.keyring,
                domain=self.domain,
                extra_ids=classification.referenced_ids,
            )
            found = matching.match(rescreen, store.find_sent)
        if found is None and screening.weak:
            weak_sent = [
                last
                for e in screening.weak
                if (last := store.last_message_to(e.recipient, e.campaign)) is not None
            ]
            if weak_sent:
                found = matching.Match(
                    method=matching.WEAK,
                    sent=tuple(weak_sent),
                    evidence=(f"weak:enrolled:{msg.sender}",),
                )
        wanted = decision.reads(msg.sender, classification, found, self.config)
        # The sender's enrollments that weak evidence named were read at end of headers.
        known = {(e.campaign, e.recipient): e for e in screening.weak}
        enrollments: list[Enrollment] = []
        for campaign, address in wanted.pairs:
            if (campaign, address) in known:
                enrollments.append(known[campaign, address])
            else:
                enrollments += store.enrollments(campaign=campaign, recipient=address, limit=1)
        for campaign, domain in wanted.domains:
            for status in (ACTIVE, PAUSED):
                enrollments += store.enrollments(
                    campaign=campaign, domain=domain, status=status, limit=policy.MAX_STOPS
                )
        for address in wanted.addresses:
            enrollments += store.enrollments_of(address)
        return Facts(match=found, enrollments=tuple(enrollments))

    # --- writing --------------------------------------------------------------------------
    def apply(self, verdict: Verdict, mode: str | None = None) -> bool:
        """Record the verdict's event and enrollment changes; False when already recorded.
        ``mode``: the one the mail arrived under (``Inbound.mode``; None: the configured one).

        Raises StoreError when the store cannot take it (the caller journals the mail).
        """
        if verdict.event is None or self.store is None:
            return False
        if monitor.active(self.config, mode):  # the event only (milter/monitor.py)
            return monitor.record(self.store, verdict)
        event_id = self.store.record_event(
            verdict.event,
            dedupe_key=verdict.dedupe_key,
            set_status=verdict.set_status,
            notify=verdict.notify,
        )
        if verdict.ooo is not None:
            # Also for an event already recorded: a replay after the event was written but
            # this was not must still remember the absence (an upsert, so twice is once).
            self.store.remember_ooo(*verdict.ooo)
        if verdict.kind == "reply" and verdict.intent and verdict.intent.intent == "unsubscribe":
            # A written "remove me": its writer goes on the do-not-contact list and stops in
            # every campaign (also on a replay: the unsubscribe is keyed, so twice is once).
            unsubscribe.apply(
                self.store,
                verdict.matched[0],
                via="reply",
                requester=verdict.sender,
                queue_id=verdict.event.queue_id,
                only_requester=True,
            )
        return event_id is not None

    def run(self, msg: Inbound) -> tuple[Verdict, bool]:
        """Screen, decide and record in one go, as the milter does across its callbacks
        (journal replay): the verdict, and whether its event was recorded now."""
        screening = self.screen(msg, strict=True)
        self.record_unsubscribes(msg, screening.unsubscribes)
        verdict = self.decide(msg, screening)
        return verdict, self.apply(verdict, msg.mode)

    def process(self, msg: Inbound) -> Verdict:
        """:meth:`run`'s verdict (the journal's replayer, tests)."""
        return self.run(msg)[0]

    # --- unsubscribe by mail ---------------------------------------------------------------
    def unsubscribe_requests(self, msg: Inbound) -> list[str]:
        """The Message-IDs this mail unsubscribes from: envelope recipients of the form
        ``unsubscribe+TOKEN@…`` whose token verifies (forged ones count for nothing)."""
        return unsubscribe.recognise(
            msg.recipients,
            address=self.unsubscribe_address,
            keyring=self.keyring,
            domain=self.domain,
        )

    def record_unsubscribes(self, msg: Inbound, message_ids: Sequence[str]) -> int:
        """Put the sender of ``msg``, a mailto unsubscribe from ``message_ids`` (what
        screening found: :attr:`Screening.unsubscribes`), on the do-not-contact list and
        stop them in every campaign; safe to repeat (replay). Raises StoreError when the
        store cannot take it (the caller journals the mail). Returns how many unsubscribes
        were recorded."""
        if not message_ids or self.store is None:
            return 0
        done = unsubscribe.apply_all(
            self.store, message_ids, via="mailto", requester=msg.sender, queue_id=msg.queue_id
        )
        return sum(1 for outcome in done if outcome.recorded)
