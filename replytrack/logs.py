"""Logging for the daemons (the CLI's commands and the proxy's worker processes alike)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str) -> None:
    """Logging for daemons: one line per record on stderr (systemd adds the time)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
