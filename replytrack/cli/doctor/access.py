"""Doctor's checks of who may use the store and the key: as the service user the daemons
run as, as the group the ops CLI runs as, and as the user running doctor.

The group model (postfix-example/README.md): the store and its -wal and -shm files are
0660 in a setgid directory of the service group, so members of the group can run the ops
commands whether or not a daemon holds the store open; the key file is 0600, readable by
the service user only, so commands that need it (check, import, journal replay, suppress
forget) run as that user: ``sudo -u replytrack replytrack …``.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from replytrack.cli.doctor.findings import FAIL, OK, WARN, Finding
from replytrack.config import Config, ConfigError, is_postgresql_url
from replytrack.store import StoreError, open_store
from replytrack.store import probe as store_probe
from replytrack.tokens import KeyFileError, load_keyring

# What group members need: read and write the store files; create them in the directory,
# with the directory's group (setgid).
_GROUP_RW = stat.S_IRGRP | stat.S_IWGRP
_GROUP_DIR = stat.S_IRWXG | stat.S_ISGID
KEY_COMMANDS = "check, import, journal replay, suppress forget"


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _account(user: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        return None


def _as_service(config: Config, user: str) -> str:
    """The command line that runs replytrack as the service user, with this config."""
    where = f" --config {config.source}" if config.source else ""
    return f"sudo -u {user} replytrack{where}"


def check_secret(config: Config, service_user: str = store_probe.SERVICE_USER) -> list[Finding]:
    try:
        path = config.secret_path
    except ConfigError as exc:  # a PostgreSQL store and no secret_file
        return [Finding(FAIL, "secret", str(exc), "set secret_file in the config file")]
    me = _name(os.geteuid())
    try:
        info = path.stat()
    except FileNotFoundError:
        return [
            Finding(
                FAIL,
                "secret",
                f"key file {path} does not exist: the proxy and the milter refuse to start",
                "restore it from a backup (replies to mail already sent are matched with it);"
                " on a new installation: replytrack init",
            )
        ]
    except OSError as exc:  # a directory closed to this user
        return [_unreadable(config, path, None, me, service_user, exc.strerror or str(exc))]
    mode = info.st_mode & 0o777
    if mode & 0o077:
        return [
            Finding(
                FAIL,
                "secret",
                f"key file {path} has mode {mode:o}: others can read it and forge Message-IDs",
                f"chmod 600 {path}",
            )
        ]
    service = _account(service_user)
    findings = []
    if service is not None and info.st_uid != service.pw_uid and os.geteuid() != 0:
        # Root is told by the probe run as the service user (check_store).
        owner = _name(info.st_uid)
        findings.append(
            Finding(
                FAIL,
                "secret",
                f"key file {path} belongs to {owner} (mode {mode:o}): the daemons, run as"
                f" {service_user}, cannot read it",
                f"as root: chown {service_user}:{_group_name(service.pw_gid)} {path}",
            )
        )
    if not os.access(path, os.R_OK):
        return [*findings, _unreadable(config, path, info, me, service_user, "Permission denied")]
    try:
        keyring = load_keyring(path, create=False)
    except KeyFileError as exc:
        return [*findings, Finding(FAIL, "secret", str(exc), "restore the key file from backup")]
    count = len(keyring.keys)
    return [*findings, Finding(OK, "secret", f"key file {path} mode {mode:o}, {count} key(s)")]


def _unreadable(
    config: Config,
    path: Path,
    info: os.stat_result | None,
    me: str,
    service_user: str,
    why: str,
) -> Finding:
    """A key this user cannot read: by design when it is the service user's, 0600."""
    owner = _name(info.st_uid) if info else None
    if owner == service_user or (owner is None and _account(service_user) is not None):
        return Finding(
            WARN,
            "secret",
            f"key file {path} is for {service_user} only ({why} as user {me}): the"
            f" commands that need it ({KEY_COMMANDS}) run as the service user",
            f"run them as the service user: {_as_service(config, service_user)} check FILE.eml",
        )
    return Finding(
        FAIL,
        "secret",
        f"cannot read key file {path} as user {me} ({why}; it belongs to {owner})",
        f"run doctor and the key commands as its owner: {_as_service(config, owner or 'root')}"
        " doctor",
    )


def _group_findings(db: Path, account: pwd.struct_passwd) -> list[Finding]:
    """The store files and directory as members of the service group meet them."""
    gid, group = account.pw_gid, _group_name(account.pw_gid)
    findings = []
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        try:
            info = path.stat()
        except OSError:
            continue
        if info.st_gid != gid or info.st_mode & _GROUP_RW != _GROUP_RW:
            findings.append(
                Finding(
                    WARN,
                    "store",
                    f"members of group {group} cannot write {path} (group"
                    f" {_group_name(info.st_gid)}, mode {info.st_mode & 0o777:o}): ops"
                    " commands fail for them with 'attempt to write a readonly database'",
                    f"chgrp {group} {path} && chmod 660 {path}",
                )
            )
    directory = db.parent
    info = directory.stat()
    if info.st_gid != gid or info.st_mode & _GROUP_DIR != _GROUP_DIR:
        findings.append(
            Finding(
                WARN,
                "store",
                f"members of group {group} cannot create files in {directory} (group"
                f" {_group_name(info.st_gid)}, mode {info.st_mode & 0o7777:o}): ops commands"
                f" fail whenever no daemon holds the store open (SQLite creates {db.name}-wal"
                " there, in the directory's group only when it is setgid)",
                f"chgrp {group} {directory} && chmod 2770 {directory}",
            )
        )
    return findings


def _ops_fix(config: Config, user: str, service_user: str) -> str:
    """How ``user`` gets to run the ops commands: the service group, or the service user."""
    service = _account(service_user)
    if service is None:
        return f"let {user} write {config.db}, its -wal and -shm files and its directory"
    group = _group_name(service.pw_gid)
    account = _account(user)
    in_group = account is not None and (
        account.pw_gid == service.pw_gid or user in grp.getgrgid(service.pw_gid).gr_mem
    )
    if not in_group:
        sudo = _as_service(config, service_user)
        return f"adduser {user} {group} (then log in again); or: {sudo}"
    return (
        f"restore the group model: chgrp {group} and chmod 660 the store files, chmod 2770"
        " their directory"
    )


def check_store(config: Config, service_user: str = store_probe.SERVICE_USER) -> list[Finding]:
    """The store opens as the daemons open it and takes a real write (a probe row written
    and deleted, a file created in its directory): by the service user when run as root
    (and by the user who ran sudo), else by the user running doctor."""
    if is_postgresql_url(config.db):
        from replytrack.cli.doctor_pg import check_store_pg  # needs psycopg, a PostgreSQL extra

        return check_store_pg(config)
    try:
        open_store(config.db).close_all()
        unusable = ""
    except StoreError as exc:
        unusable = str(exc)
    if unusable and ("cannot open" not in unusable and "cannot read" not in unusable):
        if "replytrack migrate" in unusable:
            fix = "replytrack migrate"
        elif "does not exist" in unusable or "no replytrack schema" in unusable:
            fix = "replytrack init"
        else:
            fix = "check db (or --db) names the store; else restore it from a backup"
        return [Finding(FAIL, "store", unusable, fix)]
    findings: list[Finding] = []
    me = _name(os.geteuid())
    as_root = os.geteuid() == 0
    service = _account(service_user)
    key = str(config.secret_path)
    if as_root and service is not None:
        who = service_user
        found = store_probe.probe_as(service_user, config.db, key)
    else:
        who = me
        found = store_probe.probe(config.db)
        if as_root:
            findings.append(
                Finding(
                    WARN,
                    "store",
                    f"no user {service_user} here: the store was write-tested as root, whom"
                    " file modes do not stop",
                    "give --service-user, the User= of the replytrack units",
                )
            )
    directory = Path(config.db).resolve().parent
    if who == service_user:
        fix = (
            f"let {who} write {config.db}, its -wal and -shm files and {directory}"
            " (owner and mode; `lsattr -d` shows an immutable i flag)"
        )
    else:
        fix = _ops_fix(config, who, service_user)
    problems = [f"{p} (as user {who})" for p in found["directory"]]
    if unusable:
        # Not even opened here (an unreadable file or directory): that, and the reason the
        # directory gave the probe.
        problems.append(f"{unusable} (as user {me})")
    else:
        problems += [f"{p} (as user {who})" for p in found["store"]]
    findings += [Finding(FAIL, "store", problem, fix) for problem in problems]
    for problem in found["secret"]:
        findings.append(Finding(FAIL, "secret", f"{problem} (as user {who})", f"chown {who} {key}"))
    if not problems:
        findings.append(Finding(OK, "store", f"store {config.db} takes writes (as user {who})"))
    if as_root and service is not None:
        findings += _group_findings(Path(config.db), service)
        findings += _invoking_user(config, service_user)
    return findings


def _invoking_user(config: Config, service_user: str) -> list[Finding]:
    """Run with sudo: what the ops commands meet as the user who ran it."""
    user = os.environ.get("SUDO_USER", "")
    if not user or user in ("root", service_user) or _account(user) is None:
        return []
    found = store_probe.probe_as(user, config.db, str(config.secret_path))
    problems = found["directory"] + found["store"]
    findings = [
        Finding(
            WARN,
            "store",
            f"{p} (as user {user}, who ran sudo): the ops commands fail for {user}",
            _ops_fix(config, user, service_user),
        )
        for p in problems
    ]
    if found["secret"]:
        findings.append(
            Finding(
                WARN,
                "secret",
                f"key file {config.secret_path} is for {service_user} only (as user {user}):"
                f" the commands that need it ({KEY_COMMANDS}) run as the service user",
                f"run them as the service user: {_as_service(config, service_user)} check FILE.eml",
            )
        )
    if not problems:
        findings.append(
            Finding(OK, "store", f"store {config.db} takes writes (as user {user}, who ran sudo)")
        )
    return findings
