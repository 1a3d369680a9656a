"""What a campaign engine is told when some or all recipients of a mail may not get it now.
Pure: no I/O.

SMTP gives one reply per mail, after DATA, and the proxy learns a mail's campaign only from
its headers, after DATA: it cannot answer each recipient on its own at RCPT time. So:

- nobody may get the mail, and someone is only **paused** (out of office until a date, or
  the whole campaign braked by its bounces): ``450``, naming the date or the brake, and
  nothing is recorded. A 4xx tells every SMTP client to keep the mail and try again later
  (RFC 5321 4.2.1); 450 is the reply RFC 5321 names for a mailbox temporarily unavailable
  "for policy reasons", and it may answer DATA. The retry after the date goes through, and
  a stopped recipient among them is then suppressed as usual;
- nobody may get the mail and nobody is only paused (stopped, bounced, do-not-contact, a
  stopped campaign): ``550 5.7.1``, as before (``recipients.suppressed_reply``);
- somebody may get it: they do, and the ``250`` says how many of how many and why the
  others did not (:func:`relayed_note`). A paused recipient among the others is left out
  (recorded as suppressed) rather than holding the mail back from the rest: the engine
  reads the note and sends that step to them again after the date.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence

from replytrack.store import PAUSED, Enrollment
from replytrack.store.records import CAMPAIGN_BRAKED, DO_NOT_CONTACT

# Paused recipients a 450 names one by one; more are counted.
_NAMED = 3


def _date(until: float | None) -> str:
    """A pause's end as a UTC date, or how it ends when it has none."""
    if until is None:
        return "resumed by hand"
    return dt.datetime.fromtimestamp(until, dt.UTC).date().isoformat()


def _braked(enrollment: Enrollment) -> bool:
    return (enrollment.reason or "").startswith(CAMPAIGN_BRAKED)


def deferral(campaign: str | None, blocked: Mapping[str, Enrollment]) -> str | None:
    """The 450 for a mail none of whose recipients may get it now, when some of them may
    later (paused, or the campaign braked); None when none of them may ever (the caller's
    550)."""
    paused = sorted((a, e) for a, e in blocked.items() if e.status == PAUSED)
    if not paused:
        return None
    braked = [e for _, e in paused if _braked(e)]
    if braked:
        why = (braked[0].reason or "")[len(CAMPAIGN_BRAKED) :].lstrip(": ")
        return (
            f"450 4.7.1 not sent now: campaign {campaign} is braked"
            + (f" ({why})" if why else "")
            + f"; it resumes with `replytrack resume --campaign {campaign}`"
        )
    named = "; ".join(
        f"{a} paused until {_date(e.until)}" + (f" ({e.reason})" if e.reason else "")
        for a, e in paused[:_NAMED]
    )
    more = f"; and {len(paused) - _NAMED} more" if len(paused) > _NAMED else ""
    return f"450 4.2.1 not sent now: campaign {campaign}: {named}{more}; try again after then"


def _label(enrollment: Enrollment) -> str:
    if (enrollment.reason or "").startswith(DO_NOT_CONTACT):
        return DO_NOT_CONTACT
    return enrollment.status


def relayed_note(accepted: int, send_to: Sequence[str], blocked: Mapping[str, Enrollment]) -> str:
    """The part of the 250 that says who did not get the mail: `` to 2 of 3 recipients
    (1 suppressed: stopped; 1 paused until 2026-12-10, not sent)``; empty when all did."""
    if not blocked or len(send_to) >= accepted:
        return ""
    paused = Counter(_date(e.until) for e in blocked.values() if e.status == PAUSED)
    others = [e for e in blocked.values() if e.status != PAUSED]
    parts = []
    if others:
        labels = ", ".join(sorted({_label(e) for e in others}))
        parts.append(f"{len(others)} suppressed: {labels}")
    for date, count in sorted(paused.items()):
        parts.append(f"{count} paused until {date}, not sent")
    return f" to {len(send_to)} of {accepted} recipients ({'; '.join(parts)})"
