"""Inbound policy: who a replier is to the mail they answer, whom a reply stops, what is never
a reply, and how long an out-of-office pauses an enrollment.

Everything here is pure: the engine gathers the facts from the store and asks these
functions what follows from them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from replytrack.headers import address_domain
from replytrack.store.base import ACTIVE, PAUSED, Enrollment, SentMessage

# Relations of the person who replied to the mail they answered.
ORIGINAL_RECIPIENT = "original_recipient"
CC = "cc"
SAME_DOMAIN = "other_address_same_domain"
OTHER = "other"

# Mailbox providers where a shared domain says nothing about a shared organisation: a reply
# from one gmail.com address must never stop everyone at gmail.com.
FREEMAIL_DOMAINS = frozenset(
    {
        "aol.com",
        "gmail.com",
        "googlemail.com",
        "gmx.at",
        "gmx.ch",
        "gmx.com",
        "gmx.de",
        "gmx.net",
        "hotmail.co.uk",
        "hotmail.com",
        "hotmail.de",
        "hotmail.fr",
        "icloud.com",
        "laposte.net",
        "libero.it",
        "live.com",
        "mac.com",
        "mail.com",
        "mail.ru",
        "me.com",
        "msn.com",
        "orange.fr",
        "outlook.com",
        "outlook.de",
        "pm.me",
        "proton.me",
        "protonmail.com",
        "qq.com",
        "t-online.de",
        "tutanota.com",
        "web.de",
        "yahoo.co.uk",
        "yahoo.com",
        "yahoo.de",
        "yahoo.fr",
        "yandex.com",
        "yandex.ru",
        "ymail.com",
        "zoho.com",
    }
)

# At most this many enrollments change on one inbound mail: a thread with hundreds of
# recipients is rare, and the write transaction must stay short.
MAX_STOPS = 500


def is_freemail(domain: str, extra: Iterable[str] = ()) -> bool:
    """True when ``domain`` is a free-mail provider (built-in list plus configured ones)."""
    domain = domain.lower()
    return domain in FREEMAIL_DOMAINS or domain in {d.lower() for d in extra}


def is_internal(address: str, internal_domains: Iterable[str]) -> bool:
    """True when ``address`` belongs to one of the configured internal domains (or below)."""
    domain = address_domain(address)
    if not domain:
        return False
    for internal in internal_domains:
        internal = internal.lower().lstrip(".")
        if internal and (domain == internal or domain.endswith("." + internal)):
            return True
    return False


def relation(replier: str, sent: SentMessage, freemail: Iterable[str] = ()) -> str:
    """How ``replier`` stands to the mail ``sent``: addressed, CC'd, a colleague, or other.

    A recipient in To or only in the envelope (Bcc) is the original recipient. Another
    address at a recipient's domain is a colleague or the same person's other address,
    except at free-mail providers, where the domain says nothing.
    """
    replier = replier.lower()
    for recipient in sent.recipients:
        if recipient.address == replier:
            return CC if recipient.role == "cc" else ORIGINAL_RECIPIENT
    domain = address_domain(replier)
    if domain and not is_freemail(domain, freemail):
        for recipient in sent.recipients:
            if address_domain(recipient.address) == domain:
                return SAME_DOMAIN
    return OTHER


def _stoppable(enrollment: Enrollment) -> bool:
    # A bounced address stays bounced, an already stopped one needs no second stop.
    return enrollment.status in (ACTIVE, PAUSED)


def stop_targets(
    scope: str,
    *,
    sent: SentMessage,
    replier: str,
    enrollments: Sequence[Enrollment],
    domain_enrollments: Sequence[Enrollment] = (),
    freemail: Iterable[str] = (),
) -> tuple[str, list[str]]:
    """Which recipients a reply to ``sent`` stops in its campaign, and the scope applied.

    ``enrollments`` are the campaign's enrollments of the matched mail's recipients and of
    the replier; ``domain_enrollments`` those at the replier's domain (for scope domain).

    - ``recipient``: the replier when enrolled, otherwise the mail's To recipients (a reply
      from the prospect's other address still stops the prospect); a replier only CC'd
      stops the To recipients as well.
    - ``thread``: every recipient of the matched mail, plus the replier when enrolled.
    - ``domain``: everyone in the campaign at the replier's domain plus the thread; at
      free-mail domains this falls back to ``thread``.
    Only active or paused enrollments are stopped. Returns (scope used, addresses).
    """
    replier = replier.lower()
    by_address = {e.recipient: e for e in enrollments if e.campaign == sent.campaign}
    thread = [r.address for r in sent.recipients if r.status == "sent"]
    if scope == "domain" and is_freemail(address_domain(replier), freemail):
        scope = "thread"
    wanted: list[str]
    if scope == "recipient":
        addressed = [r.address for r in sent.recipients if r.role == "to" and r.status == "sent"]
        cc_only = replier not in addressed and any(
            r.address == replier and r.role == "cc" for r in sent.recipients
        )
        if replier in by_address:
            # A reply from someone only CC'd still answers the mail: its To recipients
            # are stopped too.
            wanted = [replier, *addressed] if cc_only else [replier]
        else:
            wanted = addressed
    elif scope == "domain":
        wanted = [*thread, replier, *(e.recipient for e in domain_enrollments)]
        by_address.update({e.recipient: e for e in domain_enrollments})
    else:
        scope = "thread"
        wanted = [*thread, replier]
    targets: list[str] = []
    for address in dict.fromkeys(wanted):
        enrollment = by_address.get(address)
        if enrollment is not None and _stoppable(enrollment):
            targets.append(address)
        if len(targets) >= MAX_STOPS:
            break
    return scope, targets


def pause_until(
    return_date: dt.date | None,
    *,
    now: float,
    default_days: int,
    max_days: int,
) -> float | None:
    """When an out-of-office pause ends (UNIX time), or None when the person is back already.

    A readable return date pauses until the start of that day (UTC), capped at
    ``max_days``; no date gives ``default_days``.
    """
    cap = now + max_days * 86400
    if return_date is None:
        return min(now + default_days * 86400, cap)
    start = dt.datetime.combine(return_date, dt.time(0, 0), tzinfo=dt.UTC).timestamp()
    if start <= now:
        return None
    return min(start, cap)
