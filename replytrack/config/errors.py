"""The one error of the configuration layer."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration value or file is unusable; the message says which and why."""
