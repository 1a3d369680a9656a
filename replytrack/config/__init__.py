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
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replytrack.config.db import (
    check_db_url as check_db_url,
)
from replytrack.config.db import (
    is_postgresql_url as is_postgresql_url,
)
from replytrack.config.db import (
    read_db_password as read_db_password,
)
from replytrack.config.db import (
    scrub_secrets as scrub_secrets,
)
from replytrack.config.db import (
    shown_db as shown_db,
)
from replytrack.config.errors import ConfigError
from replytrack.config.mode import ENFORCE as ENFORCE
from replytrack.config.mode import MONITOR as MONITOR
from replytrack.config.mode import check_mode
from replytrack.config.notify import (
    check_notify as check_notify,
)
from replytrack.config.notify import (
    notify_problems as notify_problems,
)
from replytrack.config.notify import (
    redact_url as redact_url,
)
from replytrack.config.notify import (
    webhook_url_problem as webhook_url_problem,
)
from replytrack.config.secrets import (
    SECRET_FILES as SECRET_FILES,
)
from replytrack.config.secrets import (
    load_secret_files as load_secret_files,
)
from replytrack.config.secrets import (
    read_secret_file as read_secret_file,
)

ENV_PREFIX = "REPLYTRACK_"
DEFAULT_CONFIG_PATHS = (Path("replytrack.toml"), Path("/etc/replytrack/replytrack.toml"))
# ``--config none`` / ``REPLYTRACK_CONFIG=none``: read no file at all, only the environment
# and flags. Demos, tests and benchmarks use it so that an installed /etc/replytrack never
# lends them its ports, domains or key.
NO_CONFIG = "none"


# The milter's journal: a spool of its own, so a filesystem that fails under the store does
# not take the verdicts it could not write with it.
DEFAULT_JOURNAL = "/var/spool/replytrack/journal"

# More proxy processes than this only add SQLite write contention.
MAX_PROXY_WORKERS = 64


@dataclass
class Config:
    """Every setting of replytrack, with the embedded defaults (SQLite, loopback ports)."""

    # The SQLite store, or a PostgreSQL URL (several hosts allowed) for a multi-host site.
    # The secret defaults to live beside a SQLite store (the journal does not).
    # A path or a libpq URL; a URL may carry a password, so it stays out of repr (logs).
    db: str = field(default="replytrack.db", repr=False)
    # PostgreSQL: a file holding only the role's password, mode 0600 or stricter (as libpq
    # wants for .pgpass). Read at start; without it PGPASSWORD or ~/.pgpass serve.
    db_password_file: str = ""
    # Longest one store statement may run, in seconds: PostgreSQL's statement_timeout (the
    # SQLite busy timeout). The milter caps it lower: mail must not wait for the store.
    db_timeout: float = 5.0
    # The domain part of every Message-ID we mint.
    domain: str = "replytrack.invalid"
    # Token keys: a file of "kid:hexsecret" lines, first line current. Created on first use.
    secret_file: str = ""
    # Hostname we announce in EHLO/banners; never looked up per connection.
    hostname: str = "replytrack.localhost"
    log_level: str = "info"
    # Where the daemons log: "stderr" (the journal under systemd) or "syslog" (/dev/log,
    # with log_facility, "mail" beside Postfix's own lines).
    log_target: str = "stderr"
    log_facility: str = "mail"
    # "auto": no time stamp of our own under systemd (journald adds one), else one;
    # "plain": never; "timestamped": always.
    log_format: str = "auto"
    # "enforce", or "monitor" for a first week: everything is classified, matched and
    # recorded, nothing is stopped (config/mode.py says what each daemon does). Reloadable.
    mode: str = ENFORCE

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
    # AUTH failures per client address (IPv6: per /64), across connections: this many
    # within auth_window seconds lock the address out for auth_lockout seconds, doubling
    # with each lockout up to auth_lockout_max. Counted in each worker process.
    proxy_auth_max_failures: int = 5
    proxy_auth_window: float = 600.0
    proxy_auth_lockout: float = 60.0
    proxy_auth_lockout_max: float = 3600.0
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
    # A mail still "relaying" this many seconds after it was recorded lost its proxy (killed,
    # or the store failed when the upstream answered): the sweep marks it "unconfirmed"
    # (possibly sent). Far above any transaction's length, so a live one is never touched,
    # also on another host sharing the store.
    proxy_unconfirmed_after: float = 900.0
    # Whose Message-ID leaves: "always" ours; "campaign" ours on campaign mail, the
    # client's own on other mail that has one (a person's Sent copy then matches the
    # replies they get); "missing" the client's whenever it has one. README explains.
    proxy_stamp: str = "campaign"
    # Make every campaign step after the first a reply in the recipient's earlier thread,
    # as X-ReplyTrack-Thread: previous does for one mail ("new" declines it).
    proxy_thread_followups: bool = False

    # Inbound milter.
    milter_socket: str = "inet:8894@127.0.0.1"
    milter_timeout: int = 30
    # recipient | thread | domain
    milter_stop_scope: str = "thread"
    # Count mail from an enrolled recipient of an active campaign as a reply without
    # threading headers (weaker evidence, recorded as such).
    milter_weak_match: bool = True
    # Count mail without threading headers from another address at a (not free-mail) domain
    # we sent campaign mail to in the last subject_match_days days, whose subject answers
    # that mail ("Re: <its subject>"), as a reply (the weakest evidence, recorded as such).
    milter_subject_match: bool = True
    milter_subject_match_days: int = 14
    milter_internal_domains: list[str] = field(default_factory=list)
    milter_freemail_domains: list[str] = field(default_factory=list)
    # Verdicts the store could not take wait here for replay: on another directory than the
    # store's (empty: DEFAULT_JOURNAL). When it is not writable either, the fallback takes
    # them (empty: $RUNTIME_DIRECTORY/journal, else a private directory in the system's
    # temporary directory), then the log.
    milter_journal: str = ""
    milter_journal_fallback: str = ""
    milter_metrics_listen: str = ""
    # Out-of-office pauses: default when no date can be read, and the longest we accept.
    milter_ooo_default_days: int = 7
    milter_ooo_max_days: int = 60

    # The bounce brake: a campaign with more than brake_ratio x brake_window hard bounces
    # among its last brake_window sends is braked (its mail deferred) until resumed.
    # brake_window = 0 turns it off. Read by the milter, which records the bounces.
    campaign_brake_window: int = 50
    campaign_brake_ratio: float = 0.05

    # Notifications.
    notify_webhooks: list[str] = field(default_factory=list)
    # Kept out of repr() so that no log line or traceback that shows a Config shows it.
    notify_secret: str = field(default="", repr=False)
    # The secret in a file of its own (not world-readable), so it need not sit in this
    # group-readable file; read by the daemons that send webhooks, again at each reload.
    notify_secret_file: str = ""
    # Webhooks without notify.secret are a start-up error unless this says they may go out
    # unsigned (receivers then cannot tell our events from forged ones).
    notify_allow_unsigned: bool = False
    notify_timeout: float = 10.0
    notify_max_attempts: int = 12

    # Unsubscribe links on campaign mail (List-Unsubscribe; one-to-one mail never gets
    # them). The address takes the token as a sub-address (unsubscribe+TOKEN@...); empty:
    # unsubscribe@<domain>. With url_base (https://, the site's TLS reverse proxy in front
    # of ``replytrack web``) also a one-click link, RFC 8058.
    unsubscribe_enabled: bool = True
    unsubscribe_address: str = ""
    unsubscribe_url_base: str = ""
    # Where ``replytrack web`` (the one-click service) listens; loopback by default.
    unsubscribe_listen: str = "127.0.0.1:8895"

    # Retention for ``replytrack prune``.
    retention_days: int = 365

    # Where the values came from (file path), for ``doctor``.
    source: str = ""

    @property
    def db_dir(self) -> Path:
        """The directory holding the store; the secret defaults to it."""
        return Path(self.db).resolve().parent

    @property
    def secret_path(self) -> Path:
        """The token key file."""
        if self.secret_file:
            return Path(self.secret_file)
        if is_postgresql_url(self.db):
            # No directory to default to, and every host must use the same key: say so
            # rather than guess a path that differs from host to host.
            raise ConfigError(
                "secret_file must be set when db is a PostgreSQL URL (every host sharing"
                " the store needs a copy of the same key file)"
            )
        return self.db_dir / "replytrack.secret"

    @property
    def journal_path(self) -> Path:
        """The milter's journal of inbound verdicts that could not be written to the store."""
        if self.milter_journal:
            return Path(self.milter_journal)
        return Path(DEFAULT_JOURNAL)


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

    ``path`` None means ``REPLYTRACK_CONFIG``, else the first of ``./replytrack.toml`` and
    ``/etc/replytrack/replytrack.toml`` that exists (neither is fine). ``none`` (NO_CONFIG)
    reads no file. An explicit path that does not exist is an error. ``overrides`` holds
    flag values; None values are ignored.
    """
    env = os.environ if env is None else env
    types_by_name = _field_types()
    values: dict[str, Any] = {}
    source = ""
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = env[ENV_PREFIX + "CONFIG"]
    if path is not None and str(path).strip().lower() == NO_CONFIG:
        candidates: list[Path] = []
    else:
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
    if is_postgresql_url(config.db):
        check_db_url(config.db)
    if not config.db_timeout > 0:
        raise ConfigError(f"db_timeout: {config.db_timeout:g} is not a positive number of seconds")
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
    if config.proxy_auth_max_failures < 1:
        raise ConfigError(
            f"proxy.auth_max_failures: {config.proxy_auth_max_failures} is not 1 or more"
        )
    if not config.proxy_auth_window > 0:
        raise ConfigError(f"proxy.auth_window: {config.proxy_auth_window:g} is not positive")
    if not 0 < config.proxy_auth_lockout <= config.proxy_auth_lockout_max:
        raise ConfigError(
            f"proxy.auth_lockout ({config.proxy_auth_lockout:g}) must be positive and at most"
            f" proxy.auth_lockout_max ({config.proxy_auth_lockout_max:g})"
        )
    check_unsubscribe(config)
    if config.proxy_stamp not in ("always", "campaign", "missing"):
        raise ConfigError(
            f"proxy.stamp: {config.proxy_stamp!r} is not one of always, campaign, missing"
        )
    if config.milter_subject_match_days < 1:
        raise ConfigError(
            f"milter.subject_match_days: {config.milter_subject_match_days} is not 1 or more"
        )
    if config.campaign_brake_window < 0 or not 0 < config.campaign_brake_ratio <= 1:
        raise ConfigError(
            f"campaign.brake_window ({config.campaign_brake_window}) must be 0 (off) or more"
            f" and campaign.brake_ratio ({config.campaign_brake_ratio:g}) above 0, at most 1"
        )
    check_log(config)
    check_mode(config.mode)
    if config.proxy_unconfirmed_after < 4 * config.proxy_timeout:
        raise ConfigError(
            f"proxy.unconfirmed_after: {config.proxy_unconfirmed_after:g} s is shorter than four"
            f" times proxy.timeout ({config.proxy_timeout:g} s): a mail still being relayed"
            " would be marked unconfirmed"
        )


LOG_TARGETS = ("stderr", "syslog")
LOG_FORMATS = ("auto", "plain", "timestamped")
# The facilities a mail daemon may log to (syslog's names).
LOG_FACILITIES = ("mail", "daemon", "user", *(f"local{n}" for n in range(8)))


def check_log(config: Config) -> None:
    """Refuse log settings that would only fail when the daemon sets up its log."""
    if config.log_target not in LOG_TARGETS:
        raise ConfigError(f"log.target: {config.log_target!r} is not one of stderr, syslog")
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(
            f"log.format: {config.log_format!r} is not one of auto, plain, timestamped"
        )
    if config.log_facility not in LOG_FACILITIES:
        raise ConfigError(
            f"log.facility: {config.log_facility!r} is not one of {', '.join(LOG_FACILITIES)}"
        )


_UNSUBSCRIBE_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*/=?^_`{|}~.-]{1,20}")


def check_unsubscribe(config: Config) -> None:
    """Refuse unsubscribe settings that would put a broken link in every campaign mail."""
    address = config.unsubscribe_address
    if address:
        local, at, domain = address.rpartition("@")
        # The token (45 characters) joins the local part after a "+": RFC 5321 allows
        # 64 in all, and a "+" of the address's own would hide where the token starts.
        if not at or not _UNSUBSCRIBE_LOCAL.fullmatch(local) or "+" in local:
            raise ConfigError(
                f"unsubscribe.address: {address!r} is not an address with a short local part"
                " (at most 20 characters, no '+')"
            )
        if not _DOMAIN.fullmatch(domain):
            raise ConfigError(f"unsubscribe.address: {domain!r} is not a domain name")
    base = config.unsubscribe_url_base
    if base:
        parts = urllib.parse.urlsplit(base)
        # RFC 8058: the one-click URI must be HTTPS; the service itself sits behind the
        # site's TLS reverse proxy.
        if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(
                f"unsubscribe.url_base: {base!r} is not an https:// URL without query"
            )
    parse_hostport(config.unsubscribe_listen, setting="unsubscribe.listen")


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
