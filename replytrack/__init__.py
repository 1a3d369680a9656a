"""replytrack: reply tracking for outbound campaign mail, at the mail server."""

from __future__ import annotations

__version__ = "0.1.0"
