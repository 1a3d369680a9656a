"""A person's mail as the classifier tests build it: headers and body of a reply (or not)
to one of our stamped Message-IDs."""

from __future__ import annotations

# The stamped Message-ID a test reply answers.
OUR_ID = "tok3n.abc@mail.example.com"


def message(
    subject: str,
    body: str,
    *,
    sender: str = "Erika Mustermann <erika@example.de>",
    extra: list[tuple[str, str]] | None = None,
    content_type: str = "text/plain; charset=utf-8",
    reply: bool = True,
) -> tuple[list[tuple[str, str]], bytes]:
    """``subject`` and ``body`` from ``sender``: a reply to OUR_ID unless ``reply`` is False."""
    headers = [
        ("From", sender),
        ("To", "Sam Seller <sam@example.com>"),
        ("Subject", subject),
        ("Date", "Mon, 02 Mar 2026 09:15:00 +0100"),
        ("Message-ID", "<reply-1@example.de>"),
        ("MIME-Version", "1.0"),
        ("Content-Type", content_type),
    ]
    if reply:
        headers += [("In-Reply-To", f"<{OUR_ID}>"), ("References", f"<{OUR_ID}>")]
    headers += extra or []
    return headers, body.encode("utf-8")
