"""Logging for the daemons (the CLI's commands and the proxy's worker processes alike).

One handler on the root logger, set up again at each reload: stderr (the journal under
systemd) or syslog through ``/dev/log`` with a facility (``mail`` puts our lines beside
Postfix's in mail.log). Under systemd journald stamps every line with the time, and so does
syslog, so then our own time stamp is left out rather than shown twice.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from replytrack.config import Config

SYSLOG_SOCKET = "/dev/log"
# The syslog tag: "replytrack[PID]: ..." as every other daemon's lines read.
SYSLOG_IDENT = "replytrack"

_STAMPED = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PLAIN = "%(levelname)s %(name)s: %(message)s"

# The handler we installed, replaced (not added to) when the settings change.
_installed: logging.Handler | None = None


def under_journal() -> bool:
    """Whether stderr is connected to the journal (systemd sets ``JOURNAL_STREAM`` to the
    device and inode of the stream it gave us; a redirected stderr no longer matches)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def _stderr_handler(fmt: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    stamped = fmt == "timestamped" or (fmt == "auto" and not under_journal())
    handler.setFormatter(logging.Formatter(_STAMPED if stamped else _PLAIN))
    return handler


def _syslog_handler(facility: str) -> logging.Handler:
    code = logging.handlers.SysLogHandler.facility_names[facility]
    handler = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET, facility=code)
    handler.ident = f"{SYSLOG_IDENT}[{os.getpid()}]: "
    # syslog stamps the time and the host itself.
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    return handler


def setup_logging(
    level: str, *, target: str = "stderr", fmt: str = "auto", facility: str = "mail"
) -> None:
    """Log at ``level`` to ``target`` ("stderr" or "syslog"); calling it again replaces
    the earlier setup (a reload). Raises OSError when syslog's socket cannot be reached."""
    global _installed
    handler = _syslog_handler(facility) if target == "syslog" else _stderr_handler(fmt)
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
        _installed.close()
    root.addHandler(handler)
    _installed = handler
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def setup_from(config: Config) -> None:
    """:func:`setup_logging` with the ``log_*`` settings of ``config``."""
    setup_logging(
        config.log_level,
        target=config.log_target,
        fmt=config.log_format,
        facility=config.log_facility,
    )
