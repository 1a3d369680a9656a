"""Challenge-response systems: the sender is asked to confirm being a person or to be
allow-listed before the mail is delivered.

Checked before delivery reports because some (Boxbe) send the challenge in the shape of a
delivery report with a transient status.
"""

from __future__ import annotations

import re

from .. import _patterns as pat
from ._context import MAX_IDS, Context, Finding, threading_ids, unique
from ._reports import returned_ids

_LINK = re.compile(r"https?://", re.I)
# Characters of own text read: a challenge says what it wants at once.
_WINDOW = 6000


def check(ctx: Context) -> Finding | None:
    """A link and the wording of a challenge in the mail's own text."""
    # The link is the cheap test (a plain substring search first, in the text as it
    # came, before quoted lines are taken out); the wording is only looked for when
    # there is one.
    if "://" not in ctx.own_text:
        return None
    window = ctx.head(_WINDOW)
    if "://" not in window or _LINK.search(window) is None:
        return None
    if not pat.CHALLENGE_BODY_SET.hits(window):
        return None
    return Finding(
        "auto_reply",
        "challenge_response",
        ["body:challenge-response"],
        referenced_ids=unique([*threading_ids(ctx), *returned_ids(ctx)], MAX_IDS),
    )


def signals(ctx: Context) -> list[str]:
    """None: a challenge is only known by its wording."""
    return []
