"""Outbound records and inbound mails for the milter's tests: what the proxy would have
recorded (a minted Message-ID, recipients, a campaign) and replies to it."""

from __future__ import annotations

import time
from email.utils import formatdate

from replytrack.milter.engine import Inbound
from replytrack.store import OutboundRecipient, OutboundRecord, Store
from replytrack.store.records import ThreadRoot
from replytrack.tokens import Keyring, mint

DOMAIN = "track.example.com"


def record_mail(
    store: Store,
    message_id: str,
    campaign: str | None,
    *recipients: str,
    sender: str = "sales@example.com",
    at: float | None = None,
    subject: str = "Hello",
    thread: ThreadRoot | None = None,
) -> str:
    """Record one relayed campaign mail with this Message-ID to these To: recipients, as the
    proxy does; ``at`` defaults to now; ``thread``: the Thread-Index root a threaded step
    keeps on its enrollment. Returns the Message-ID."""
    store.record_outbound(
        OutboundRecord(
            message_id=message_id,
            original_message_id=None,
            campaign=campaign,
            step=1,
            sender=sender,
            from_address=sender,
            subject=subject,
            size=100,
            status="relayed",
            recipients=tuple(OutboundRecipient(a, "to", True) for a in recipients),
            created_at=time.time() if at is None else at,
            thread=thread,
        )
    )
    return message_id


def record_sent(
    store: Store,
    keyring: Keyring,
    *,
    to: list[str],
    cc: list[str] = (),  # type: ignore[assignment]
    campaign: str | None = "spring",
    step: int = 1,
    original: str | None = None,
    sender: str = "sales@vendor.example",
    domain: str = DOMAIN,
) -> str:
    """Record one outbound mail as the proxy does; returns its stamped Message-ID."""
    message_id = mint(keyring, domain)
    recipients = [OutboundRecipient(a, "to", True) for a in to]
    recipients += [OutboundRecipient(a, "cc", True) for a in cc]
    store.record_outbound(
        OutboundRecord(
            message_id=message_id,
            original_message_id=original,
            campaign=campaign,
            step=step,
            sender=sender,
            from_address=sender,
            subject="Hello",
            size=1000,
            status="relayed",
            recipients=tuple(recipients),
            created_at=time.time() - 60,
        )
    )
    return message_id


def reply_headers(
    sender: str,
    *,
    in_reply_to: str | None = None,
    references: str | None = None,
    message_id: str | None = "<reply-1@prospect.example>",
    subject: str = "Re: Hello",
    extra: list[tuple[str, str]] = (),  # type: ignore[assignment]
) -> list[tuple[str, str]]:
    """Headers of a person's reply."""
    headers = [
        ("From", f"Prospect <{sender}>"),
        ("To", "sales@vendor.example"),
        ("Subject", subject),
        ("Date", formatdate(localtime=False)),
    ]
    if message_id:
        headers.append(("Message-ID", message_id))
    if in_reply_to:
        headers.append(("In-Reply-To", in_reply_to))
    if references:
        headers.append(("References", references))
    return headers + list(extra)


def inbound(
    sender: str, headers: list[tuple[str, str]], *, body: bytes | None = b"Thanks, call me.\n"
) -> Inbound:
    """An inbound mail from ``sender`` with these headers."""
    return Inbound(
        envelope_from=sender,
        recipients=["sales@vendor.example"],
        headers=headers,
        body=body,
        queue_id="TESTQID",
    )
