"""Webhook settings, checked by the processes that send webhooks and by doctor."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import TYPE_CHECKING

from replytrack.config.errors import ConfigError

if TYPE_CHECKING:
    from replytrack.config import Config

# --- notifications (checked by the processes that send webhooks, and by doctor) -------------

# A host name label as resolvers take it: underscores occur in internal names.
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def redact_url(url: str) -> str:
    """A webhook URL fit for logs and messages: user and password, query and fragment hidden.

    Works on the text, not on a parse, so that a URL too broken to parse is still shown
    without the credentials it may carry.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    tail = tail.partition("#")[0]
    path, qmark, _ = tail.partition("?")
    return f"{scheme}{sep}{authority}{path}{qmark and '?***'}"


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be posted to, or None when it can.

    These are the URLs that urllib would only refuse when the first event is sent, which
    may be days after a deployment; a daemon refuses them at start instead.
    """
    if not url.isascii() or any(ch.isspace() or not ch.isprintable() for ch in url):
        return "has spaces, control or non-ASCII characters (percent-encode them)"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        return f"cannot be read as a URL ({exc})"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if parts.scheme not in ("http", "https"):
        return "is not an http:// or https:// URL"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return "names no host"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")) or len(host) > 253:
            return f"has an invalid host {host!r}"
    if port == 0:
        return "has an invalid port (1 to 65535)"
    return None


def notify_problems(config: Config) -> list[str]:
    """What stops webhooks from being sent as configured, one line each; empty when fine.

    Settings that only a sender uses are checked by senders (``milter``, ``proxy``,
    ``notify``) and reported by ``doctor``, not by every command that reads the config.
    No line shows the secret, nor credentials carried in a URL.
    """
    problems = []
    for url in config.notify_webhooks:
        why = webhook_url_problem(url)
        if why:
            problems.append(f"notify.webhooks: {redact_url(url)!r} {why}")
    secret = config.notify_secret.strip() or config.notify_secret_file
    unsigned = config.notify_webhooks and not secret
    if unsigned and not config.notify_allow_unsigned:
        problems.append(
            "notify.secret is not set, so webhooks would go out unsigned: set notify.secret"
            " (or REPLYTRACK_NOTIFY_SECRET), or notify.allow_unsigned = true to send"
            " them unsigned anyway"
        )
    if not config.notify_timeout > 0:
        problems.append(f"notify.timeout: {config.notify_timeout} is not a positive number")
    if config.notify_max_attempts < 1:
        problems.append(f"notify.max_attempts: {config.notify_max_attempts} is not 1 or more")
    return problems


def check_notify(config: Config) -> None:
    """Raise :class:`ConfigError` with the first of :func:`notify_problems`, if any."""
    problems = notify_problems(config)
    if problems:
        raise ConfigError(problems[0])


