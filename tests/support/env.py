"""The environment a replytrack process started by a test or a benchmark gets.

Never the developer's ``REPLYTRACK_*`` settings, and never a config file: ``REPLYTRACK_CONFIG
=none`` keeps an installed ``/etc/replytrack/replytrack.toml`` (its ports, domains, key) out
of every run. ``tests/conftest.py`` sets the same in ``os.environ`` for in-process runs.
"""

from __future__ import annotations

import os

from replytrack.config import NO_CONFIG

NO_CONFIG_ENV = {"REPLYTRACK_CONFIG": NO_CONFIG}


def clean_environ(**settings: str) -> dict[str, str]:
    """``os.environ`` without ``REPLYTRACK_*`` variables, reading no config file, plus
    ``settings`` (``REPLYTRACK_DB=...``)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTRACK_")}
    return {**environ, **NO_CONFIG_ENV, **settings}
