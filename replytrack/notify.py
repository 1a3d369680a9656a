"""The notification sender: delivers the outbox to webhooks, at least once per URL.

Every event recorded with ``notify=True`` gets an outbox row in the same transaction as the
event itself, so nothing the milter or the CLI decided can be recorded without being queued.
The sender leases due rows (so several senders, e.g. one in the milter and one in the proxy,
never post the same row at once), POSTs the event as JSON to every configured URL that has
not answered 2xx yet, and either marks the row delivered or schedules a retry with
exponential backoff and jitter. All state lives in the store, so a sender killed at any
moment loses nothing: its lease expires and the row is posted again (a receiver de-duplicates
on ``X-ReplyTrack-Event-Id``).

Each request carries

    X-ReplyTrack-Event-Id: <event id>
    X-ReplyTrack-Timestamp: <UNIX seconds>
    X-ReplyTrack-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with notify.secret>

A sender refuses to start without a secret unless ``notify.allow_unsigned`` says otherwise
(and then warns), and refuses a URL that could never be posted to; see
:func:`replytrack.config.notify_problems`. A URL may carry ``user:password@`` for HTTP Basic
authentication; the credentials go in the Authorization header and never into a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

from replytrack import __version__, metrics
from replytrack.config import Config, check_notify
from replytrack.store import Event, Store, StoreError
from replytrack.store.records import OutboxItem
from replytrack.wakeup import Wakeup

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-ReplyTrack-Signature"
TIMESTAMP_HEADER = "X-ReplyTrack-Timestamp"
EVENT_ID_HEADER = "X-ReplyTrack-Event-Id"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value: ``sha256=`` and the hex HMAC of ``timestamp.body``."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """True when ``signature`` is what ``sign`` gives (constant-time; for receivers and tests)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature.strip())


def payload(event: Event) -> dict[str, Any]:
    """The JSON document posted for an event (its keys are part of the webhook contract)."""
    return event.to_json()


def backoff(attempts: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``attempts`` failed attempts: exponential, capped, jittered.

    The jitter draws from the upper half of the window so a retry is never immediate, yet a
    crowd of rows that failed together (a receiver down) does not come back in lockstep.
    """
    window = min(cap, base * (2 ** max(attempts - 1, 0)))
    return (rng or random).uniform(window / 2, window)


def url_host(url: str) -> str:
    """The host (and port) of a webhook URL, for logs: never the path or credentials."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


@dataclass(frozen=True)
class PostResult:
    """What one POST got: ok (2xx), the HTTP status if any, and the error text if not ok."""

    ok: bool
    status: int | None
    error: str | None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would follow a 302 with a GET and drop the body, and a
    receiver that never saw the event would count as delivered."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


@dataclass(frozen=True)
class Webhook:
    """One configured webhook, ready to post to: ``url`` as configured (the outbox keeps
    which of them answered by it), ``target`` the same without ``user:password@``, and the
    Authorization header those credentials stand for (urllib does not use credentials
    written in a URL: it would look up "user:password@host" as a host name and fail)."""

    url: str
    target: str
    auth: dict[str, str]

    @classmethod
    def of(cls, url: str) -> Webhook:
        """Split ``url``'s credentials off, once, when the sender is configured."""
        parts = urllib.parse.urlsplit(url)
        if parts.username is None:
            return cls(url, url, {})
        bare = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return cls(url, bare, {"Authorization": f"Basic {token}"})


def post(hook: Webhook, body: bytes, headers: dict[str, str], timeout: float) -> PostResult:
    """POST ``body`` to ``hook``; any 2xx is success, everything else is a retryable failure."""
    request = urllib.request.Request(
        hook.target, data=body, headers={**headers, **hook.auth}, method="POST"
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(65536)
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return PostResult(False, exc.code, f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return PostResult(False, None, f"{type(exc).__name__}: {reason}")
    if 200 <= status < 300:
        return PostResult(True, status, None)
    return PostResult(False, status, f"HTTP {status}")


class Sender:
    """Delivers the outbox of one store to the configured webhooks.

    ``run`` loops until ``stop`` is called; ``deliver_due`` does one pass (for ``--once``
    and tests). Retries use ``retry_base`` doubling up to ``retry_cap`` seconds.

    Raises :class:`~replytrack.config.ConfigError` when the webhook settings cannot be used
    (a bad URL, no secret and unsigned delivery not allowed): better no sender than one
    that fails on every event, or one that posts events a receiver cannot authenticate.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        retry_base: float = 10.0,
        retry_cap: float = 3600.0,
        poll_interval: float = 2.0,
        owner: str | None = None,
    ) -> None:
        check_notify(config)
        self.config = config
        self.store = store
        self.urls = list(config.notify_webhooks)
        self.webhooks = [Webhook.of(url) for url in self.urls]
        self.signed = bool(config.notify_secret.strip())
        if self.urls and not self.signed:
            log.warning(
                "notify: notify.secret is empty and notify.allow_unsigned is set: webhooks to"
                " %s go out UNSIGNED; receivers cannot tell them from forged requests",
                ", ".join(url_host(url) for url in self.urls),
            )
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.poll_interval = poll_interval
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # A lease must outlast the slowest pass over one row: every URL timing out.
        self.lease_seconds = config.notify_timeout * max(len(self.urls), 1) + 5.0
        # Set by stop(), which takes no lock: ``replytrack notify`` calls it from a signal
        # handler, which runs in the very thread that sleeps in run() (see replytrack.wakeup).
        self._stopping = False
        self._wakeup: Wakeup | None = None
        self._rng = random.Random()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Run ``run`` in a daemon thread."""
        self.thread = threading.Thread(target=self.run, name="replytrack-notify", daemon=True)
        self.thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask ``run`` to return after the row in hand; wait for the thread if one runs.

        Safe in a signal handler when ``run`` is not in a thread of its own (no wait then).
        """
        self._stopping = True
        # run() sets _wakeup before it first looks at _stopping: either it sees the flag or
        # this sees its wakeup.
        wakeup = self._wakeup
        if wakeup is not None:
            wakeup.nudge()
        if self.thread is not None:
            self.thread.join(timeout)

    def _headers(self, item: OutboxItem, body: bytes) -> dict[str, str]:
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"replytrack/{__version__}",
            EVENT_ID_HEADER: str(item.event.id),
            TIMESTAMP_HEADER: timestamp,
        }
        if self.signed:
            headers[SIGNATURE_HEADER] = sign(self.config.notify_secret, timestamp, body)
        return headers

    def deliver(self, item: OutboxItem) -> bool:
        """Post one leased row to every URL still owed it; True when all have it now."""
        body = json.dumps(payload(item.event), sort_keys=True).encode("utf-8")
        attempt = item.attempts + 1
        errors: list[str] = []
        for hook in self.webhooks:
            url = hook.url
            if url in item.delivered_urls:
                continue
            result = post(hook, body, self._headers(item, body), self.config.notify_timeout)
            outcome = "delivered" if result.ok else "failed"
            log.log(
                logging.INFO if result.ok else logging.WARNING,
                "notify event=%s kind=%s outbox=%d url_host=%s attempt=%d result=%s status=%s%s",
                item.event.id,
                item.event.kind,
                item.id,
                url_host(url),
                attempt,
                outcome,
                result.status if result.status is not None else "-",
                f" error={result.error!r}" if result.error else "",
            )
            metrics.NOTIFY_ATTEMPTS.labels(result=outcome).inc()
            if result.ok:
                self.store.mark_outbox_url_delivered(item.id, url, time.time())
            else:
                errors.append(f"{url_host(url)}: {result.error}")
        now = time.time()
        if not errors:
            self.store.finish_outbox_attempt(item.id, self.owner, now=now, delivered=True)
            return True
        dead = attempt >= self.config.notify_max_attempts
        delay = backoff(attempt, base=self.retry_base, cap=self.retry_cap, rng=self._rng)
        self.store.finish_outbox_attempt(
            item.id,
            self.owner,
            now=now,
            delivered=False,
            next_attempt_at=now + delay,
            error="; ".join(errors)[:1000],
            dead=dead,
        )
        if dead:
            metrics.NOTIFY_DEAD.inc()
            log.error(
                "notify event=%s outbox=%d dead after %d attempts: %s",
                item.event.id,
                item.id,
                attempt,
                "; ".join(errors),
            )
        return False

    def deliver_due(self, limit: int = 100) -> int:
        """Deliver rows that are due now, one lease at a time; returns how many were tried."""
        tried = 0
        while tried < limit and not self._stopping:
            items = self.store.claim_outbox(
                self.owner, now=time.time(), lease_seconds=self.lease_seconds, limit=1
            )
            if not items:
                break
            for item in items:
                self.deliver(item)
                tried += 1
        self.update_backlog()
        return tried

    def update_backlog(self) -> None:
        """Set the outbox backlog gauge from the store."""
        try:
            metrics.OUTBOX_BACKLOG.set(self.store.outbox_counts()["pending"])
        except StoreError as exc:
            log.warning("notify: cannot read outbox backlog: %s", exc)

    def run(self) -> None:
        """Deliver until stopped; store errors are logged and retried, never fatal."""
        log.info(
            "notify sender %s started: %d webhook(s), %s, max %d attempts",
            self.owner,
            len(self.urls),
            "signed" if self.signed else "UNSIGNED",
            self.config.notify_max_attempts,
        )
        with Wakeup() as wakeup:
            self._wakeup = wakeup
            while not self._stopping:
                try:
                    self.deliver_due()
                except StoreError as exc:
                    metrics.STORE_ERRORS.labels(component="notify").inc()
                    log.warning("notify: store unavailable, retrying: %s", exc)
                except Exception:
                    # The sender runs inside the milter and the proxy: a bug here must not
                    # end notifications silently, nor take the daemon down. The row's lease
                    # expires and it is tried again.
                    log.exception("notify: unexpected error, retrying")
                wakeup.sleep(self.poll_interval)
        log.info("notify sender %s stopped", self.owner)


def start_sender_thread(config: Config, store: Store, **options: Any) -> Sender | None:
    """Run a sender in a daemon thread beside a daemon (milter, proxy); None if no webhooks.

    Several senders on one store are safe: rows are leased. Call ``stop()`` on the result
    at shutdown. Raises ``ConfigError`` as :class:`Sender` does; a daemon checks the same
    with :func:`~replytrack.config.check_notify` before it opens anything.
    """
    if not config.notify_webhooks:
        log.info("notify: no webhooks configured; events stay in the outbox")
        return None
    sender = Sender(config, store, **options)
    sender.start()
    return sender
