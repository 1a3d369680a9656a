"""What every doctor check shares: the finding, its statuses, and socket comparisons."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from replytrack.milter.socket_spec import parse_socket_spec

OK, WARN, FAIL = "OK", "WARN", "FAIL"
# Neither right nor wrong, but worth knowing: monitor mode, chosen on purpose for a while.
INFO = "INFO"
CHECKS = (
    "config",
    "secret",
    "store",
    "journal",
    "outbox",
    "relaying",
    "proxy",
    "milter",
    "postfix",
)
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "localhost.localdomain"}
_ANY = {"", "0.0.0.0", "::", "*"}


@dataclass(frozen=True)
class Finding:
    """One result of a check."""

    status: str
    check: str
    message: str
    fix: str = ""


def same_host(a: str, b: str) -> bool:
    """True when two listener hosts are the same for our purposes (loopback aliases, any)."""
    a, b = a.lower().strip("[]"), b.lower().strip("[]")
    if a == b or a in _ANY or b in _ANY:
        return True
    return a in _LOOPBACK and b in _LOOPBACK


def same_socket(a: str, b: str) -> bool:
    """True when two socket specs (either syntax) name the same listener."""
    try:
        fa, ha, pa = parse_socket_spec(a)
        fb, hb, pb = parse_socket_spec(b)
    except ValueError:
        return False
    if fa != fb:
        return False
    if fa == "unix":
        return os.path.normpath(ha) == os.path.normpath(hb)
    return pa == pb and same_host(ha, hb)


def connect_host(host: str) -> str:
    """Where to connect for a listener bound to ``host`` (a wildcard is reached on loopback)."""
    return "127.0.0.1" if host in _ANY else host


def reachable(spec: str, timeout: float = 2.0) -> str | None:
    """None when something accepts a connection on ``spec``, else why not."""
    try:
        family, host, port = parse_socket_spec(spec)
    except ValueError as exc:
        return str(exc)
    try:
        if family == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(host)
        else:
            with socket.create_connection((connect_host(host), port), timeout=timeout):
                pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
