"""Inbound policy: who a replier is to the mail they answer, whom a reply stops, what is never
a reply, and how long an out-of-office pauses an enrollment.

Everything here is pure: the engine gathers the facts from the store and asks these
functions what follows from them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from replytrack.headers import address_domain
from replytrack.store.records import ACTIVE, PAUSED, Enrollment, SentMessage

# Relations of the person who replied to the mail they answered.
ORIGINAL_RECIPIENT = "original_recipient"
CC = "cc"
SAME_DOMAIN = "other_address_same_domain"
OTHER = "other"

# Mailbox providers where a shared domain says nothing about a shared organisation: a reply
# from one gmail.com address must never stop everyone at gmail.com.
FREEMAIL_DOMAINS = frozenset(
    {
        "126.com",
        "139.com",
        "163.com",
        "abv.bg",
        "alice.it",
        "aliyun.com",
        "aol.com",
        "arcor.de",
        "att.net",
        "bellsouth.net",
        "bigpond.com",
        "bk.ru",
        "bluewin.ch",
        "bol.com.br",
        "btinternet.com",
        "charter.net",
        "comcast.net",
        "cox.net",
        "daum.net",
        "earthlink.net",
        "fastmail.com",
        "foxmail.com",
        "free.fr",
        "freenet.de",
        "gmail.com",
        "gmx.at",
        "gmx.ch",
        "gmx.com",
        "gmx.de",
        "gmx.fr",
        "gmx.net",
        "gmx.us",
        "googlemail.com",
        "hanmail.net",
        "hey.com",
        "hotmail.be",
        "hotmail.co.uk",
        "hotmail.com",
        "hotmail.de",
        "hotmail.es",
        "hotmail.fr",
        "hotmail.it",
        "hotmail.nl",
        "icloud.com",
        "inbox.lv",
        "inbox.ru",
        "interia.pl",
        "kpnmail.nl",
        "laposte.net",
        "libero.it",
        "list.ru",
        "live.be",
        "live.co.uk",
        "live.com",
        "live.de",
        "live.fr",
        "live.nl",
        "mac.com",
        "mail.com",
        "mail.ru",
        "mailbox.org",
        "me.com",
        "msn.cn",
        "msn.com",
        "naver.com",
        "ntlworld.com",
        "o2.pl",
        "onet.pl",
        "optusnet.com.au",
        "orange.fr",
        "outlook.com",
        "outlook.de",
        "outlook.fr",
        "outlook.it",
        "planet.nl",
        "pm.me",
        "posteo.de",
        "proton.ch",
        "proton.me",
        "protonmail.ch",
        "protonmail.com",
        "qq.com",
        "rambler.ru",
        "rediffmail.com",
        "rocketmail.com",
        "rogers.com",
        "sbcglobal.net",
        "seznam.cz",
        "sfr.fr",
        "shaw.ca",
        "sina.com",
        "sky.com",
        "skynet.be",
        "sohu.com",
        "sympatico.ca",
        "t-online.de",
        "talktalk.net",
        "telenet.be",
        "terra.com.br",
        "tiscali.it",
        "tuta.io",
        "tutanota.com",
        "uol.com.br",
        "verizon.net",
        "virgilio.it",
        "virginmedia.com",
        "wanadoo.fr",
        "web.de",
        "wp.pl",
        "xtra.co.nz",
        "ya.ru",
        "yahoo.ca",
        "yahoo.co.in",
        "yahoo.co.jp",
        "yahoo.co.uk",
        "yahoo.com",
        "yahoo.com.au",
        "yahoo.com.br",
        "yahoo.de",
        "yahoo.es",
        "yahoo.fr",
        "yahoo.it",
        "yandex.com",
        "yandex.ru",
        "yandex.ua",
        "yeah.net",
        "ymail.com",
        "ziggo.nl",
        "zoho.com",
        "zohomail.com",
    }
)

# At most this many enrollments change on one inbound mail: a thread with hundreds of
# recipients is rare, and the write transaction must stay short.
MAX_STOPS = 500


def is_freemail(domain: str, extra: Iterable[str] = ()) -> bool:
    """True when ``domain`` is a free-mail provider or below one (built-in plus configured).

    A subdomain counts too: ``eu.mail.example`` of a provider is still anyone's mailbox.
    """
    domain = domain.lower().rstrip(".")
    if not domain:
        return False
    providers = FREEMAIL_DOMAINS | {d.lower().strip(".") for d in extra if d.strip(".")}
    labels = domain.split(".")
    return any(".".join(labels[i:]) in providers for i in range(len(labels)))


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
