"""Matching inbound mail to mail we sent, strongest evidence first.

1. In-Reply-To names the mail answered.
2. References, at any position (the newest reference first): long threads, quoting
   clients and mailing lists put our ID anywhere in the chain.
3. Thread-Index: Outlook's conversation index names the GUID of one of our threads
   (:func:`match_thread_index`). Weaker: some Outlook versions put their own GUID there, so
   a miss says nothing, and a client may copy the header into unrelated mail.
4. Weak: the sender is an enrolled recipient of an active campaign (the engine does this
   one, it needs no threading header).
5. Subject: a mail with no threading headers at all, from another address at the domain of
   a recent campaign mail, whose subject answers that mail (:func:`match_subject`). The
   weakest: a colleague answering a forwarded mail, or a client that drops the headers.

Every candidate ID is screened before any store lookup: an ID shaped like one of our tokens
at our domain must verify (HMAC), otherwise it is forged and never looked up. Other IDs may
be the client's original Message-ID, which the store also records, so they are looked up.
Work is bounded: at most ``MAX_LOOKUPS`` unverified IDs (plus our verified tokens among the
first ``MAX_IDS`` references) reach the store per message, in one lookup.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

# The source labels of candidates (re-exported: callers compare a match's method to them).
from replytrack.classify.subjects import strip_prefixes, subject_text
from replytrack.classify.thread_ids import IN_REPLY_TO as IN_REPLY_TO
from replytrack.classify.thread_ids import REFERENCES as REFERENCES
from replytrack.classify.thread_ids import answered_ids
from replytrack.headers import MAX_IDS, address_domain, normalize_msgid
from replytrack.milter import policy
from replytrack.store.records import SentMessage
from replytrack.tokens import TOKEN_LEN, VERSION, Keyring, verify

WEAK = "weak"
THREAD_INDEX = "thread-index"
SUBJECT = "subject"

# Mails one Thread-Index GUID or one subject may name: a GUID is one enrollment's; a
# subject sent to many people at one domain names the newest few.
MAX_HEADERLESS_HITS = 20

# Unverified IDs (possibly a client's original Message-ID) looked up per message. Verified
# tokens are always looked up: each one cost an HMAC to prove and is certainly ours.
MAX_LOOKUPS = 500


@dataclass(frozen=True)
class Candidate:
    """A Message-ID found in a threading header, and where."""

    message_id: str
    source: str  # in-reply-to | references | report
    verified: bool  # one of our stamped tokens (HMAC checked)


@dataclass
class Screened:
    """The IDs worth a lookup, and the evidence gathered while screening."""

    candidates: list[Candidate] = field(default_factory=list)
    forged: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Match:
    """Recorded mails a message answers, strongest first, and how we know."""

    method: str  # in-reply-to | references | weak | report
    sent: tuple[SentMessage, ...]
    evidence: tuple[str, ...]

    @property
    def primary(self) -> SentMessage:
        """The mail most surely answered."""
        return self.sent[0]


def looks_like_our_token(message_id: str, domain: str) -> bool:
    """True when ``message_id`` has the shape of a token minted for ``domain``."""
    local, at, id_domain = message_id.rpartition("@")
    return (
        bool(at)
        and id_domain.lower() == domain.lower()
        and len(local) == TOKEN_LEN
        and local[:1] == VERSION
    )


def header_values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    """Values of the headers called ``name`` (case-insensitive), in order."""
    wanted = name.lower()
    return [value for key, value in headers if key.lower() == wanted]


def screen(
    headers: Sequence[tuple[str, str]],
    *,
    keyring: Keyring,
    domain: str,
    extra_ids: Sequence[str] = (),
) -> Screened:
    """Pick the Message-IDs to look up from In-Reply-To, References and ``extra_ids``.

    ``extra_ids`` are IDs a classifier read elsewhere (the returned headers of a bounce).
    The order is the order of strength: In-Reply-To, then References newest first, then
    the extra IDs.
    """
    result = Screened()
    ordered = answered_ids(
        header_values(headers, "In-Reply-To"), header_values(headers, "References"), limit=MAX_IDS
    )
    ordered += [(normalize_msgid(i), "report") for i in extra_ids[:MAX_IDS]]
    seen: set[str] = set()
    unverified = 0
    for message_id, source in ordered:
        if not message_id or message_id in seen:
            continue
        seen.add(message_id)
        if looks_like_our_token(message_id, domain):
            if verify(keyring, message_id):
                result.candidates.append(Candidate(message_id, source, verified=True))
            else:
                # A forged or mangled token: evidence, but never a lookup.
                result.forged.append(message_id)
        elif unverified < MAX_LOOKUPS:
            unverified += 1
            result.candidates.append(Candidate(message_id, source, verified=False))
        elif unverified == MAX_LOOKUPS:
            unverified += 1
            result.evidence.append(f"lookups-capped:{MAX_LOOKUPS}")
    if result.forged:
        result.evidence.append(f"forged-token:{len(result.forged)}")
    return result


def match(
    screened: Screened, find_sent: Callable[[Sequence[str]], list[SentMessage]]
) -> Match | None:
    """Look the screened IDs up (one store call) and order the hits by strength."""
    if not screened.candidates:
        return None
    ids = [c.message_id for c in screened.candidates]
    found = find_sent(ids)
    if not found:
        return None
    by_id: dict[str, SentMessage] = {}
    for record in found:
        by_id.setdefault(record.message_id, record)
        if record.original_message_id:
            by_id.setdefault(record.original_message_id, record)
    hits: list[SentMessage] = []
    evidence: list[str] = []
    method = ""
    for candidate in screened.candidates:
        sent = by_id.get(candidate.message_id)
        if sent is None:
            continue
        if not method:
            method = candidate.source
        kind = "stamped" if candidate.message_id == sent.message_id else "original"
        evidence.append(f"{candidate.source}:{kind}:<{candidate.message_id}>")
        if all(h.id != sent.id for h in hits):
            hits.append(sent)
    if not hits:
        return None
    return Match(method=method, sent=tuple(hits), evidence=(*evidence, *screened.evidence))


# --- evidence without threading headers --------------------------------------------------------
def thread_guid(headers: Sequence[tuple[str, str]]) -> bytes | None:
    """The conversation GUID of the mail's ``Thread-Index`` (bytes 6 to 22 of the decoded
    value, MS-OXOMSG 2.2.1.3), or None when there is none or it is not one."""
    values = header_values(headers, "Thread-Index")
    if not values:
        return None
    raw = "".join(values[0].split())
    try:
        index = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
    guid = index[6:22]
    # An all-zero GUID is no conversation's: it would match every broken root alike.
    if len(index) < 22 or not any(guid):
        return None
    return guid


def match_thread_index(
    headers: Sequence[tuple[str, str]], find_thread: Callable[[bytes], list[SentMessage]]
) -> Match | None:
    """Match by the GUID of the mail's Thread-Index: ``find_thread(guid)`` gives the newest
    mail of each of our threads with that GUID. No hit is no evidence either way."""
    guid = thread_guid(headers)
    if guid is None:
        return None
    found = find_thread(guid)[:MAX_HEADERLESS_HITS]
    if not found:
        return None
    label = f"{THREAD_INDEX}:{guid.hex()}"
    return Match(method=THREAD_INDEX, sent=tuple(found), evidence=(label,))


def answer_subject(subject: str | None) -> tuple[str, bool]:
    """The subject without reply and forward prefixes, spaces folded and case ignored, and
    whether it had any (a mail without one answers nothing)."""
    text, prefixed = strip_prefixes(subject_text(subject))
    return text.strip().casefold(), prefixed


def subject_domain(
    headers: Sequence[tuple[str, str]], sender: str, freemail: Iterable[str] = ()
) -> str | None:
    """The domain whose campaign mail a header-less answer from ``sender`` may answer, or
    None: the mail must carry no In-Reply-To or References (those that named nothing of
    ours answer someone else's mail) and come from a domain that is not free mail."""
    if header_values(headers, "In-Reply-To") or header_values(headers, "References"):
        return None
    domain = address_domain(sender)
    if not domain or policy.is_freemail(domain, freemail):
        return None
    return domain


def match_subject(
    sender: str,
    subject: str | None,
    domain: str,
    find_recent: Callable[[str], list[SentMessage]],
) -> Match | None:
    """Match a header-less mail from ``sender`` at ``domain`` by its subject:
    ``find_recent(domain)`` gives the recent campaign mail sent to that domain, newest
    first; those whose subject, prefixes stripped, is the one this mail answers match.

    Only another address than the mail went to answers this way (the addressed person is
    weak evidence's, ``milter.weak_match``), and mail of ours never does: a candidate sent
    from the sender's own domain (a colleague of the salesperson) is left out.
    """
    wanted, prefixed = answer_subject(subject)
    if not wanted or not prefixed:
        return None
    hits: list[SentMessage] = []
    for sent in find_recent(domain):
        ours = {address_domain(sent.sender), address_domain(sent.from_address or "")}
        if sent.campaign is None or domain in ours:
            continue
        if any(r.address == sender for r in sent.recipients):
            continue
        if answer_subject(sent.subject)[0] == wanted:
            hits.append(sent)
            if len(hits) == MAX_HEADERLESS_HITS:
                break
    if not hits:
        return None
    evidence = (f"{SUBJECT}:domain:{domain}", f"{SUBJECT}:answers:<{hits[0].message_id}>")
    return Match(method=SUBJECT, sent=tuple(hits), evidence=evidence)
