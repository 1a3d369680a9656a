"""The detectors, one kind of automated mail each, and the order they run in.

Each detector module has a ``check`` that reads a :class:`Context` and returns a
:class:`Finding` (kind, subtype, the evidence that decided, and the details it could read:
referenced Message-IDs, failed recipients, permanence) or None, and a ``signals`` that says
from the headers alone whether the body is worth reading for it. :data:`DETECTORS` is the
table; the first finding wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .._mime import MailView
from . import (
    acknowledgement,
    auto_reply,
    challenge,
    delivery_status,
    feedback,
    mailer_daemon,
    prose_bounce,
    read_receipt,
)
from ._context import Context, Finding


@dataclass(frozen=True)
class Detector:
    """One detector: its check and its header-only signals."""

    check: Callable[[Context], Finding | None]
    signals: Callable[[Context], list[str]]


# Reports with a machine-readable structure come first because their structure is proof;
# wording-based detectors follow from the most to the least specific. A challenge comes
# before delivery reports because some are shaped like one. An acknowledgement comes before
# the prose bounce and MAILER-DAEMON detectors: one from a null sender is no bounce unless
# it says why delivery failed (it then declines and they decide).
DETECTORS: tuple[Detector, ...] = (
    Detector(challenge.check, challenge.signals),
    Detector(delivery_status.check, delivery_status.signals),
    Detector(read_receipt.check, read_receipt.signals),
    Detector(feedback.check, feedback.signals),
    Detector(acknowledgement.check, acknowledgement.signals),
    Detector(prose_bounce.check, prose_bounce.signals),
    Detector(auto_reply.check, auto_reply.signals),
    Detector(mailer_daemon.check, mailer_daemon.signals),
)


def first_finding(ctx: Context) -> Finding | None:
    """Run the detectors in order and return the first finding."""
    for detector in DETECTORS:
        finding = detector.check(ctx)
        if finding is not None:
            return finding
    return None


def header_signals(view: MailView, envelope_from: str | None) -> list[str]:
    """The first detector's signals, in the headers alone, that the mail may be automated
    (empty when none has any: the body need not be read)."""
    ctx = Context.build(view, envelope_from)
    return next((found for detector in DETECTORS if (found := detector.signals(ctx))), [])


__all__ = ["DETECTORS", "Context", "Detector", "Finding", "first_finding", "header_signals"]
