"""The Message-IDs a mail answers, in order of strength.

In-Reply-To names the mail answered; References lists the thread oldest first, so its
last ID is the mail answered and earlier ones are older steps. The matcher looks these up
in this order, and the detectors report them as the mail an automated reply refers to.
"""

from __future__ import annotations

from collections.abc import Sequence

from replytrack.headers import extract_msgids

IN_REPLY_TO = "in-reply-to"
REFERENCES = "references"

# Bounds against hostile headers: a real mail has one In-Reply-To with one or two IDs and
# one References header.
MAX_HEADER_FIELDS = 4
MAX_IN_REPLY_TO_IDS = 16


def answered_ids(
    in_reply_to: Sequence[str], references: Sequence[str], *, limit: int
) -> list[tuple[str, str]]:
    """(Message-ID, header) pairs from In-Reply-To, then References newest first.

    The values are the headers' values in order; each ID appears once, where it is
    strongest. At most ``limit`` references are taken, the newest.
    """
    ordered: list[tuple[str, str]] = []
    for value in in_reply_to[:MAX_HEADER_FIELDS]:
        ordered += [(i, IN_REPLY_TO) for i in extract_msgids(value, limit=MAX_IN_REPLY_TO_IDS)]
    chain: list[str] = []
    for value in references[:MAX_HEADER_FIELDS]:
        # The whole chain (bounded by extract_msgids), so that the newest are among it.
        chain += extract_msgids(value)
    ordered += [(i, REFERENCES) for i in reversed(chain[-limit:])]
    strongest: dict[str, str] = {}
    for message_id, source in ordered:
        strongest.setdefault(message_id, source)
    return list(strongest.items())
