"""What every subcommand shares: the group, configuration, the store, output formats."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
import os
import re
import select
import signal
import sys
import time
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from replytrack import __version__
from replytrack.config import Config, ConfigError, load_config, read_db_password
from replytrack.logs import setup_logging as setup_logging  # the daemon commands use it
from replytrack.store import Store, StoreError, open_store
from replytrack.store.records import iso_time
from replytrack.store.rules import BrakeRule
from replytrack.tokens import KeyFileError

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@dataclass
class State:
    """Per-invocation state: global options, then the configuration and store, built lazily."""

    config_path: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    _config: Config | None = None
    _store: Store | None = None

    def config(self, **more: Any) -> Config:
        """The configuration: file, environment, global flags, then ``more`` flags."""
        if self._config is None or more:
            try:
                self._config = load_config(self.config_path, overrides={**self.overrides, **more})
                password = read_db_password(self._config)
            except ConfigError as exc:
                raise click.ClickException(f"configuration: {exc}") from None
            if password is not None:
                # libpq takes it from the environment, here and in the processes we start
                # (proxy workers), so it never travels in a URL that could reach a log.
                os.environ["PGPASSWORD"] = password
        return self._config

    def store(self, *, create: bool = False, readonly: bool = False) -> Store:
        """The store named by the configuration.

        Only ``init`` and ``migrate`` pass ``create`` (make the store or upgrade its schema).
        For every other command a missing, empty, foreign or older store is a one-line
        error naming the file and the command that fixes it.
        """
        if self._store is None:
            try:
                config = self.config()
                self._store = open_store(
                    config.db,
                    busy_timeout_ms=round(config.db_timeout * 1000),
                    create=create,
                    readonly=readonly,
                )
                # Journal replay and hand stops record bounces too: the site's brake rule.
                self._store.use_brake(
                    BrakeRule(config.campaign_brake_window, config.campaign_brake_ratio)
                )
            except StoreError as exc:
                raise click.ClickException(str(exc)) from None
        return self._store


pass_state = click.make_pass_decorator(State, ensure=True)


class Group(click.Group):
    """A group that turns store, config and key errors into one clear line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            # A reader that went away (`| head`) shows here, not in the flush at exit.
            sys.stdout.flush()
            return result
        except BrokenPipeError:
            if not _stdout_closed():
                raise click.ClickException("broken pipe") from None
            _quiet_broken_pipe()
        except (StoreError, ConfigError, KeyFileError) as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            # A socket error has no file name: then the message alone (it names the address).
            where = f": {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}") from None
        finally:
            # Closed when the command ends, not at exit: the last connection to close
            # removes the -wal and -shm files, also when the command ran in-process.
            state = ctx.find_object(State)
            if state is not None and state._store is not None:
                state._store.close_all()


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="replytrack")
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    help="TOML config file, or 'none' to read no file [env REPLYTRACK_CONFIG; default:"
    " ./replytrack.toml, then /etc/replytrack/replytrack.toml].",
)
@click.option(
    "--db",
    metavar="PATH|URL",
    help="SQLite store file, or postgresql://USER@HOST[:PORT][,HOST2...]/DBNAME"
    " [env REPLYTRACK_DB].",
)
@click.option(
    "--domain", metavar="DOMAIN", help="Domain of minted Message-IDs [env REPLYTRACK_DOMAIN]."
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log level of daemons [env REPLYTRACK_LOG_LEVEL].",
)
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: str | None,
    db: str | None,
    domain: str | None,
    log_level: str | None,
) -> None:
    """replytrack: stop campaign mail the moment a prospect replies.

    An outbound SMTP proxy stamps a signed Message-ID on every mail and records it; an
    inbound Postfix milter matches replies (from any address), stops the campaign and
    notifies. Settings come from a TOML file, then REPLYTRACK_* variables, then flags.

    \b
    Example:
      replytrack init --domain mail.example.com
      replytrack proxy &
      replytrack milter &
      replytrack campaigns
    """
    ctx.obj = State(
        config_path=config_path,
        overrides={"db": db, "domain": domain, "log_level": log_level},
    )


def _stdout_closed() -> bool:
    """True when nobody reads our standard output any more (the pipe's reader left)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return True


def _quiet_broken_pipe() -> None:
    """Exit as a command whose reader left does (`replytrack events | head`): no message,
    status 141 like a process ended by SIGPIPE. Output still buffered goes to /dev/null,
    so the flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    raise SystemExit(128 + signal.SIGPIPE)


# --- time ------------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_WORD = re.compile(r"[^\W\d_]{3,}")


# ctx.meta keys set by output_options; meta is shared by every context of one invocation.
_TZ = "replytrack.tz"
_WIDE = "replytrack.wide"


def display_tz() -> dt.tzinfo | None:
    """The zone times are shown and read in (``--tz``): UTC unless asked; None is local."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_TZ, dt.UTC) if ctx is not None else dt.UTC


def _zone(ctx: click.Context, param: click.Parameter, value: str | None) -> dt.tzinfo | None:
    if value is None or value.upper() == "UTC":
        return dt.UTC
    if value.lower() == "local":
        return None
    try:
        return zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(
            f"{value!r} is not a time zone: use local, UTC or a name like Europe/Berlin"
        ) from None


def _in_zone(naive: dt.datetime, tz: dt.tzinfo | None) -> dt.datetime:
    return naive.astimezone() if tz is None else naive.replace(tzinfo=tz)


def _human_time(text: str, tz: dt.tzinfo | None) -> dt.datetime:
    """``yesterday``, ``3 days ago``, ``last monday``, ``1 Nov 2026 10:00`` in ``tz``."""
    now = dt.datetime.now(tz) if tz is not None else dt.datetime.now().astimezone()
    base = now.replace(tzinfo=None)
    words = text.strip().lower()
    if words in ("today", "yesterday"):
        # A day means the calendar day from midnight, not 24 hours back from now.
        day = base.date() - dt.timedelta(days=1 if words == "yesterday" else 0)
        return _in_zone(dt.datetime.combine(day, dt.time()), tz)
    parsed = None
    # Words, not figures: dateparser reads "7" as July and "2026-13-01" as 13 January, and
    # takes "7y" for years; a date in figures must be ISO, a duration 7d / 12h.
    if _WORD.search(words):
        import dateparser  # loads its language data: only when a human date is given

        parsed = dateparser.parse(
            text,
            settings={
                "PREFER_DATES_FROM": "past",
                "RELATIVE_BASE": base,
                "RETURN_AS_TIMEZONE_AWARE": False,
            },
        )
    if parsed is None:
        raise click.BadParameter(
            f"{text!r} is not a time: use a duration like 7d / 12h, a date like 2026-11-01,"
            " or words like yesterday / 3 days ago / last monday"
        )
    result = _in_zone(parsed, tz)
    if result > now + dt.timedelta(minutes=1):
        raise click.BadParameter(f"{text!r} is in the future ({result.isoformat()})")
    return result


def parse_since(value: str | None) -> float | None:
    """``--since``: a duration back from now (``30m``, ``12h``, ``7d``, ``2w``), an ISO date,
    or words (``yesterday``, ``3 days ago``). Dates without a zone are in ``--tz`` (UTC)."""
    if value is None:
        return None
    match = _RELATIVE.match(value)
    if match:
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
        # Beyond the epoch a duration means "everything"; a huge one must not overflow.
        return max(0.0, time.time() - min(seconds, 2**53))
    tz = display_tz()
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        parsed = _human_time(value, tz)
    if parsed.tzinfo is None:
        parsed = _in_zone(parsed, tz)
    return parsed.timestamp()


def iso(ts: float | None) -> str | None:
    """A UNIX time as ISO 8601, seconds precision: UTC (``...Z``) unless ``--tz`` says."""
    tz = display_tz()
    if ts is None or tz is dt.UTC:
        return iso_time(ts)
    if tz is None:
        return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
    return dt.datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")


# --- output ----------------------------------------------------------------------------------


def output_options(func: F) -> F:
    """Add ``--json``, ``--csv``, ``--wide`` and ``--tz`` to a listing command (table by
    default). ``--wide`` and ``--tz`` reach ``emit``, ``iso`` and ``parse_since`` through the
    click context, so commands take only ``fmt``."""

    @click.option("--json", "fmt", flag_value="json", help="Print JSON (a list of objects).")
    @click.option("--csv", "fmt", flag_value="csv", help="Print CSV with a header row.")
    @click.option(
        "--table", "fmt", flag_value="table", default=True, help="Print a table (default)."
    )
    @click.option(
        "--wide", is_flag=True, help="Do not cut long values (Message-IDs, lists) in the table."
    )
    @click.option(
        "--tz",
        metavar="ZONE",
        callback=_zone,
        help="Show times, and read dates without a zone, in local, UTC or a zone like"
        " Europe/Berlin [default: UTC].",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, wide: bool, tz: dt.tzinfo | None, **kwargs: Any) -> Any:
        meta = click.get_current_context().meta
        meta[_WIDE], meta[_TZ] = wide, tz
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def fetch_rows(fetch: Callable[[int | None], list[R]], limit: int) -> tuple[list[R], bool]:
    """Up to ``limit`` rows from ``fetch(n)`` (a store query cut at ``n``), and whether more
    exist: one row more is asked for, so no count query is needed."""
    rows = fetch(limit + 1)
    return rows[:limit], len(rows) > limit


def say_more(shown: int, what: str) -> None:
    """Tell, on stderr (pipes and --json stay clean), that a listing was cut at --limit."""
    click.echo(f"(showing the first {shown} {what}; there are more: raise --limit)", err=True)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _printable(text: str) -> str:
    """Text safe for a terminal table: control characters and stray surrogates escaped.

    Subjects and addresses come from inbound mail; a newline would break the table and an
    escape sequence would reach the operator's terminal.
    """
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def emit(rows: Sequence[dict[str, Any]], fmt: str, columns: Sequence[str] | None = None) -> None:
    """Print rows as a table, JSON or CSV. JSON keeps every key; table and CSV ``columns``."""
    if fmt == "json":
        click.echo(json.dumps(list(rows), indent=2, default=str))
        return
    cols = list(columns) if columns else (list(rows[0].keys()) if rows else [])
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(cols)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in cols])
        click.echo(buffer.getvalue(), nl=False)
        return
    if not rows:
        click.echo("(none)")
        return
    cells = [[_printable(_cell(row.get(c))) for c in cols] for row in rows]
    # Wide values (recipient lists, evidence) are cut in the table; --json has them whole.
    ctx = click.get_current_context(silent=True)
    if ctx is None or not ctx.meta.get(_WIDE):
        cells = [[c if len(c) <= 60 else c[:57] + "..." for c in line] for line in cells]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    click.echo("  ".join("-" * w for w in widths))
    for line in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
