"""Configuration: a TOML file, overridden by ``REPLYTRACK_*`` variables, then by flags.

Settings are one flat namespace. In the TOML file a table prefixes its keys, so

    [proxy]
    listen = "127.0.0.1:10025"

sets ``proxy_listen``, which the environment variable ``REPLYTRACK_PROXY_LISTEN`` and the
flag ``--listen`` of ``replytrack proxy`` override. Top-level keys (``db``, ``domain``) map
to ``REPLYTRACK_DB`` and ``REPLYTRACK_DOMAIN``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "REPLYTRACK_"
DEFAULT_CONFIG_PATHS = (Path("replytrack.toml"), Path("/etc/replytrack/replytrack.toml"))


# More proxy processes than this only add SQLite write contention.
MAX_PROXY_WORKERS = 64


class ConfigError(Exception):
    """A configuration value or file is unusable; the message says which and why."""


@dataclass
class Config:
    """Every setting of replytrack, with the embedded defaults (SQLite, loopback ports)."""

    # The SQLite store. Everything else (secret, journal) defaults to live beside it.
    db: str = "replytrack.db"
    # The domain part of every Message-ID we mint.
    domain: str = "replytrack.invalid"
    # Token keys: a file of "kid:hexsecret" lines, first line current. Created on first use.
    secret_file: str = ""
    # Hostname we announce in EHLO/banners; never looked up per connection.
    hostname: str = "replytrack.localhost"
    log_level: str = "info"

    # Outbound proxy.
    proxy_listen: str = "127.0.0.1:10025"
    proxy_upstream: str = "127.0.0.1:10026"
    # none | starttls | tls. starttls and tls are required, never opportunistic.
    proxy_upstream_tls: str = "none"
    proxy_upstream_tls_verify: bool = True
    proxy_upstream_ca_file: str = ""
    proxy_upstream_user: str = ""
    proxy_upstream_password: str = ""
    proxy_upstream_password_file: str = ""
    proxy_timeout: float = 60.0
    # Idle upstream connections kept for reuse; below the number of concurrent client
    # sessions, most upstream connections are closed after one mail (bench/: 8 at 50).
    proxy_pool_size: int = 32
    proxy_max_size: int = 36_700_160
    # Client networks allowed to submit (CIDR). Loopback is always allowed.
    proxy_allow: list[str] = field(default_factory=list)
    # SMTP AUTH for clients (needs TLS): a file of "user:password" lines (hashes accepted).
    proxy_auth_file: str = ""
    proxy_tls_cert: str = ""
    proxy_tls_key: str = ""
    proxy_metrics_listen: str = ""
    # Proxy processes sharing the listening socket; 0 = one per CPU this process may use.
    # Each is one event loop (one core at most), so one per CPU uses the machine.
    proxy_workers: int = 0
    # The event loop: "uvloop" when installed (faster I/O), else "asyncio".
    proxy_event_loop: str = "auto"
    # Store calls run on the event loop when they need not wait (another writer holding the
    # store sends them to a thread): no hand-off per mail. Off: always in a thread, so a
    # store on a disk that hangs (NFS) stalls only the mails that wait for it.
    proxy_store_inline: bool = True

    # Inbound milter.
    milter_socket: str = "inet:8894@127.0.0.1"
    milter_timeout: int = 30
    # recipient | thread | domain
    milter_stop_scope: str = "thread"
    # Count mail from an enrolled recipient of an active campaign as a reply without
    # threading headers (weaker evidence, recorded as such).
    milter_weak_match: bool = True
    milter_internal_domains: list[str] = field(default_factory=list)
    milter_freemail_domains: list[str] = field(default_factory=list)
    milter_journal: str = ""
    milter_metrics_listen: str = ""
    # Out-of-office pauses: default when no date can be read, and the longest we accept.
    milter_ooo_default_days: int = 7
    milter_ooo_max_days: int = 60

    # Notifications.
    notify_webhooks: list[str] = field(default_factory=list)
    notify_secret: str = ""
    notify_timeout: float = 10.0
    notify_max_attempts: int = 12

    # Retention for ``replytrack prune``.
    retention_days: int = 365

    # Where the values came from (file path), for ``doctor``.
    source: str = ""

    @property
    def db_dir(self) -> Path:
        """The directory holding the store; secret and journal default to it."""
        return Path(self.db).resolve().parent

    @property
    def secret_path(self) -> Path:
        """The token key file."""
        return Path(self.secret_file) if self.secret_file else self.db_dir / "replytrack.secret"

    @property
    def journal_path(self) -> Path:
        """The milter's journal of inbound verdicts that could not be written to the store."""
        if self.milter_journal:
            return Path(self.milter_journal)
        return self.db_dir / "replytrack.journal"


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Turn a TOML or environment value into the type the setting has."""
    origin = typing.get_origin(kind)
    if origin is list or kind is list:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            if not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
            return list(value)
        raise ConfigError(f"{name}: expected a list, got {value!r}")
    if isinstance(kind, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if kind in (int, float):
        # TOML true is not a number, and 2.5 sessions must not quietly become 2.
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if kind is int and isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{name}: expected a whole number, got {value!r}")
            return int(value)
        try:
            return kind(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if not isinstance(value, str):
        # A number or table where a name or path belongs is a typo, not a value to stringify.
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}".replace("-", "_")
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}_"))
        else:
            flat[name] = value
    return flat


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration: defaults, then the TOML file, then environment, then flags.

    ``path`` None means the first of ``./replytrack.toml`` and
    ``/etc/replytrack/replytrack.toml`` that exists (neither is fine). An explicit path that
    does not exist is an error. ``overrides`` holds flag values; None values are ignored.
    """
    env = os.environ if env is None else env
    types_by_name = _field_types()
    values: dict[str, Any] = {}
    source = ""
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = env[ENV_PREFIX + "CONFIG"]
    candidates = [Path(path)] if path is not None else list(DEFAULT_CONFIG_PATHS)
    for candidate in candidates:
        if not candidate.exists():
            if path is not None:
                raise ConfigError(f"config file {candidate} does not exist")
            continue
        try:
            data = tomllib.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {candidate}: {exc}") from None
        for name, value in _flatten(data).items():
            if name not in types_by_name or name == "source":
                raise ConfigError(f"{candidate}: unknown setting {name!r}")
            values[name] = _coerce(name, value, types_by_name[name])
        source = str(candidate)
        break
    for name, kind in types_by_name.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and name != "source":
            values[name] = _coerce(ENV_PREFIX + name.upper(), raw, kind)
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in types_by_name:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(name, value, types_by_name[name])
    config = Config(**values, source=source)
    validate(config)
    return config


_DOMAIN = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def validate(config: Config) -> None:
    """Reject values that would only fail later, with a message naming the setting."""
    if not _DOMAIN.fullmatch(config.domain) or len(config.domain) > 253:
        # The domain goes verbatim into every Message-ID: anything but a host name (say
        # a space or ">") would give mail a broken Message-ID header.
        raise ConfigError(f"domain: {config.domain!r} is not a domain name")
    if config.milter_stop_scope not in ("recipient", "thread", "domain"):
        raise ConfigError(
            f"milter.stop_scope: {config.milter_stop_scope!r}"
            " is not one of recipient, thread, domain"
        )
    if config.proxy_upstream_tls not in ("none", "starttls", "tls"):
        raise ConfigError(
            f"proxy.upstream_tls: {config.proxy_upstream_tls!r} is not one of none, starttls, tls"
        )
    for name in ("proxy_listen", "proxy_upstream"):
        parse_hostport(getattr(config, name), setting=name)
    if config.proxy_max_size <= 0:
        raise ConfigError("proxy.max_size must be positive")
    if not 0 <= config.proxy_workers <= MAX_PROXY_WORKERS:
        raise ConfigError(
            f"proxy.workers: {config.proxy_workers} is not 0 (one per CPU) to {MAX_PROXY_WORKERS}"
        )
    if config.proxy_event_loop not in ("auto", "asyncio", "uvloop"):
        raise ConfigError(
            f"proxy.event_loop: {config.proxy_event_loop!r} is not one of auto, asyncio, uvloop"
        )


def parse_hostport(value: str, *, setting: str = "address") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into host and port."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = text.rpartition(":")
        if ":" in host:
            # An IPv6 address needs brackets; "::1:25" could be read more than one way.
            sep = ""
    digits = port_text.isascii() and port_text.isdigit()
    if not sep or not host or not digits or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{setting}: {value!r} is not HOST:PORT")
    return host, int(port_text)
