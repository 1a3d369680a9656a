"""What every subcommand shares: the group, configuration, the store, output formats."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from replytrack import __version__
from replytrack.config import Config, ConfigError, load_config
from replytrack.store import Store, StoreError, open_store
from replytrack.store.base import iso_time
from replytrack.tokens import KeyFileError

F = TypeVar("F", bound=Callable[..., Any])

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
            except ConfigError as exc:
                raise click.ClickException(f"configuration: {exc}") from None
        return self._config

    def store(self, *, create: bool = False, readonly: bool = False) -> Store:
        """The store named by the configuration.

        Only ``init`` and ``migrate`` pass ``create`` (make the store or upgrade its schema).
        For every other command a missing, empty, foreign or older store is a one-line
        error naming the file and the command that fixes it.
        """
        if self._store is None:
            try:
                self._store = open_store(self.config().db, create=create, readonly=readonly)
            except StoreError as exc:
                raise click.ClickException(str(exc)) from None
        return self._store


pass_state = click.make_pass_decorator(State, ensure=True)


class Group(click.Group):
    """A group that turns store, config and key errors into one clear line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (StoreError, ConfigError, KeyFileError) as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}") from None
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
    help="TOML config file [default: ./replytrack.toml, then /etc/replytrack/replytrack.toml].",
)
@click.option("--db", metavar="PATH", help="SQLite store file [env REPLYTRACK_DB].")
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


def setup_logging(level: str) -> None:
    """Logging for daemons: one line per record on stderr (systemd adds the time)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# --- time ------------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str | None) -> float | None:
    """``--since``: a duration back from now (``30m``, ``12h``, ``7d``, ``2w``) or an ISO date."""
    if value is None:
        return None
    match = _RELATIVE.match(value)
    if match:
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
        # Beyond the epoch a duration means "everything"; a huge one must not overflow.
        return max(0.0, time.time() - min(seconds, 2**53))
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a duration like 7d / 12h nor an ISO date like 2026-11-01"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def iso(ts: float | None) -> str | None:
    """A UNIX time as ISO 8601 UTC, seconds precision."""
    return iso_time(ts)


# --- output ----------------------------------------------------------------------------------


def output_options(func: F) -> F:
    """Add ``--json`` and ``--csv`` to a listing command (table by default)."""

    @click.option("--json", "fmt", flag_value="json", help="Print JSON (a list of objects).")
    @click.option("--csv", "fmt", flag_value="csv", help="Print CSV with a header row.")
    @click.option(
        "--table", "fmt", flag_value="table", default=True, help="Print a table (default)."
    )
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


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
    cells = [[c if len(c) <= 60 else c[:57] + "..." for c in line] for line in cells]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    click.echo("  ".join("-" * w for w in widths))
    for line in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
