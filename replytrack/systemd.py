"""Telling systemd how a daemon is doing (``Type=notify``): ready, reloading, stopping.

The protocol is one datagram of ``KEY=value`` lines to the unix socket named by
``NOTIFY_SOCKET`` (sd_notify(3) documents it as stable, for implementations like this one).
The only pure-Python package for it on PyPI, ``sdnotify``, has had no release since 2017;
the C bindings need libsystemd headers to build. A dozen lines of our own need neither.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("replytrack")


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``) to the service manager; False when there is
    none (not started by systemd) or it cannot be reached. Never raises: a daemon must
    run the same with or without systemd."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or not lines:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as exc:
        log.warning("cannot tell systemd %s: %s", lines[0], exc)
        return False
    return True


def ready(status: str = "") -> bool:
    """Serving now: systemd starts the units ordered after this one."""
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    """A reload began; ``ready()`` ends it. The time stamp is what systemd 253 and later
    ask for to tell one reload from the next."""
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={now}")


def stopping() -> bool:
    """Shutting down: finishing open work, then exiting."""
    return notify("STOPPING=1")
