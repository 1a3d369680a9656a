"""Small detectors, one per kind of automated mail.

Each detector looks at a :class:`Context` and returns a :class:`Finding`
(kind, subtype, evidence and the details it could read) or ``None``. They are
run in the order of :data:`DETECTORS`; the first finding wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import getaddresses
from functools import cached_property

from replytrack.headers import parse_mailbox

from . import _patterns as pat
from ._mime import Headers, MailView, Part, decode_words, split_header_block

try:  # The shared header module of replytrack; the fallback keeps this package usable alone.
    from replytrack.headers import extract_msgids
except ImportError:  # pragma: no cover - replytrack.headers ships with the package.
    _MSGID = re.compile(r"<([^<>\s]{1,998})>")

    def extract_msgids(value: str, limit: int = 1000) -> list[str]:
        return [m.group(1) for m in _MSGID.finditer(value)][:limit]


MAX_IDS = 50
MAX_RECIPIENTS = 50
_ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+"
)
_LINK = re.compile(r"https?://", re.I)
_FORWARD_SUBJECT = re.compile(r"^\s*(?:fwd?|fw|wg|tr|rv|i|enc|doorst|vs)\s*:", re.I)
_REPLY_SUBJECT = re.compile(r"^\s*(?:re|aw|sv|antw|r|rif|res|odp|vs)\s*:", re.I)


@dataclass
class Finding:
    """What one detector found."""

    kind: str
    subtype: str | None
    evidence: list[str]
    referenced_ids: list[str] = field(default_factory=list)
    failed_recipients: list[str] = field(default_factory=list)
    permanent: bool | None = None


@dataclass
class Context:
    """The facts every detector reads, computed once per message."""

    view: MailView
    envelope_from: str | None  # None when unknown; "" for the null sender
    subject: str
    from_addr: str
    from_name: str
    text: str  # the message's own text, quoted lines removed, bounded

    @property
    def headers(self) -> Headers:
        return self.view.headers

    @cached_property
    def fresh_text(self) -> str:
        """The text above the first quoted earlier message ("-----Original Message-----",
        "On ... wrote:"): what the sender wrote now. Auto-reply wording is looked for
        here only, so that a person quoting a notice is not taken for one."""
        match = pat.QUOTE_MARKERS.search(self.text)
        return self.text[: match.start()] if match else self.text

    @property
    def null_sender(self) -> bool:
        return self.envelope_from == ""

    @classmethod
    def build(cls, view: MailView, envelope_from: str | None) -> Context:
        headers = view.headers
        if envelope_from is None:
            # A delivered .eml records MAIL FROM in Return-Path; use it when the
            # caller does not know the envelope.
            envelope_from = headers.get("Return-Path")
        envelope = None
        if envelope_from is not None:
            envelope = envelope_from.strip().strip("<>").strip()
        subject = " ".join(decode_words(headers.get("Subject") or "").split())[:1000]
        name, addr = parse_mailbox(decode_words(headers.get("From") or "")[:2000])
        text = view.own_text() if view.body_seen else ""
        unquoted = "\n".join(
            ln for ln in text[:40000].split("\n") if not ln.lstrip().startswith(">")
        )
        return cls(view, envelope, subject, addr.lower(), name, unquoted)


# --- helpers ---------------------------------------------------------------------------------


def _ids_from_headers(headers: Headers, *names: str) -> list[str]:
    ids: list[str] = []
    for name in names:
        for value in headers.get_all(name):
            for msgid in extract_msgids(value, limit=MAX_IDS):
                if msgid not in ids:
                    ids.append(msgid)
    return ids[:MAX_IDS]


def _threading_ids(ctx: Context) -> list[str]:
    """In-Reply-To first, then References from the newest backwards."""
    ids = _ids_from_headers(ctx.headers, "In-Reply-To")
    refs = _ids_from_headers(ctx.headers, "References")
    for msgid in reversed(refs):
        if msgid not in ids:
            ids.append(msgid)
    return ids[:MAX_IDS]


# "Message-ID:" at a line start, the value on the same line or a folded next one. The
# indentation is [ \t]* and the gap after the colon bounded: an unbounded \s* would
# run across every following empty line from every line start (quadratic time).
_MESSAGE_ID_LINE = re.compile(r"(?im)^[ \t]*message-id:\s{0,40}(<[^>\n]{1,998}>)")


def _returned_ids(ctx: Context) -> list[str]:
    """Message-IDs of the returned mail: message/rfc822 parts, text/rfc822-headers,
    then "Message-ID:" lines in the text of a plain-text report."""
    ids: list[str] = []
    for part in ctx.view.parts:
        mime = part.content_type.mime
        if mime in ("message/rfc822", "message/global", "message/global-headers"):
            ids.extend(_ids_from_headers(part.headers, "Message-ID"))
        elif mime in ("text/rfc822-headers", "text/rfc822-header"):
            headers, _ = split_header_block(part.text.lstrip("\n"))
            ids.extend(_ids_from_headers(Headers(headers), "Message-ID"))
    if not ids:
        for match in _MESSAGE_ID_LINE.finditer(ctx.text[:100000]):
            ids.extend(extract_msgids(match.group(1), limit=1))
            if len(ids) >= 5:
                break
    unique: list[str] = []
    for msgid in ids:
        if msgid not in unique:
            unique.append(msgid)
    return unique


def _merge_ids(*lists: list[str]) -> list[str]:
    merged: list[str] = []
    for ids in lists:
        for msgid in ids:
            if msgid not in merged:
                merged.append(msgid)
    return merged[:MAX_IDS]


def _address_of(value: str) -> str | None:
    """The address from a DSN recipient field ("rfc822; user@host")."""
    _, _, rest = value.partition(";")
    candidate = (rest or value).strip().strip("<>").strip()
    match = _ADDRESS.search(candidate)
    return match.group(0).lower() if match else None


def _dsn_fields(text: str) -> list[Headers]:
    """The field groups of a message/delivery-status body: the per-message group
    first, then one group per recipient."""
    groups: list[Headers] = []
    for block in re.split(r"\n\s*\n", text.strip())[: MAX_RECIPIENTS + 1]:
        headers, _ = split_header_block(block + "\n\n")
        if headers:
            groups.append(Headers(headers))
    return groups


def _sender_is_daemon(ctx: Context) -> str | None:
    """Evidence when the sender is delivery software, else None."""
    if ctx.null_sender:
        return "envelope-from:null"
    envelope = ctx.envelope_from or ""
    for addr in (envelope.lower(), ctx.from_addr):
        local = addr.rsplit("@", 1)[0] if "@" in addr else addr
        if local and pat.DAEMON_LOCALPART.match(local):
            return f"from:{local}"
    from_local = ctx.from_addr.rsplit("@", 1)[0]
    if from_local and pat.LIST_ADMIN_LOCALPART.match(from_local):
        return "from:list-admin"
    if ctx.from_addr in ("", "<>") and "From" in ctx.headers:
        return "from:empty"
    if ctx.from_name and pat.DAEMON_DISPLAY.search(ctx.from_name):
        return "from-name:delivery-system"
    return None


# --- detectors ---------------------------------------------------------------------------------


def challenge_response(ctx: Context) -> Finding | None:
    """Challenge-response systems ask the sender to confirm or be allow-listed.

    Checked before delivery reports because some (Boxbe) send the challenge in
    the shape of a delivery report with a transient status.
    """
    if not ctx.text:
        return None
    window = ctx.text[:6000]
    # The link is the cheap test; the wording is only looked for when there is one.
    if _LINK.search(window) is None or not pat.CHALLENGE_BODY_SET.hits(window):
        return None
    return Finding(
        "auto_reply",
        "challenge_response",
        ["body:challenge-response"],
        referenced_ids=_merge_ids(_threading_ids(ctx), _returned_ids(ctx)),
    )


def delivery_status_report(ctx: Context) -> Finding | None:
    """RFC 3464 delivery status notifications (multipart/report or a
    message/delivery-status part anywhere)."""
    ctype = ctx.view.content_type
    report_type = (ctype.params.get("report-type") or "").lower()
    parts = ctx.view.parts_of("message/delivery-status", "message/global-delivery-status")
    parts = [p for p in parts if not p.returned]
    evidence: list[str] = []
    if ctype.mime == "multipart/report" and report_type == "delivery-status":
        evidence.append("content-type:multipart/report;report-type=delivery-status")
    if parts:
        evidence.append("part:message/delivery-status")
    if not evidence:
        return None
    actions: list[str] = []
    statuses: list[str] = []
    recipients: list[str] = []
    for part in parts:
        for group in _dsn_fields(part.text):
            action = (group.get("Action") or "").lower().strip()
            status = (group.get("Status") or "").strip()
            if action:
                actions.append(action.split()[0])
            if status:
                statuses.append(status.split()[0])
            # Original-Recipient is the address as we sent it (before aliasing),
            # Final-Recipient the one that failed; both name the recipient.
            for name in ("Original-Recipient", "Final-Recipient"):
                value = group.get(name)
                addr = _address_of(value) if value else None
                if addr and addr not in recipients and (action or status):
                    recipients.append(addr)
    finding = Finding("bounce", None, evidence)
    if any(a == "failed" for a in actions) or any(s.startswith("5") for s in statuses):
        finding.subtype, finding.permanent = "dsn_failed", True
    elif any(a == "delayed" for a in actions) or any(s.startswith("4") for s in statuses):
        finding.subtype, finding.permanent = "dsn_delayed", False
    elif actions and all(a in ("delivered", "relayed", "expanded") for a in actions):
        finding.subtype, finding.permanent = "dsn_delivered", None
    else:
        # A report whose status part is missing or unreadable: read the text.
        _, permanent = _failure_nature(ctx.text)
        finding.subtype = "dsn_failed" if permanent is not False else "dsn_delayed"
        finding.permanent = permanent
    if actions:
        finding.evidence.append("dsn-action:" + ",".join(sorted(set(actions))))
    if statuses:
        finding.evidence.append("dsn-status:" + ",".join(sorted(set(statuses))[:5]))
    if not recipients:
        recipients = _failed_from_headers(ctx) or _failed_from_text(ctx)
    finding.failed_recipients = recipients[:MAX_RECIPIENTS]
    finding.referenced_ids = _merge_ids(_returned_ids(ctx), _threading_ids(ctx))
    return finding


def _failure_nature(text: str) -> tuple[str, bool | None]:
    """Subtype and permanence that the wording of a plain-text report shows."""
    window = text[:8000]
    if any(p.search(window) for p in pat.SUCCESS) and not re.search(
        r"\b(?:fail|undeliver|could not|couldn't|unable)", window, re.I
    ):
        return "dsn_delivered", None
    if any(p.search(window) for p in pat.DELAY) and not re.search(
        r"\bpermanent|\bgave up|\bgiving up|\bretry timeout exceeded|\bhas been returned\b",
        window,
        re.I,
    ):
        return "dsn_delayed", False
    return "dsn_failed", True


def _failed_from_headers(ctx: Context) -> list[str]:
    addrs: list[str] = []
    for value in ctx.headers.get_all("X-Failed-Recipients"):
        for _, addr in getaddresses([value]):
            if addr and "@" in addr and addr.lower() not in addrs:
                addrs.append(addr.lower())
    return addrs[:MAX_RECIPIENTS]


# The separator line before a returned message. Its leading decoration is [ \t>*=-]*,
# not [\s>*=-]*: with re.M the latter runs across the following empty lines from every
# line start, quadratic on a body of blank lines.
_RETURNED_PART_START = re.compile(
    r"(?im)^[ \t>*=-]*(?:original message|returned message|undelivered message|"
    r"message headers follow|this is a copy of the message|below this line)"
    r"|^(?:received|return-path):"
)


def _failed_from_text(ctx: Context) -> list[str]:
    """Addresses named in the report's own wording, before the returned message.

    The bounce's own From/To (our sender, the daemon) are left out.
    """
    text = ctx.text[:20000]
    # The returned message starts after a separator line; "The original message was
    # received at" (Sendmail's first sentence) is no such line.
    cut = _RETURNED_PART_START.search(text)
    if cut:
        text = text[: cut.start()]
    own = {ctx.from_addr}
    for name in ("To", "Delivered-To", "X-Original-To", "Envelope-To"):
        for _, addr in getaddresses(ctx.headers.get_all(name)):
            own.add(addr.lower())
    if ctx.envelope_from:
        own.add(ctx.envelope_from.lower())
    found: list[str] = []
    for match in _ADDRESS.finditer(text):
        addr = match.group(0).lower().rstrip(".")
        local = addr.split("@", 1)[0]
        if addr in own or pat.DAEMON_LOCALPART.match(local) or addr in found:
            continue
        found.append(addr)
        if len(found) >= 10:
            break
    return found


def plain_text_bounce(ctx: Context) -> Finding | None:
    """Delivery reports in prose: Postfix, Exim, qmail, Sendmail, Exchange, Gmail, Notes..."""
    evidence: list[str] = []
    failed_header = _failed_from_headers(ctx)
    if failed_header:
        evidence.append("header:x-failed-recipients")
    sender = _sender_is_daemon(ctx)
    subject_hit = bool(pat.BOUNCE_SUBJECT_SET.hits(ctx.subject))
    forwarded = _FORWARD_SUBJECT.match(ctx.subject) is not None
    replied = _REPLY_SUBJECT.match(ctx.subject) is not None
    if not (failed_header or sender or subject_hit or not (forwarded or replied)):
        # None of the rules below can decide without one of these: a person's
        # "Re:" or "Fwd:" mail is not read for MTA wording at all.
        return None
    body_hits = pat.BOUNCE_BODY_SET.hits(ctx.text[:12000]) if ctx.text else []
    if subject_hit:
        evidence.append("subject:delivery-failure")
    if body_hits:
        evidence.append("body:mta-report")
    decided = bool(failed_header)
    if sender and (subject_hit or body_hits):
        decided = True
    # Without a delivery-software sender, the subject and the body must agree,
    # and a person forwarding a bounce ("Fwd: Undeliverable") is not a bounce.
    if not sender and subject_hit and body_hits and not forwarded:
        decided = True
    if not sender and len(body_hits) >= 3 and not forwarded and not replied:
        decided = True
    if not decided:
        return None
    if sender:
        evidence.insert(0, sender)
    subtype, permanent = _failure_nature(ctx.subject + "\n" + ctx.text)
    return Finding(
        "bounce",
        subtype,
        evidence,
        referenced_ids=_merge_ids(_returned_ids(ctx), _threading_ids(ctx)),
        failed_recipients=(failed_header or _failed_from_text(ctx))[:MAX_RECIPIENTS],
        permanent=permanent,
    )


def read_receipt(ctx: Context) -> Finding | None:
    """RFC 8098 disposition notifications, and Outlook's TNEF read receipts."""
    ctype = ctx.view.content_type
    report_type = (ctype.params.get("report-type") or "").lower()
    parts = [p for p in ctx.view.parts_of("message/disposition-notification") if not p.returned]
    evidence: list[str] = []
    if ctype.mime == "multipart/report" and report_type == "disposition-notification":
        evidence.append("content-type:multipart/report;report-type=disposition-notification")
    if parts:
        evidence.append("part:message/disposition-notification")
    if not evidence and pat.RECEIPT_SUBJECT.match(ctx.subject):
        if ctype.mime == "application/ms-tnef":
            evidence.append("subject:read-receipt+content-type:application/ms-tnef")
        elif ctx.text and pat.RECEIPT_BODY.search(ctx.text[:4000]):
            evidence.append("subject:read-receipt+body:read-notice")
    if not evidence:
        return None
    ids: list[str] = []
    for part in parts:
        for group in _dsn_fields(part.text):
            ids.extend(_ids_from_headers(group, "Original-Message-ID"))
    return Finding(
        "receipt",
        "mdn",
        evidence,
        referenced_ids=_merge_ids(ids, _threading_ids(ctx), _returned_ids(ctx)),
    )


_DMARC_SUBJECT = re.compile(r"\breport[ -]?domain:\s*\S+.{0,20}\bsubmitter:", re.I)
_REPORT_ARCHIVE = (
    "application/zip",
    "application/gzip",
    "application/x-gzip",
    "application/x-zip-compressed",
)


def feedback_report(ctx: Context) -> Finding | None:
    """Abuse feedback (ARF), DMARC aggregate and TLS reports.

    The returned mail's IDs are read only once a report is recognised: this detector
    runs on every mail, and most mail is none.
    """
    ctype = ctx.view.content_type
    report_type = (ctype.params.get("report-type") or "").lower()
    if (ctype.mime == "multipart/report" and report_type == "feedback-report") or any(
        not p.returned for p in ctx.view.parts_of("message/feedback-report")
    ):
        return Finding(
            "feedback",
            "arf",
            ["content-type:multipart/report;report-type=feedback-report"],
            _returned_ids(ctx),
        )
    if (
        report_type == "tlsrpt"
        or ctx.headers.get("TLS-Report-Domain")
        or any(p.content_type.mime.startswith("application/tlsrpt") for p in ctx.view.parts)
    ):
        return Finding("feedback", "tlsrpt", ["report:tlsrpt"], _returned_ids(ctx))
    archives = ctype.mime in _REPORT_ARCHIVE or any(
        p.content_type.mime in _REPORT_ARCHIVE for p in ctx.view.parts
    )
    if _DMARC_SUBJECT.search(ctx.subject) and (archives or not ctx.view.body_seen):
        return Finding("feedback", "dmarc", ["subject:dmarc-aggregate-report"], _returned_ids(ctx))
    # Microsoft's junk-mail reporting programme (JMRP) attaches the reported mail
    # with its own X-HmXmrOriginalRecipient header.
    for part in ctx.view.parts_of("message/rfc822"):
        if "X-HmXmrOriginalRecipient" in part.headers:
            return Finding("feedback", "arf", ["part:jmrp-report"], _returned_ids(ctx))
    return None


_AUTO_HEADERS: tuple[tuple[str, str], ...] = (
    # (header, evidence) — presence (with a value other than "no") marks an auto-reply.
    ("X-Autoreply", "x-autoreply"),
    ("X-Autorespond", "x-autorespond"),
    ("X-Auto-Reply", "x-auto-reply"),
    ("X-Autoresponder", "x-autoresponder"),
    ("X-Vacation", "x-vacation"),
    ("X-MS-Exchange-Inbox-Rules-Loop", "x-ms-exchange-inbox-rules-loop"),
)


def _auto_header_evidence(headers: Headers) -> tuple[list[str], int]:
    """Header evidence of an automatic reply, with a weight (3 = enough alone)."""
    evidence: list[str] = []
    score = 0
    auto_submitted = (headers.get("Auto-Submitted") or "").strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        # The value may carry a comment or parameters: "auto-replied (zimbra; vacation)".
        token = re.match(r"[a-z0-9-]+", auto_submitted)
        evidence.append("auto-submitted:" + (token.group(0) if token else "other"))
        score += 3
    for name, label in _AUTO_HEADERS:
        found = headers.get(name)
        if found is not None and found.strip().lower() not in ("no", "false", "0"):
            evidence.append(f"header:{label}")
            score += 3
    for name in ("Precedence", "X-Precedence"):
        value = (headers.get(name) or "").strip().lower()
        if value in ("auto_reply", "auto-reply", "autoreply"):
            evidence.append(f"precedence:{value}")
            score += 3
        elif value in ("bulk", "junk"):
            evidence.append(f"precedence:{value}")
            score += 1
    autogenerated = (headers.get("X-Autogenerated") or "").lower()
    if autogenerated in ("reply", "forward", "mirror", "group"):
        evidence.append(f"x-autogenerated:{autogenerated}")
        score += 3
    message_class = (
        (headers.get("X-POST-MessageClass") or "") + " " + (headers.get("X-MessageClass") or "")
    )
    if re.search(r"\bauto-?respon|\bout of office|\boof\b", message_class, re.I):
        evidence.append("header:message-class-autoresponder")
        score += 3
    if headers.get("X-MS-Exchange-Generated-Message-Source"):
        evidence.append("header:x-ms-exchange-generated-message-source")
        score += 2
    if headers.get("X-Auto-Response-Suppress"):
        # Exchange sets it on its own generated mail, but also on some mail
        # people send: a supporting signal only.
        evidence.append("header:x-auto-response-suppress")
        score += 1
    return evidence, score


def _subject_evidence(subject: str) -> tuple[str | None, str | None]:
    lang = pat.AUTO_SUBJECT_SET.first(subject)
    return (f"subject:auto-reply:{lang}", lang) if lang is not None else (None, None)


def _weak_subject_evidence(subject: str) -> str | None:
    lang = pat.AUTO_SUBJECT_WEAK_SET.first(subject)
    return f"subject:acknowledgement:{lang}" if lang is not None else None


def _short_and_unquoted(ctx: Context) -> bool:
    """True when the raw own text is short and quotes no earlier message."""
    raw = ctx.view.own_text(limit=4000)
    if len(raw.strip()) > 1500:
        return False
    return pat.QUOTE_MARKERS.search(raw) is None


def _ooo_body(text: str) -> tuple[str | None, str | None]:
    lang = pat.OOO_BODY_SET.first(text[:3000])
    return (f"body:out-of-office:{lang}", lang) if lang is not None else (None, None)


def _self_declared(text: str) -> str | None:
    lang = pat.SELF_DECLARED_SET.first(text[:4000])
    return f"body:declares-automatic:{lang}" if lang is not None else None


def _autoresponder_body(text: str) -> str | None:
    lang = pat.AUTORESPONDER_BODY_SET.first(text[:3000])
    return f"body:autoresponder:{lang}" if lang is not None else None


def auto_reply(ctx: Context) -> Finding | None:
    """Out-of-office notices, vacation messages and other autoresponders.

    Header signals (RFC 3834 Auto-Submitted, X-Autoreply, Exchange's inbox-rule
    loop header...) decide alone; weaker ones (subject and body wording,
    Precedence: bulk, X-Auto-Response-Suppress) add up to a decision.
    Precedence: list never counts: people reply through lists.
    """
    evidence, score = _auto_header_evidence(ctx.headers)
    fresh = ctx.fresh_text
    subject_ev, _ = _subject_evidence(ctx.subject)
    if (
        subject_ev
        and _REPLY_SUBJECT.match(ctx.subject) is None
        and not _FORWARD_SUBJECT.match(ctx.subject)
    ):
        evidence.append(subject_ev)
        score += 3
    elif subject_ev:
        # "Re: Out of office" is a person talking about one far more often than not.
        evidence.append(subject_ev)
        score += 1
    weak_ev = _weak_subject_evidence(ctx.subject)
    if weak_ev and not subject_ev:
        evidence.append(weak_ev)
        score += 1
    ooo_ev, _ = _ooo_body(fresh)
    if ooo_ev:
        evidence.append(ooo_ev)
        score += 2
        if _short_and_unquoted(ctx):
            # A notice that quotes nothing and says little else: people's replies
            # quote what they answer, autoresponders do not.
            evidence.append("body:unquoted-notice")
            score += 1
    elif fresh and pat.OOO_MENTION_SET.first(fresh[:3000]) is not None:
        evidence.append("body:out-of-office-mention")
        score += 1
    responder_ev = _autoresponder_body(fresh)
    if responder_ev:
        evidence.append(responder_ev)
        score += 2
    declared_ev = _self_declared(fresh)
    if declared_ev:
        evidence.append(declared_ev)
        score += 3
    if ctx.null_sender:
        # People's mail clients never send with an empty MAIL FROM (RFC 5321 4.5.5:
        # it is for notifications); RFC 3834 asks auto-responders to use it.
        evidence.append("envelope-from:null")
        score += 3
    if score < 3:
        return None
    if _is_mailer_daemon(ctx) and not (subject_ev or ooo_ev or responder_ev or declared_ev):
        # Header signals alone on a MAILER-DAEMON mail: a delivery report in a
        # wording we do not know, left to the mailer_daemon detector.
        return None
    subtype = "autoresponder"
    if ooo_ev or re.search(
        r"out of (?:the )?office|abwesen|absen|ausen|assen|afwezig|\booo\b", ctx.subject, re.I
    ):
        subtype = "out_of_office"
    elif re.search(
        r"\bvacation|\bholiday|urlaub|vacances|vacaciones|ferie|férias|vakantie",
        ctx.subject + ctx.text[:1500],
        re.I,
    ):
        subtype = "vacation"
    return Finding("auto_reply", subtype, evidence, referenced_ids=_threading_ids(ctx))


def _is_mailer_daemon(ctx: Context) -> bool:
    envelope = (ctx.envelope_from or "").lower()
    return any(
        addr.split("@", 1)[0] in ("mailer-daemon", "mailer_daemon", "mailerdaemon")
        for addr in (envelope, ctx.from_addr)
    )


def mailer_daemon(ctx: Context) -> Finding | None:
    """Mail from a MAILER-DAEMON address that no other detector read is still a
    delivery report of some kind; postmaster alone is not (people write as postmaster)."""
    if not _is_mailer_daemon(ctx):
        return None
    return Finding(
        "bounce",
        None,
        ["from:mailer-daemon"],
        referenced_ids=_merge_ids(_returned_ids(ctx), _threading_ids(ctx)),
        failed_recipients=_failed_from_headers(ctx) or _failed_from_text(ctx),
    )


Detector = Callable[[Context], "Finding | None"]

# The order in which detectors run; the first finding wins. Reports with a
# machine-readable structure come first because their structure is proof;
# wording-based detectors follow from the most to the least specific.
DETECTORS: tuple[tuple[str, Detector], ...] = (
    ("challenge_response", challenge_response),
    ("delivery_status_report", delivery_status_report),
    ("read_receipt", read_receipt),
    ("feedback_report", feedback_report),
    ("plain_text_bounce", plain_text_bounce),
    ("auto_reply", auto_reply),
    ("mailer_daemon", mailer_daemon),
)


def first_finding(ctx: Context) -> Finding | None:
    """Run the detectors in order and return the first finding."""
    for _name, detector in DETECTORS:
        finding = detector(ctx)
        if finding is not None:
            return finding
    return None


def header_signals(view: MailView, envelope_from: str | None) -> list[str]:
    """Signals in the headers alone that the mail may be automated (for needs_body)."""
    ctx = Context.build(view, envelope_from)
    signals: list[str] = []
    ctype = view.content_type
    if ctype.mime == "multipart/report" or ctype.mime.startswith("message/"):
        signals.append(f"content-type:{ctype.mime}")
    if ctype.mime == "application/ms-tnef" and pat.RECEIPT_SUBJECT.match(ctx.subject):
        signals.append("subject:read-receipt")
    sender = _sender_is_daemon(ctx)
    if sender:
        signals.append(sender)
    if _failed_from_headers(ctx):
        signals.append("header:x-failed-recipients")
    evidence, _ = _auto_header_evidence(ctx.headers)
    signals.extend(evidence)
    subject_ev, _ = _subject_evidence(ctx.subject)
    if subject_ev:
        signals.append(subject_ev)
    if pat.BOUNCE_SUBJECT_SET.hits(ctx.subject):
        signals.append("subject:delivery-failure")
    if pat.RECEIPT_SUBJECT.match(ctx.subject):
        signals.append("subject:read-receipt")
    if _DMARC_SUBJECT.search(ctx.subject) or ctx.headers.get("TLS-Report-Domain"):
        signals.append("subject:report")
    return signals


__all__ = ["DETECTORS", "Context", "Finding", "Part", "first_finding", "header_signals"]
