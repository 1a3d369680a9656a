"""The store setting: a SQLite path or a PostgreSQL URL, and its password."""

from __future__ import annotations

import re
import urllib.parse
from typing import TYPE_CHECKING

from replytrack.config.errors import ConfigError
from replytrack.config.secrets import read_secret_file

if TYPE_CHECKING:
    from replytrack.config import Config

# --- the PostgreSQL store's URL and password ----------------------------------------------

# libpq's own values; a typo here would only show as a failed connection later.
_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")


def is_postgresql_url(db: str) -> bool:
    """True when ``db`` names a PostgreSQL store rather than a SQLite file."""
    return db.startswith(("postgresql://", "postgres://"))


def _url_password(db: str) -> str:
    """The password written in a URL's user part, as written (empty when none)."""
    rest = db.partition("://")[2]
    authority = rest[: min((i for i in (rest.find(c) for c in "/?") if i >= 0), default=len(rest))]
    userinfo = authority.rpartition("@")[0]
    return userinfo.partition(":")[2]


def shown_db(db: str) -> str:
    """``db`` fit for messages and logs: a password in the URL (user part or ``password=``
    parameter) replaced by ``***``. Works on the text, so a URL too broken to parse is
    shown without its password too."""
    if not is_postgresql_url(db):
        return db
    shown = db
    password = _url_password(db)
    if password:
        shown = shown.replace(":" + password + "@", ":***@", 1)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", shown)


def scrub_secrets(text: str, db: str) -> str:
    """``text`` (a driver's error message) without the URL or password it may quote."""
    secrets = [db, _url_password(db), urllib.parse.unquote(_url_password(db))]
    secrets += re.findall(r"[?&]password=([^&]*)", db)
    for secret in sorted(filter(None, set(secrets)), key=len, reverse=True):
        text = text.replace(secret, "***" if secret != db else shown_db(db))
    return text


def check_db_url(db: str) -> None:
    """Raise ConfigError, without the password, when ``db`` is not a usable libpq URL."""
    try:
        from psycopg import Error as PsycopgError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        # Opening the store says that psycopg is missing and how to install it.
        return
    try:
        params = conninfo_to_dict(db)
    except PsycopgError as exc:
        why = scrub_secrets(str(exc).strip(), db)
        raise ConfigError(f"db: {shown_db(db)} is not a PostgreSQL URL: {why}") from None
    for port in str(params.get("port", "")).split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"db: {shown_db(db)} has an invalid port {port!r}")
    attrs = params.get("target_session_attrs")
    if attrs is not None and attrs not in _SESSION_ATTRS:
        raise ConfigError(
            f"db: target_session_attrs={attrs!r} is not one of {', '.join(_SESSION_ATTRS)}"
        )


def read_db_password(config: Config) -> str | None:
    """The password in ``db_password_file`` (None when the setting is empty).

    Like libpq with a .pgpass file, a file that the group or others may read is refused,
    stricter than the other ``*_file`` secrets: on a daemon host it holds the password of
    a role that writes every row, while the group's listing commands log in as their own
    read-only role (postgresql-roles.sql). A password readable by more than the service
    user is not a secret any more.
    """
    if not config.db_password_file:
        return None
    return read_secret_file(config.db_password_file, setting="db_password_file", mask=0o077)
