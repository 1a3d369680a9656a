"""``replytrack init``: the config file, the Message-ID key file and the store."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
from pathlib import Path

import click

from replytrack.cli.common import State, cli, pass_state
from replytrack.config import Config, is_postgresql_url, shown_db
from replytrack.store import StoreError
from replytrack.tokens import load_keyring, rotate


def _toml(value: object) -> str:
    # JSON string and list syntax is valid TOML for the plain values we write.
    return json.dumps(value)


def _db_setting(db: str) -> str:
    # A relative SQLite path is made absolute (the daemons run elsewhere); a URL is kept,
    # without a password it may hold.
    return shown_db(db) if is_postgresql_url(db) else str(Path(db).resolve())


# The store's directory when init makes it: the service group may create the -wal and -shm
# files SQLite needs (the ops CLI runs as members of the group, also while no daemon holds
# the store open), and setgid gives every file made in it that group.
GROUP_DIR_MODE = 0o2770


def _hand_over(paths: list[Path], directory: Path | None, user: str) -> str | None:
    """Give what init made as root to the service user and its group; the account's name
    when done, None when there is no such account (then root keeps them)."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return None
    for path in paths:
        os.chown(path, account.pw_uid, account.pw_gid)
    if directory is not None:
        os.chown(directory, account.pw_uid, account.pw_gid)
        directory.chmod(GROUP_DIR_MODE)
    return user


def _server_schema(config: Config) -> int:
    """A PostgreSQL store's schema version (0: none yet). Refuses, in one line, a database
    that does not exist or a read-only standby: the schema is made on the primary."""
    from replytrack.cli.doctor_pg import writable_server

    try:
        return writable_server(config).schema_version
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def config_text(config: Config) -> str:
    """A commented replytrack.toml holding this configuration's essential values."""
    return f"""\
# replytrack configuration. Every setting can be overridden by an environment variable
# REPLYTRACK_<TABLE>_<KEY> (e.g. REPLYTRACK_PROXY_LISTEN) and by command-line flags.

# The store: a SQLite file (the key file lives beside it by default), or a PostgreSQL
# URL shared by several hosts, e.g.
#   "postgresql://replytrack@db1,db2/replytrack?target_session_attrs=read-write"
# whose password comes from db_password_file, PGPASSWORD or ~/.pgpass, never from here.
db = {_toml(_db_setting(config.db))}
# The domain part of every Message-ID replytrack mints (a domain you control).
domain = {_toml(config.domain)}
# Message-ID signing keys (mode 0600; `replytrack init --rotate-key` adds a new one).
secret_file = {_toml(str(config.secret_path))}
# Hostname announced in SMTP banners.
hostname = {_toml(config.hostname)}
log_level = {_toml(config.log_level)}
# `replytrack prune` drops records older than this.
retention_days = {config.retention_days}

[proxy]
# Campaign engines submit here; loopback unless `allow` lists client networks.
listen = {_toml(config.proxy_listen)}
# Where stamped mail goes: a Postfix listener WITHOUT milters, or a smarthost.
upstream = {_toml(config.proxy_upstream)}
# none | starttls | tls
upstream_tls = {_toml(config.proxy_upstream_tls)}
allow = {_toml(config.proxy_allow)}
# Prometheus endpoint, e.g. "127.0.0.1:9464" (empty: off).
metrics_listen = {_toml(config.proxy_metrics_listen)}

[milter]
# Postfix: smtpd_milters = ..., {{ inet:127.0.0.1:8894, default_action=accept }} (last).
socket = {_toml(config.milter_socket)}
# What a reply stops: recipient | thread | domain
stop_scope = {_toml(config.milter_stop_scope)}
weak_match = {_toml(config.milter_weak_match)}
internal_domains = {_toml(config.milter_internal_domains)}
metrics_listen = {_toml(config.milter_metrics_listen)}

[notify]
# Webhook URLs that receive every event as signed JSON (see `replytrack notify --help`).
webhooks = {_toml(config.notify_webhooks)}
# HMAC-SHA256 key for X-ReplyTrack-Signature; prefer REPLYTRACK_NOTIFY_SECRET.
secret = {_toml(config.notify_secret)}
max_attempts = {config.notify_max_attempts}
"""


@cli.command("init")
@click.option(
    "--write-config",
    metavar="PATH",
    type=click.Path(dir_okay=False, writable=True),
    help="Write a commented config file with the current settings.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing --write-config file.")
@click.option(
    "--rotate-key",
    is_flag=True,
    help="Add a new Message-ID signing key; old keys still verify replies to older mail.",
)
@click.option(
    "--new-key",
    is_flag=True,
    help="Create a key file although the store already holds mail signed with a lost one.",
)
@click.option(
    "--service-user",
    metavar="USER",
    default="replytrack",
    show_default=True,
    help="Run as root: the files init makes go to this user and its group (User= of the units).",
)
@pass_state
def init_command(
    state: State,
    write_config: str | None,
    force: bool,
    rotate_key: bool,
    new_key: bool,
    service_user: str,
) -> None:
    """Set up an installation: the store (mode 0660), the Message-ID key file (mode 0600),
    and optionally a commented config file (0640). Run as root, what it makes goes to the
    service user and its group (a store directory it makes: mode 2770). A PostgreSQL
    store's database must exist: init creates the schema in it, on the primary. Safe to
    run again: nothing existing is replaced, and an older store schema is upgraded. The
    only command that creates a store or a key: the daemons and the other commands refuse
    to start without them.

    \b
    Example:
      replytrack --domain mail.example.com --db /var/lib/replytrack/replytrack.db \\
          init --write-config /etc/replytrack/replytrack.toml
      replytrack init --rotate-key
      replytrack --db postgresql://replytrack@db1.example.com/replytrack init
    """
    config = state.config()
    if config.domain == "replytrack.invalid":
        click.echo(
            "note: Message-IDs will use the placeholder domain replytrack.invalid;"
            " set --domain (or domain in the config file) to a domain you own",
            err=True,
        )
    if write_config:
        target = Path(write_config)
        if target.exists() and not force:
            raise click.ClickException(f"{target} exists; add --force to overwrite it")
        target.parent.mkdir(parents=True, exist_ok=True)
        # The file may hold the webhook secret: readable by its owner (and group) only.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(config_text(config))
        if os.geteuid() == 0:
            # Root keeps the config; the daemons (the service group) read it.
            with contextlib.suppress(KeyError):
                os.chown(target, 0, pwd.getpwnam(service_user).pw_gid)
        click.echo(f"wrote config {target}")
    # The store first: an existing store with mail in it says whether a missing key file
    # is a first start or a lost key.
    shown = shown_db(config.db)
    if is_postgresql_url(config.db):
        db_existed = _server_schema(config) > 0
        what = "store ok" if db_existed else "created the schema in store"
    else:
        db_existed = Path(config.db).exists()
        what = "store ok" if db_existed else "created store"
    made: list[Path] = []
    made_directory: Path | None = None
    if not is_postgresql_url(config.db):
        db_path = Path(config.db)
        if not db_path.parent.exists():
            made_directory = db_path.parent
        if not db_existed:
            made.append(db_path)
    key_path = config.secret_path
    store = state.store(create=True)
    click.echo(f"{what} {shown}")
    if key_path.exists():
        click.echo(f"key file ok {key_path}")
    else:
        if db_existed and not new_key and store.messages(limit=1):
            raise click.ClickException(
                f"key file {key_path} is missing but store {shown} holds mail signed with"
                " it: restore the key file from a backup, or add --new-key to start a new"
                " key (replies to mail sent so far then no longer match by Message-ID)"
            )
        load_keyring(key_path, create=True)
        made.append(key_path)
        click.echo(f"created key file {key_path}")
    if os.geteuid() == 0 and (made or made_directory):
        store.close_all()  # its -wal and -shm are gone, or made again by the service user
        # The daemons run as the service user and never as root: what root makes here
        # must be theirs, or they cannot open it.
        owner = _hand_over(made, made_directory, service_user)
        if owner:
            click.echo(f"gave {', '.join(str(p) for p in made)} to {owner}")
    if rotate_key:
        keyring = rotate(key_path)
        click.echo(f"new signing key {keyring.current[0]} in {key_path} ({len(keyring.keys)} keys)")


@cli.command("migrate")
@pass_state
def migrate_command(state: State) -> None:
    """Upgrade the store's schema to this replytrack's version.

    The daemons never change the schema when they start: after installing a new
    replytrack they refuse an older store and name this command. Stop the proxy and the
    milter, run it, start them again. A missing store is created by `replytrack init` only.
    On PostgreSQL it runs on the primary (a standby is refused), as a role that may alter
    the tables; hosts migrating at once take turns (an advisory lock).

    \b
    Example:
      systemctl stop replytrack-proxy replytrack-milter
      replytrack --config /etc/replytrack/replytrack.toml migrate
      systemctl start replytrack-milter replytrack-proxy
    """
    config = state.config()
    shown = shown_db(config.db)
    if is_postgresql_url(config.db):
        before = _server_schema(config)
        if before == 0:
            raise click.ClickException(
                f"store {shown} holds no replytrack schema; run `replytrack init`"
            )
        state.store(create=True)
        after = _server_schema(config)
        if after != before:
            click.echo(f"store {shown} migrated from schema {before} to {after}")
            return
    elif not Path(config.db).exists():
        raise click.ClickException(f"store {shown} does not exist; run `replytrack init`")
    else:
        state.store(create=True)
    click.echo(f"store {shown} is at the current schema")
