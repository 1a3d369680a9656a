"""The inbound decision: from envelope, headers and (maybe) body to a verdict, and its
application to the store.

The milter adapter calls :meth:`Engine.screen` at end of headers (is this mail any of our
business? does the body matter?) and :meth:`Engine.decide` plus :meth:`Engine.apply` at end
of message. ``replytrack check`` calls ``screen`` and ``decide`` only (no side effects); the
journal replays mail the store could not take with :meth:`Engine.process`.

Store reads and writes go through the :class:`~replytrack.store.Store` interface; a
:class:`~replytrack.store.StoreError` leaves this module untouched so the caller can
journal the mail (inbound fails open, nothing is lost).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from replytrack import classify as classifier
from replytrack.config import Config
from replytrack.headers import (
    extract_addresses,
    extract_msgids,
    header_parameter,
    normalize_address,
)
from replytrack.milter import match as matching
from replytrack.milter import policy
from replytrack.store.base import Store
from replytrack.store.records import (
    ACTIVE,
    BOUNCED,
    PAUSED,
    STOPPED,
    Enrollment,
    Event,
    SentMessage,
    StatusChange,
)
from replytrack.tokens import Keyring, verify

log = logging.getLogger("replytrack.milter")

HEADER = "X-ReplyTrack"
KINDS = ("reply", "auto_reply", "bounce", "receipt", "feedback", "unrelated")
# Bounds against hostile mail: headers kept per message, failed recipients acted on.
MAX_HEADERS = 1000
MAX_HEADER_BYTES = 512 * 1024
MAX_FAILED = 50
MAX_WEAK_CAMPAIGNS = 20
BODY_LIMIT = 256 * 1024


@dataclass
class Inbound:
    """What the milter knows about one inbound mail: the decision inputs (journaled as is)."""

    # MAIL FROM without brackets; "" is the null sender, None unknown (``check`` on a file).
    envelope_from: str | None
    recipients: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    queue_id: str | None = None
    # The SASL login ({auth_authen}) of an authenticated submission.
    authenticated: str | None = None
    received_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form for the journal (the body base64-encoded)."""
        return {
            "envelope_from": self.envelope_from,
            "recipients": self.recipients,
            "headers": [[n, v] for n, v in self.headers],
            "body": None if self.body is None else base64.b64encode(self.body).decode("ascii"),
            "queue_id": self.queue_id,
            "authenticated": self.authenticated,
            "received_at": self.received_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Inbound:
        """The inverse of :meth:`to_json`."""
        body = data.get("body")
        return cls(
            envelope_from=data.get("envelope_from"),
            recipients=list(data.get("recipients") or []),
            headers=[(str(n), str(v)) for n, v in data.get("headers") or []],
            body=None if body is None else base64.b64decode(body),
            queue_id=data.get("queue_id"),
            authenticated=data.get("authenticated"),
            received_at=float(data.get("received_at") or time.time()),
        )

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None."""
        values = matching.header_values(self.headers, name)
        return values[0] if values else None

    @property
    def sender(self) -> str:
        """The author: the From address, else the envelope sender (lowercase)."""
        from_values = matching.header_values(self.headers, "From")
        addresses = extract_addresses(from_values[:1], limit=1)
        return addresses[0] if addresses else normalize_address(self.envelope_from or "")


@dataclass
class Screening:
    """What end of headers found out: enough to accept at once, or what to do at the end."""

    skip_reason: str | None = None  # never a reply: own mail, authenticated, internal
    match: matching.Match | None = None
    weak: list[Enrollment] = field(default_factory=list)
    forged: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    strip_count: int = 0
    needs_body: bool = False
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


@dataclass
class Verdict:
    """The milter's answer on one mail and everything it changes."""

    kind: str
    sender: str
    evidence: list[str] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)
    method: str | None = None
    campaign: str | None = None
    relation: str | None = None
    return_date: dt.date | None = None
    subtype: str | None = None
    scope: str | None = None
    stopped: list[str] = field(default_factory=list)
    paused_until: float | None = None
    bounced: list[str] = field(default_factory=list)
    event: Event | None = None
    dedupe_key: str | None = None
    set_status: list[StatusChange] = field(default_factory=list)
    notify: bool = False
    ooo: tuple[str, float] | None = None
    strip_count: int = 0
    add_header: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The verdict as ``replytrack check --json`` prints it."""
        return {
            "kind": self.kind,
            "matched": self.matched,
            "evidence": self.evidence,
            "match": self.method,
            "campaign": self.campaign,
            "sender": self.sender,
            "relation": self.relation,
            "subtype": self.subtype,
            "return_date": self.return_date.isoformat() if self.return_date else None,
            "stops": self.stopped,
            "scope": self.scope,
            "paused_until": self.paused_until,
            "bounced": self.bounced,
            "header": self.add_header,
        }


def dedupe_key(msg: Inbound) -> str:
    """One event per inbound mail: its Message-ID, else a hash of sender, date and subject."""
    message_id = msg.header("Message-ID")
    ids = extract_msgids(message_id, limit=1) if message_id else []
    if ids:
        # A raw non-UTF-8 byte arrives as a surrogate escape, which no UTF-8 store can hold:
        # escape it the same way every time so the same mail keeps the same key.
        key = ids[0].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return "inbound:" + key
    basis = "\x00".join(
        [msg.sender, (msg.header("Date") or "").strip(), (msg.header("Subject") or "").strip()]
    )
    return "inbound-hash:" + hashlib.sha256(basis.encode("utf-8", "surrogateescape")).hexdigest()


def never_reply_reason(msg: Inbound) -> str | None:
    """Why this mail cannot be a person's reply whatever the classifier says, or None.

    A safety net under the classifier: the null sender (delivery reports), RFC 3834
    ``Auto-Submitted`` other than ``no``, and ``multipart/report`` are machines speaking.
    """
    if msg.envelope_from is not None and normalize_address(msg.envelope_from) == "":
        return "null-sender"
    auto = (msg.header("Auto-Submitted") or "").strip().lower()
    if auto and auto.split(";")[0].strip() != "no":
        return "auto-submitted"
    content_type = (msg.header("Content-Type") or "").strip().lower()
    if content_type.startswith("multipart/report"):
        return "multipart-report"
    return None


def _own_sender(author: str, found: matching.Match) -> bool:
    """True when ``author`` sent (envelope or From) one of the matched outbound mails."""
    author = author.lower()
    for sent in found.sent:
        ours = {normalize_address(sent.sender), normalize_address(sent.from_address or "")}
        if author in ours:
            return True
    return False


def weak_sender(msg: Inbound) -> str | None:
    """The address weak evidence may name, or None when it cannot be trusted.

    Without threading headers, only the sender says whom a mail is from, and a From header
    alone is anyone's to write: the envelope sender must be the same address (case aside).
    """
    from_values = matching.header_values(msg.headers, "From")
    addresses = extract_addresses(from_values[:1], limit=1)
    if not addresses or msg.envelope_from is None:
        return None
    author = addresses[0].lower()
    if normalize_address(msg.envelope_from).lower() != author:
        return None
    return author


def _envelope(msg: Inbound) -> str | None:
    return None if msg.envelope_from is None else normalize_address(msg.envelope_from)


class Engine:
    """Screens, decides and records inbound mail against the store."""

    def __init__(self, config: Config, keyring: Keyring, store: Store | None) -> None:
        self.config = config
        self.keyring = keyring
        self.store = store
        self.domain = config.domain.lower()

    # --- end of headers ----------------------------------------------------------------------
    def prescreen(self, msg: Inbound) -> str | None:
        """The pure part of screening: why this mail is never a reply (own, internal, ...)."""
        message_id = msg.header("Message-ID")
        for own in extract_msgids(message_id, limit=1) if message_id else []:
            if matching.looks_like_our_token(own, self.domain) and verify(self.keyring, own):
                # Our own outbound mail (a follow-up step quotes the earlier ones).
                return "own-message"
        if msg.authenticated:
            return "authenticated-submission"
        internal = self.config.milter_internal_domains
        if internal:
            if policy.is_internal(msg.sender, internal):
                return "internal-sender"
            envelope = normalize_address(msg.envelope_from or "")
            if envelope and policy.is_internal(envelope, internal):
                return "internal-sender"
        return None

    def screen(
        self, msg: Inbound, *, strict: bool = False, extra_ids: Sequence[str] = ()
    ) -> Screening:
        """Decide at end of headers whether the mail concerns us and whether the body matters.

        Store reads failing set ``store_failed`` (the adapter journals the mail) unless
        ``strict``, when the StoreError propagates (replay, check).
        """
        from replytrack.store.errors import StoreError

        result = Screening()
        result.strip_count = sum(1 for name, _ in msg.headers if name.lower() == HEADER.lower())
        result.skip_reason = self.prescreen(msg)
        if result.skip_reason:
            result.evidence.append(result.skip_reason)
            return result
        screened = matching.screen(
            msg.headers, keyring=self.keyring, domain=self.domain, extra_ids=extra_ids
        )
        result.forged = screened.forged
        result.evidence += screened.evidence
        try:
            result.needs_body = classifier.needs_body(msg.headers, envelope_from=_envelope(msg))
        except Exception:  # the classifier must never cost us a mail
            result.needs_body = True
        if self.store is None:
            return result
        try:
            result.match = matching.match(screened, self.store.find_sent)
            if result.match is None and self.config.milter_weak_match:
                sender = weak_sender(msg)
                if sender is None:
                    result.evidence.append("weak:envelope-differs-from-from")
                else:
                    # A paused person (out of office) writing fresh mail is back and
                    # replying too.
                    # Active ones first; one query for both states.
                    found = self.store.enrollments(recipient=sender, status=(ACTIVE, PAUSED))
                    found.sort(key=lambda e: e.status != ACTIVE)
                    result.weak = found[:MAX_WEAK_CAMPAIGNS]
        except StoreError as exc:
            if strict:
                raise
            log.warning("qid=%s store read failed at end of headers: %s", msg.queue_id or "-", exc)
            result.store_failed = True
            result.evidence.append("store-unavailable")
        return result

    # --- end of message -------------------------------------------------------------------
    def decide(self, msg: Inbound, screening: Screening, *, now: float | None = None) -> Verdict:
        """The verdict on a screened mail (store reads only; StoreError propagates)."""
        now = msg.received_at if now is None else now
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        sender = msg.sender
        verdict = Verdict(kind="unrelated", sender=sender, strip_count=screening.strip_count)
        verdict.evidence += screening.evidence
        if screening.skip_reason:
            return verdict
        try:
            found = classifier.classify(
                msg.headers,
                msg.body,
                envelope_from=_envelope(msg),
                today=today,
            )
        except Exception as exc:  # fail open: an unknown classifier fault is a human's mail
            found = classifier.Classification("human", (f"classifier-error:{type(exc).__name__}",))
        verdict.evidence += list(found.evidence)
        verdict.subtype = found.subtype
        verdict.return_date = found.return_date
        kind = found.kind
        guard = never_reply_reason(msg)
        if kind == "human" and guard:
            # The classifier saw a person; the envelope or headers say a machine. No reply.
            verdict.evidence.append(f"never-reply:{guard}")
            kind = "automated"

        found_match = screening.match
        if found_match is None and found.referenced_ids and self.store is not None:
            # A bounce or receipt names our mail in its body (the returned headers part).
            rescreen = matching.screen(
                [], keyring=self.keyring, domain=self.domain, extra_ids=found.referenced_ids
            )
            found_match = matching.match(rescreen, self.store.find_sent)
        weak_sent = []
        if found_match is None and screening.weak and self.store is not None:
            for enrollment in screening.weak[:MAX_WEAK_CAMPAIGNS]:
                last = self.store.last_message_to(enrollment.recipient, enrollment.campaign)
                if last is not None:
                    weak_sent.append(last)
            if weak_sent:
                found_match = matching.Match(
                    method=matching.WEAK,
                    sent=tuple(weak_sent),
                    evidence=(f"weak:enrolled:{sender}",),
                )
        if found_match is not None:
            verdict.matched = [s.message_id for s in found_match.sent]
            verdict.method = found_match.method
            verdict.campaign = found_match.primary.campaign
            verdict.evidence += list(found_match.evidence)
            verdict.relation = policy.relation(
                sender, found_match.primary, self.config.milter_freemail_domains
            )

        if found_match is not None and sender and _own_sender(sender, found_match):
            # The salesperson's own follow-up, sent around the proxy (no SMTP AUTH) in the
            # thread of our mail: it answers nothing and stops nothing.
            verdict.kind = "unrelated"
            verdict.evidence.append("own-sender")
            return verdict
        if kind == "human":
            if found_match is None:
                return verdict
            verdict.kind = "reply"
            self._decide_reply(msg, verdict, found_match, now)
        elif kind == "automated":
            return verdict
        elif kind == "auto_reply":
            verdict.kind = "auto_reply"
            self._decide_auto_reply(msg, verdict, found_match, screening, now)
        elif kind == "bounce":
            verdict.kind = "bounce"
            self._decide_bounce(msg, verdict, found_match, found, now)
        elif kind in ("receipt", "feedback"):
            verdict.kind = kind
            if found_match is not None:
                verdict.event = self._event(msg, verdict, now)
        return verdict

    def _event(self, msg: Inbound, verdict: Verdict, now: float, **more: Any) -> Event:
        verdict.dedupe_key = dedupe_key(msg)
        detail: dict[str, Any] = {
            "match": verdict.method,
            "matched": verdict.matched[:20],
            "subject": (msg.header("Subject") or "")[:200],
        }
        if verdict.subtype:
            detail["subtype"] = verdict.subtype
        if verdict.return_date:
            detail["return_date"] = verdict.return_date.isoformat()
        if verdict.stopped:
            detail["stopped"] = verdict.stopped[:100]
            detail["scope"] = verdict.scope
        detail.update(more)
        inbound_ids = extract_msgids(msg.header("Message-ID") or "", limit=1)
        return Event(
            kind=verdict.kind,
            created_at=now,
            campaign=verdict.campaign,
            message_id=verdict.matched[0] if verdict.matched else None,
            inbound_message_id=inbound_ids[0] if inbound_ids else None,
            sender=verdict.sender,
            recipient=more.get("recipient"),
            relation=verdict.relation,
            evidence=tuple(verdict.evidence[:50]),
            detail=detail,
            queue_id=msg.queue_id,
            actor="milter",
        )

    def _campaign_enrollments(self, campaign: str, addresses: Sequence[str]) -> list[Enrollment]:
        assert self.store is not None
        found: list[Enrollment] = []
        for address in list(dict.fromkeys(addresses))[: policy.MAX_STOPS]:
            found += self.store.enrollments(campaign=campaign, recipient=address, limit=1)
        return found

    def _decide_reply(
        self, msg: Inbound, verdict: Verdict, found: matching.Match, now: float
    ) -> None:
        verdict.notify = True
        primary = found.primary
        # The campaign id comes from the store, where one recorded before ids were checked
        # may hold ";" or a line end: header_parameter writes it so it adds nothing.
        campaign = header_parameter("campaign", primary.campaign or "none")
        verdict.add_header = f"reply; {campaign}; match={found.method}"
        # Threading names the one mail answered. Weak evidence names the person, who is
        # stopped in every campaign they are enrolled in (one mail per campaign).
        answered = [primary]
        if found.method == matching.WEAK:
            by_campaign = {s.campaign: s for s in reversed(found.sent) if s.campaign}
            answered += [s for c, s in by_campaign.items() if c != primary.campaign]
        for sent in answered:
            self._stop_for(verdict, sent)
        verdict.event = self._event(msg, verdict, now)

    def _stop_for(self, verdict: Verdict, sent: SentMessage) -> None:
        """Add the stops a reply to ``sent`` calls for in its campaign to ``verdict``."""
        if sent.campaign is not None and self.store is not None:
            addresses = [r.address for r in sent.recipients] + [verdict.sender]
            enrollments = self._campaign_enrollments(sent.campaign, addresses)
            domain_enrollments: list[Enrollment] = []
            domain = verdict.sender.rpartition("@")[2]
            if self.config.milter_stop_scope == "domain" and not policy.is_freemail(
                domain, self.config.milter_freemail_domains
            ):
                for status in (ACTIVE, PAUSED):
                    domain_enrollments += self.store.enrollments(
                        campaign=sent.campaign,
                        domain=domain,
                        status=status,
                        limit=policy.MAX_STOPS,
                    )
            verdict.scope, stopped = policy.stop_targets(
                self.config.milter_stop_scope,
                sent=sent,
                replier=verdict.sender,
                enrollments=enrollments,
                domain_enrollments=domain_enrollments,
                freemail=self.config.milter_freemail_domains,
            )
            reason = f"reply from {verdict.sender}"
            verdict.stopped += [a for a in stopped if a not in verdict.stopped]
            verdict.set_status += [
                StatusChange(sent.campaign, address, STOPPED, reason) for address in stopped
            ]

    def _decide_auto_reply(
        self,
        msg: Inbound,
        verdict: Verdict,
        found: matching.Match | None,
        screening: Screening,
        now: float,
    ) -> None:
        if found is None:
            return
        away = verdict.subtype in ("out_of_office", "vacation") or verdict.return_date is not None
        if away and self.store is not None:
            until = policy.pause_until(
                verdict.return_date,
                now=now,
                default_days=self.config.milter_ooo_default_days,
                max_days=self.config.milter_ooo_max_days,
            )
            if until is not None:
                verdict.paused_until = until
                verdict.ooo = (verdict.sender, until)
                campaigns = list(dict.fromkeys(s.campaign for s in found.sent if s.campaign))
                for campaign in campaigns[:MAX_WEAK_CAMPAIGNS]:
                    for enrollment in self.store.enrollments(
                        campaign=campaign, recipient=verdict.sender, limit=1
                    ):
                        if enrollment.status in (ACTIVE, PAUSED):
                            verdict.set_status.append(
                                StatusChange(
                                    campaign, verdict.sender, PAUSED, "out of office", until
                                )
                            )
        verdict.event = self._event(msg, verdict, now, paused_until=verdict.paused_until)

    def _decide_bounce(
        self,
        msg: Inbound,
        verdict: Verdict,
        found: matching.Match | None,
        classification: classifier.Classification,
        now: float,
    ) -> None:
        failed = [normalize_address(a) for a in classification.failed_recipients[:MAX_FAILED]]
        failed = [a for a in dict.fromkeys(failed) if "@" in a]
        enrolled: list[Enrollment] = []
        if self.store is not None:
            for address in failed:
                enrolled += self.store.enrollments_of(address)
        if found is None and not enrolled:
            return
        if found is None:
            # Anyone can send a delivery report naming any address: one that references
            # none of our mail is recorded, and changes no enrollment.
            verdict.evidence.append("bounce:unmatched")
        elif verdict.campaign is None and enrolled:
            verdict.campaign = enrolled[0].campaign
        if classification.permanent and found is not None:
            reason = "bounced permanently"
            for enrollment in enrolled:
                if enrollment.status != BOUNCED:
                    verdict.set_status.append(
                        StatusChange(enrollment.campaign, enrollment.recipient, BOUNCED, reason)
                    )
            verdict.bounced = list(dict.fromkeys(e.recipient for e in enrolled))
        verdict.event = self._event(
            msg,
            verdict,
            now,
            recipient=failed[0] if failed else None,
            failed_recipients=failed,
            permanent=classification.permanent,
        )

    # --- writing --------------------------------------------------------------------------
    def apply(self, verdict: Verdict) -> bool:
        """Record the verdict's event and enrollment changes; False when already recorded.

        Raises StoreError when the store cannot take it (the caller journals the mail).
        """
        if verdict.event is None or self.store is None:
            return False
        event_id = self.store.record_event(
            verdict.event,
            dedupe_key=verdict.dedupe_key,
            set_status=verdict.set_status,
            notify=verdict.notify or verdict.kind == "bounce",
        )
        if verdict.ooo is not None:
            # Also for an event already recorded: a replay after the event was written but
            # this was not must still remember the absence (an upsert, so twice is once).
            self.store.remember_ooo(*verdict.ooo)
        return event_id is not None

    def process(self, msg: Inbound) -> Verdict:
        """Screen, decide and record in one go (journal replay, tests)."""
        screening = self.screen(msg, strict=True)
        verdict = self.decide(msg, screening)
        self.apply(verdict)
        return verdict
