"""The milter's decision on one mail, as a pure function.

:func:`decide` turns what the classifier said about a mail and what the store holds about
it (:class:`Facts`, read before deciding) into an immutable :class:`Verdict`: its kind, its
evidence, the event to record and the enrollments to change. It reads and writes nothing;
the engine reads the facts before it (:func:`reads` says which) and records the verdict
after it. Without a store the facts are :data:`NO_FACTS`: nothing matches, nothing stops.

Only a person's mail that answers ours is a reply, and only a reply stops anything; our
own outbound mail is never a reply, even sent around the proxy in the thread of ours.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from replytrack.classify import LEFT_ORGANISATION, Classification, Intent
from replytrack.config import Config
from replytrack.headers import address_domain, header_parameter, normalize_address
from replytrack.milter import match as matching
from replytrack.milter import policy
from replytrack.milter.inbound import Inbound, dedupe_key, message_id, never_reply_reason
from replytrack.store.records import (
    ACTIVE,
    BOUNCED,
    PAUSED,
    STOPPED,
    Enrollment,
    Event,
    SentMessage,
    StatusChange,
    iso_time,
)

# Bounds against hostile mail: failed recipients acted on, campaigns one mail touches.
MAX_FAILED = 50
MAX_CAMPAIGNS = 20


@dataclass(frozen=True)
class Facts:
    """What the store holds about one mail, read before deciding.

    ``match``: the recorded mails it answers (threading headers, IDs in a report's body,
    or the sender's enrollments as weak evidence). ``enrollments``: those of the
    addresses the decision looks at (:func:`reads`), in the order read.
    """

    match: matching.Match | None = None
    enrollments: tuple[Enrollment, ...] = ()

    def in_campaign(self, campaign: str) -> list[Enrollment]:
        """The enrollments read in ``campaign``."""
        return [e for e in self.enrollments if e.campaign == campaign]


NO_FACTS = Facts()


@dataclass(frozen=True)
class Reads:
    """The enrollments a decision will look at, for the engine to read first."""

    # (campaign, address): that one enrollment.
    pairs: tuple[tuple[str, str], ...] = ()
    # (campaign, domain): the active and paused enrollments at that domain.
    domains: tuple[tuple[str, str], ...] = ()
    # Every enrollment of these addresses, in any campaign.
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """The milter's answer on one mail and everything it changes."""

    kind: str
    sender: str
    evidence: tuple[str, ...] = ()
    match: matching.Match | None = None
    campaign: str | None = None
    relation: str | None = None
    subtype: str | None = None
    return_date: dt.date | None = None
    scope: str | None = None
    set_status: tuple[StatusChange, ...] = ()
    bounced: tuple[str, ...] = ()
    paused_until: float | None = None
    add_header: str | None = None
    event: Event | None = None
    dedupe_key: str | None = None
    # What a person's mail means (unsubscribe, not_interested, referral, positive, other).
    intent: Intent | None = None

    @property
    def matched(self) -> list[str]:
        """The Message-IDs of the recorded mails it answers, strongest first."""
        return _matched(self.match)

    @property
    def method(self) -> str | None:
        """How it was matched (in-reply-to, references, report, thread-index, weak,
        subject), or None."""
        return self.match.method if self.match else None

    @property
    def stopped(self) -> list[str]:
        """The addresses whose enrollments a reply stops."""
        return _stopped(self.set_status)

    @property
    def notify(self) -> bool:
        """Whether the recorded event goes to the webhooks: replies, bounces, and an
        out-of-office that pauses someone (the engine reschedules by its ``resume_at``)."""
        return self.kind in ("reply", "bounce") or (
            self.kind == "auto_reply" and bool(self.set_status)
        )

    @property
    def ooo(self) -> tuple[str, float] | None:
        """(address, until) to remember as out of office, across campaigns."""
        if self.paused_until is None:
            return None
        return self.sender, self.paused_until

    def to_json(self) -> dict[str, Any]:
        """The verdict as ``replytrack check --json`` prints it."""
        return {
            "kind": self.kind,
            "matched": self.matched,
            "evidence": list(self.evidence),
            "match": self.method,
            "campaign": self.campaign,
            "sender": self.sender,
            "relation": self.relation,
            "subtype": self.subtype,
            "return_date": self.return_date.isoformat() if self.return_date else None,
            "stops": self.stopped,
            "scope": self.scope,
            "paused_until": self.paused_until,
            "bounced": list(self.bounced),
            "header": self.add_header,
            "intent": self.intent.intent if self.intent else None,
            "intent_detail": self.intent.to_json() if self.intent else None,
        }


def _matched(found: matching.Match | None) -> list[str]:
    return [s.message_id for s in found.sent] if found else []


def _stopped(changes: Sequence[StatusChange]) -> list[str]:
    return list(dict.fromkeys(c.recipient for c in changes if c.status == STOPPED))


# --- what the classifier's kind means here -----------------------------------------------------
def effective_kind(msg: Inbound, classification: Classification) -> tuple[str, tuple[str, ...]]:
    """The classifier's kind, unless the envelope or headers say a machine sent what it
    took for a person's mail ("automated"), and the evidence for the change."""
    guard = never_reply_reason(msg)
    if classification.kind == "human" and guard:
        return "automated", (f"never-reply:{guard}",)
    return classification.kind, ()


def own_sender(author: str, found: matching.Match) -> bool:
    """True when ``author`` sent (envelope or From) one of the matched outbound mails."""
    author = author.lower()
    for sent in found.sent:
        if author in (normalize_address(sent.sender), normalize_address(sent.from_address or "")):
            return True
    return False


def answered(found: matching.Match) -> list[SentMessage]:
    """The mails a reply answers: threading names one; weak evidence names the person, who
    answers the newest mail of each campaign they are enrolled in."""
    mails = [found.primary]
    if found.method == matching.WEAK:
        by_campaign = {s.campaign: s for s in reversed(found.sent) if s.campaign}
        mails += [s for c, s in by_campaign.items() if c != found.primary.campaign]
    return mails


def _domain_scope(replier: str, config: Config) -> bool:
    return config.milter_stop_scope == "domain" and not policy.is_freemail(
        address_domain(replier), config.milter_freemail_domains
    )


def _away(subtype: str | None, return_date: dt.date | None) -> bool:
    return subtype in ("out_of_office", "vacation") or return_date is not None


def failed_addresses(classification: Classification) -> list[str]:
    """The addresses a delivery report says failed, normalized, bounded, each once."""
    failed = [normalize_address(a) for a in classification.failed_recipients[:MAX_FAILED]]
    return [a for a in dict.fromkeys(failed) if "@" in a]


def reads(
    sender: str, classification: Classification, found: matching.Match | None, config: Config
) -> Reads:
    """The enrollments :func:`decide` will look at for mail from ``sender`` (none for most).

    A person's mail that :func:`decide` turns into a machine's (rare) reads the enrollments
    a reply would need: they go unused.
    """
    kind = classification.kind
    if found is not None and sender and own_sender(sender, found):
        return Reads()
    if kind == "bounce":
        return Reads(addresses=tuple(failed_addresses(classification)))
    if found is None:
        return Reads()
    if kind == "human":
        pairs: list[tuple[str, str]] = []
        domains: list[tuple[str, str]] = []
        for sent in answered(found):
            if sent.campaign is None:
                continue
            addresses = [r.address for r in sent.recipients] + [sender]
            pairs += [
                (sent.campaign, a) for a in list(dict.fromkeys(addresses))[: policy.MAX_STOPS]
            ]
            if _domain_scope(sender, config):
                domains.append((sent.campaign, address_domain(sender)))
        return Reads(pairs=tuple(pairs), domains=tuple(domains))
    if kind == "auto_reply" and classification.subtype == LEFT_ORGANISATION:
        return Reads(addresses=(sender,))
    if kind == "auto_reply" and _away(classification.subtype, classification.return_date):
        campaigns = list(dict.fromkeys(s.campaign for s in found.sent if s.campaign))
        return Reads(pairs=tuple((c, sender) for c in campaigns[:MAX_CAMPAIGNS]))
    return Reads()


# --- the decision -------------------------------------------------------------------------------
def decide(
    msg: Inbound,
    classification: Classification,
    facts: Facts,
    config: Config,
    *,
    now: float,
    evidence: Sequence[str] = (),
) -> Verdict:
    """The verdict on ``msg`` from its classification and the store's facts (pure).

    ``evidence`` is what screening found before (forged tokens, capped lookups).
    """
    kind, guard_evidence = effective_kind(msg, classification)
    found = facts.match
    sender = msg.sender
    said = [*evidence, *classification.evidence, *guard_evidence]
    known: dict[str, Any] = {
        "sender": sender,
        "subtype": classification.subtype,
        "return_date": classification.return_date,
    }
    if kind == "human" and classification.intent is not None:
        known["intent"] = classification.intent
    if found is not None:
        said += found.evidence
        known.update(
            match=found,
            campaign=found.primary.campaign,
            relation=policy.relation(sender, found.primary, config.milter_freemail_domains),
        )
        if sender and own_sender(sender, found):
            # The salesperson's own follow-up, sent around the proxy (no SMTP AUTH) in the
            # thread of our mail: it answers nothing and stops nothing.
            return Verdict("unrelated", evidence=(*said, "own-sender"), **known)
    if kind == "bounce":
        return _bounce(msg, classification, facts, now, said, known)
    if kind in ("human", "automated"):
        if found is None or kind == "automated":
            # A person's mail that answers nothing of ours is unrelated; so is a machine's
            # that the classifier took for a person's.
            return Verdict("unrelated", evidence=tuple(said), **known)
        return _reply(msg, found, facts, config, now, said, known)
    if kind not in ("auto_reply", "receipt", "feedback"):
        return Verdict("unrelated", evidence=tuple(said), **known)
    if found is None:
        # Automated mail about nothing of ours: named, not recorded.
        return Verdict(kind, evidence=tuple(said), **known)
    if kind == "auto_reply":
        return _auto_reply(msg, found, facts, config, now, said, known)
    # A read receipt or a feedback report about our mail: recorded, nothing changes.
    return _recorded(msg, now, kind, {"evidence": tuple(said), **known})


def _reply(
    msg: Inbound,
    found: matching.Match,
    facts: Facts,
    config: Config,
    now: float,
    said: list[str],
    known: dict[str, Any],
) -> Verdict:
    replier = known["sender"]
    domain = address_domain(replier)
    scope = None
    changes: list[StatusChange] = []
    for sent in answered(found):
        if sent.campaign is None:
            continue
        enrolled = facts.in_campaign(sent.campaign)
        at_domain = []
        if _domain_scope(replier, config):
            at_domain = [
                e
                for e in enrolled
                if address_domain(e.recipient) == domain and e.status in (ACTIVE, PAUSED)
            ]
        scope, targets = policy.stop_targets(
            config.milter_stop_scope,
            sent=sent,
            replier=replier,
            enrollments=enrolled,
            domain_enrollments=at_domain,
            freemail=config.milter_freemail_domains,
        )
        reason = f"reply from {replier}"
        changes += [StatusChange(sent.campaign, a, STOPPED, reason) for a in targets]
    # The campaign id comes from the store, where one recorded before ids were checked may
    # hold ";" or a line end: header_parameter writes it so it adds nothing. A reply to
    # one-to-one mail names no campaign (a "campaign=none" would be a campaign called none).
    primary = found.primary.campaign
    campaign = "" if primary is None else f" {header_parameter('campaign', primary)};"
    fields = {
        "evidence": tuple(said),
        "scope": scope,
        "set_status": tuple(changes),
        "add_header": f"reply;{campaign} match={found.method}",
        **known,
    }
    intent: Intent | None = known.get("intent")
    if intent is None:
        return _recorded(msg, now, "reply", fields)
    return _recorded(
        msg,
        now,
        "reply",
        fields,
        intent=intent.intent,
        intent_evidence=list(intent.evidence),
        referred_address=intent.referred_address,
        language=intent.language,
    )


def _auto_reply(
    msg: Inbound,
    found: matching.Match,
    facts: Facts,
    config: Config,
    now: float,
    said: list[str],
    known: dict[str, Any],
) -> Verdict:
    # Auto-replies never stop; an out-of-office pauses the sender until their return.
    sender = known["sender"]
    until = None
    if _away(known["subtype"], known["return_date"]):
        until = policy.pause_until(
            known["return_date"],
            now=now,
            default_days=config.milter_ooo_default_days,
            max_days=config.milter_ooo_max_days,
        )
    changes: list[StatusChange] = []
    bounced: tuple[str, ...] = ()
    if until is not None:
        campaigns = list(dict.fromkeys(s.campaign for s in found.sent if s.campaign))
        for campaign in campaigns[:MAX_CAMPAIGNS]:
            for enrollment in facts.in_campaign(campaign):
                if enrollment.recipient == sender and enrollment.status in (ACTIVE, PAUSED):
                    changes.append(StatusChange(campaign, sender, PAUSED, "out of office", until))
    elif known["subtype"] == LEFT_ORGANISATION:
        # The person has left: the address is dead, in every campaign, like a hard bounce
        # (the store's rule keeps a stop by a reply as it is).
        changes = [
            StatusChange(e.campaign, sender, BOUNCED, "left the organisation")
            for e in facts.enrollments
            if e.recipient == sender and e.status != BOUNCED
        ]
        bounced = (sender,) if changes else ()
    fields = {
        "evidence": tuple(said),
        "paused_until": until,
        "set_status": tuple(changes),
        "bounced": bounced,
        **known,
    }
    return _recorded(msg, now, "auto_reply", fields, paused_until=until, resume_at=iso_time(until))


def _bounce(
    msg: Inbound,
    classification: Classification,
    facts: Facts,
    now: float,
    said: list[str],
    known: dict[str, Any],
) -> Verdict:
    failed = failed_addresses(classification)
    enrolled = [e for e in facts.enrollments if e.recipient in failed]
    found = facts.match
    if found is None and not enrolled:
        return Verdict("bounce", evidence=tuple(said), **known)
    changes: tuple[StatusChange, ...] = ()
    bounced: tuple[str, ...] = ()
    if found is None:
        # Anyone can send a delivery report naming any address: one that references none
        # of our mail is recorded, and changes no enrollment.
        said.append("bounce:unmatched")
    elif known["campaign"] is None and enrolled:
        known["campaign"] = enrolled[0].campaign
    if classification.permanent and found is not None:
        reason = "bounced permanently"
        changes = tuple(
            StatusChange(e.campaign, e.recipient, BOUNCED, reason)
            for e in enrolled
            if e.status != BOUNCED
        )
        bounced = tuple(dict.fromkeys(e.recipient for e in enrolled))
    fields = {"evidence": tuple(said), "set_status": changes, "bounced": bounced, **known}
    return _recorded(
        msg,
        now,
        "bounce",
        fields,
        recipient=failed[0] if failed else None,
        failed_recipients=failed,
        permanent=classification.permanent,
    )


def _recorded(msg: Inbound, now: float, kind: str, fields: dict[str, Any], **more: Any) -> Verdict:
    """The verdict of ``kind`` with ``fields`` and the event that records it (keyed so a
    replay records it once); ``more`` goes into the event's detail."""
    found = fields.get("match")
    matched = _matched(found)
    stopped = _stopped(fields.get("set_status", ()))
    detail: dict[str, Any] = {
        "match": found.method if found else None,
        "matched": matched[:20],
        "subject": (msg.header("Subject") or "")[:200],
    }
    if fields["subtype"]:
        detail["subtype"] = fields["subtype"]
    if fields["return_date"]:
        detail["return_date"] = fields["return_date"].isoformat()
    if stopped:
        detail["stopped"] = stopped[:100]
        detail["scope"] = fields.get("scope")
    detail.update(more)
    own_id = message_id(msg)
    event = Event(
        kind=kind,
        created_at=now,
        campaign=fields.get("campaign"),
        message_id=matched[0] if matched else None,
        inbound_message_id=own_id,
        sender=fields["sender"],
        recipient=more.get("recipient"),
        relation=fields.get("relation"),
        evidence=fields["evidence"][:50],
        detail=detail,
        queue_id=msg.queue_id,
        actor="milter",
    )
    return Verdict(kind, **fields, event=event, dedupe_key=dedupe_key(msg, own_id))
