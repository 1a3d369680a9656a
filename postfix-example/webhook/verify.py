#!/usr/bin/env python3
"""Verify a replytrack webhook request (Python 3, standard library only).

In a receiver, call ``verify(secret, headers, body)`` with the raw request body (the bytes,
before any JSON parsing). From a shell, for a test:

    WEBHOOK_SECRET=... python3 verify.py TIMESTAMP SIGNATURE < body.json

exits 0 when the signature is good and the timestamp fresh, 1 otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import time

MAX_AGE = 300  # seconds; older requests are refused as possible replays


def verify(
    secret: str, timestamp: str, signature: str, body: bytes, now: float | None = None
) -> bool:
    """True when ``signature`` (X-ReplyTrack-Signature) is the HMAC-SHA256 of
    ``timestamp + "." + body`` under ``secret`` and the timestamp is recent."""
    if not timestamp.isdigit() or abs((now or time.time()) - int(timestamp)) > MAX_AGE:
        return False
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest("sha256=" + mac.hexdigest(), signature.strip())


if __name__ == "__main__":
    good = verify(os.environ["WEBHOOK_SECRET"], sys.argv[1], sys.argv[2], sys.stdin.buffer.read())
    print("valid" if good else "INVALID")
    sys.exit(0 if good else 1)
