"""What a daemon's reload (SIGHUP) may change while it serves, and what waits for a restart.

Both daemons re-read their configuration on SIGHUP. Settings that name what is already open
(the listening socket, the store) cannot change under open sessions: a reload keeps their
running values and says in the log that the new ones take effect at the next restart.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from replytrack.config import Config, shown_db
from replytrack.config.mode import describe

log = logging.getLogger("replytrack")

# Setting -> its name in the config file, for both daemons.
COMMON_RESTART_ONLY = {"db": "db", "db_password_file": "db_password_file"}
PROXY_RESTART_ONLY = {
    **COMMON_RESTART_ONLY,
    "proxy_listen": "proxy.listen",
    "proxy_workers": "proxy.workers",
    "proxy_metrics_listen": "proxy.metrics_listen",
    "proxy_event_loop": "proxy.event_loop",
}
MILTER_RESTART_ONLY = {
    **COMMON_RESTART_ONLY,
    "milter_socket": "milter.socket",
    "milter_timeout": "milter.timeout",
    "milter_metrics_listen": "milter.metrics_listen",
}


def keep_restart_only(running: Config, new: Config, settings: Mapping[str, str]) -> Config:
    """``new`` with the ``settings`` that changed put back to their ``running`` values,
    each change logged as waiting for a restart. A change of ``mode`` (which a reload
    applies) is logged too."""
    say_mode(new, running)
    kept = {}
    for name, shown in settings.items():
        old_value, new_value = getattr(running, name), getattr(new, name)
        if old_value == new_value:
            continue
        kept[name] = old_value
        if name == "db":
            old_value, new_value = shown_db(old_value), shown_db(new_value)
        log.warning(
            "reload: %s changed (%r, running with %r); that takes a restart",
            shown,
            new_value,
            old_value,
        )
    return dataclasses.replace(new, **kept) if kept else new


def changed_settings(running: Config, new: Config) -> list[str]:
    """The names of the settings whose values differ (secrets' values are not shown)."""
    return [
        f.name
        for f in dataclasses.fields(Config)
        if f.name != "source" and getattr(running, f.name) != getattr(new, f.name)
    ]


def say_mode(config: Config, running: Config | None = None) -> None:
    """Log the mode at start (no ``running``) and when a reload changes it: the one line
    that tells a reader of the log whether mail was being stopped."""
    if running is None:
        log.info("%s", describe(config.mode))
    elif running.mode != config.mode:
        log.warning("reload: mode %s -> %s; %s", running.mode, config.mode, describe(config.mode))
