"""``replytrack doctor``: check a live installation and say how to fix what is wrong.

Each check gives findings (OK, WARN or FAIL, what was seen, and the fix). Postfix is read
with ``postconf`` only; nothing is changed. The parsing helpers are pure and tested directly.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from replytrack.cli.common import State, cli, emit, output_options, pass_state
from replytrack.config import (
    Config,
    ConfigError,
    is_postgresql_url,
    notify_problems,
    parse_hostport,
)
from replytrack.store import StoreError, open_store
from replytrack.store import probe as store_probe
from replytrack.tokens import KeyFileError, load_keyring

OK, WARN, FAIL = "OK", "WARN", "FAIL"
CHECKS = (
    "config",
    "secret",
    "store",
    "journal",
    "outbox",
    "relaying",
    "proxy",
    "milter",
    "postfix",
)
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "localhost.localdomain"}
_ANY = {"", "0.0.0.0", "::", "*"}


@dataclass(frozen=True)
class Finding:
    """One result of a check."""

    status: str
    check: str
    message: str
    fix: str = ""


# --- socket specs ----------------------------------------------------------------------------


def parse_socket_spec(spec: str) -> tuple[str, str, int | None]:
    """A milter socket in pymilter/Sendmail form (``inet:8894@127.0.0.1``, ``unix:/path``)
    or Postfix form (``inet:127.0.0.1:8894``) as ``(family, host or path, port)``."""
    family, sep, rest = spec.strip().partition(":")
    if not sep:
        raise ValueError(f"{spec!r} is not a socket spec like inet:8894@127.0.0.1")
    family = family.lower()
    if family in ("unix", "local"):
        return "unix", rest, None
    if family not in ("inet", "inet6"):
        raise ValueError(f"{spec!r}: unknown socket family {family!r}")
    if "@" in rest:
        port_text, _, host = rest.partition("@")
    else:
        host, _, port_text = rest.rpartition(":")
    host = host.strip("[]")
    if not port_text.isdigit():
        raise ValueError(f"{spec!r} has no port")
    return "inet", host.lower(), int(port_text)


def same_host(a: str, b: str) -> bool:
    """True when two listener hosts are the same for our purposes (loopback aliases, any)."""
    a, b = a.lower().strip("[]"), b.lower().strip("[]")
    if a == b or a in _ANY or b in _ANY:
        return True
    return a in _LOOPBACK and b in _LOOPBACK


def same_socket(a: str, b: str) -> bool:
    """True when two socket specs (either syntax) name the same listener."""
    try:
        fa, ha, pa = parse_socket_spec(a)
        fb, hb, pb = parse_socket_spec(b)
    except ValueError:
        return False
    if fa != fb:
        return False
    if fa == "unix":
        return os.path.normpath(ha) == os.path.normpath(hb)
    return pa == pb and same_host(ha, hb)


def reachable(spec: str, timeout: float = 2.0) -> str | None:
    """None when something accepts a connection on ``spec``, else why not."""
    try:
        family, host, port = parse_socket_spec(spec)
    except ValueError as exc:
        return str(exc)
    try:
        if family == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(host)
        else:
            target = "127.0.0.1" if host in _ANY else host
            with socket.create_connection((target, port), timeout=timeout):
                pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


# --- Postfix ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MilterEntry:
    """One entry of smtpd_milters: its socket and its per-milter settings."""

    socket: str
    settings: dict[str, str]


def parse_milters(value: str) -> list[MilterEntry]:
    """Split a (``postconf -x`` expanded) smtpd_milters value into entries.

    Entries are separated by commas or whitespace; ``{ socket, name=value, ... }`` groups a
    socket with per-milter settings (Postfix 3.0+).
    """
    entries: list[MilterEntry] = []
    for match in re.finditer(r"\{([^}]*)\}|([^\s,{}]+)", value):
        if match.group(2) is not None:
            entries.append(MilterEntry(match.group(2), {}))
            continue
        inner = re.sub(r"\s*=\s*", "=", match.group(1))
        parts = [p for p in re.split(r"[\s,]+", inner) if p]
        if not parts:
            continue
        settings = {}
        for part in parts[1:]:
            name, _, setting = part.partition("=")
            settings[name.lower()] = setting
        entries.append(MilterEntry(parts[0], settings))
    return entries


def parse_master_services(text: str) -> list[tuple[str, str]]:
    """``(service name, type)`` of each master.cf service in ``postconf -M`` output."""
    services = []
    for line in text.splitlines():
        if not line.strip() or line[0].isspace() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) >= 2:
            services.append((fields[0], fields[1]))
    return services


def parse_service_params(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """Per-service ``-o`` overrides from ``postconf -P`` output, by (service, type)."""
    params: dict[tuple[str, str], dict[str, str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        path = key.strip().split("/")
        if len(path) != 3:
            continue
        params.setdefault((path[0], path[1]), {})[path[2]] = value.strip()
    return params


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


class Postconf:
    """Runs ``postconf`` (against ``config_dir`` when given); raises RuntimeError on failure."""

    def __init__(self, binary: str, config_dir: str | None) -> None:
        self.binary = binary
        self.config_dir = config_dir

    def run(self, *args: str) -> str:
        cmd = [self.binary]
        if self.config_dir:
            cmd += ["-c", self.config_dir]
        cmd += list(args)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"{' '.join(cmd)}: {exc}") from None
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"{cmd[0]} exited {done.returncode}")
        return done.stdout

    def value(self, name: str) -> str:
        return self.run("-xh", name).strip()


def postconf_binary() -> str | None:
    """The postconf program, if Postfix is installed."""
    found = shutil.which("postconf")
    if found:
        return found
    for candidate in ("/usr/sbin/postconf", "/usr/local/sbin/postconf"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _postfix_milter_spec(spec: str) -> str:
    """Our milter socket written the way Postfix wants it in smtpd_milters."""
    family, host, port = parse_socket_spec(spec)
    if family == "unix":
        return f"unix:{host}"
    return f"inet:{host or '127.0.0.1'}:{port}"


def check_postfix(config: Config, postconf: Postconf) -> list[Finding]:
    """Postfix settings for replytrack: milter listed, last, fails open; reinjection port."""
    findings: list[Finding] = []
    where = f" ({postconf.config_dir})" if postconf.config_dir else ""
    try:
        version = postconf.value("mail_version")
        milters_value = postconf.value("smtpd_milters")
        global_action = postconf.value("milter_default_action")
        services = parse_master_services(postconf.run("-M"))
        overrides = parse_service_params(postconf.run("-P"))
    except RuntimeError as exc:
        return [
            Finding(
                FAIL,
                "postfix",
                f"cannot read the Postfix configuration{where}: {exc}",
                "check the path given to --postfix-config, or run doctor as a user who may"
                " read /etc/postfix",
            )
        ]
    ours_spec = _postfix_milter_spec(config.milter_socket)
    wanted = f"{{ {ours_spec}, default_action=accept }}"
    milters = parse_milters(milters_value)
    index = next(
        (i for i, m in enumerate(milters) if same_socket(m.socket, config.milter_socket)), None
    )
    if index is None:
        listed = ", ".join(m.socket for m in milters) or "nothing"
        new_value = ", ".join(filter(None, [milters_value, wanted]))
        findings.append(
            Finding(
                FAIL,
                "postfix",
                f"smtpd_milters{where} does not list the replytrack milter {ours_spec}"
                f" (it lists {listed}): inbound replies are not tracked",
                f"postconf -e 'smtpd_milters = {new_value}' && postfix reload",
            )
        )
    else:
        entry = milters[index]
        if index != len(milters) - 1:
            findings.append(
                Finding(
                    WARN,
                    "postfix",
                    f"the replytrack milter is number {index + 1} of {len(milters)} in"
                    " smtpd_milters; it should be last so it sees other milters' changes",
                    "move the replytrack entry to the end of smtpd_milters",
                )
            )
        else:
            findings.append(
                Finding(
                    OK, "postfix", f"smtpd_milters lists the replytrack milter last ({ours_spec})"
                )
            )
        action = entry.settings.get("default_action")
        if action == "accept":
            findings.append(
                Finding(OK, "postfix", "the replytrack milter fails open (default_action=accept)")
            )
        elif action is None and global_action == "accept":
            findings.append(
                Finding(OK, "postfix", "milters fail open (milter_default_action = accept)")
            )
        else:
            shown = (
                f"default_action={action}" if action else f"milter_default_action = {global_action}"
            )
            note = ""
            if _version_tuple(version) >= (3, 11):
                note = " (Postfix 3.11 and later default to shutdown)"
            findings.append(
                Finding(
                    FAIL,
                    "postfix",
                    f"the replytrack milter does not fail open: {shown}{note}; a stopped milter"
                    " would delay or refuse inbound mail",
                    f"write it as {wanted} in smtpd_milters",
                )
            )
    findings.append(_check_reinjection(config, services, overrides, milters_value, where))
    return findings


def _check_reinjection(
    config: Config,
    services: list[tuple[str, str]],
    overrides: dict[tuple[str, str], dict[str, str]],
    global_milters: str,
    where: str,
) -> Finding:
    """The proxy's upstream should be a Postfix listener that runs no milters."""
    try:
        host, port = parse_hostport(config.proxy_upstream, setting="proxy.upstream")
    except ConfigError as exc:
        return Finding(FAIL, "postfix", str(exc), "fix proxy.upstream")
    fix = (
        f"add to master.cf: {host}:{port} inet n - n - - smtpd -o smtpd_milters="
        " -o non_smtpd_milters= (or point proxy.upstream at your smarthost)"
    )
    for name, kind in services:
        if kind != "inet":
            continue
        svc_host, sep, svc_port = name.rpartition(":")
        if not sep:
            svc_host, svc_port = "", name
        if svc_port != str(port) or not same_host(svc_host, host):
            continue
        milters = overrides.get((name, kind), {}).get("smtpd_milters")
        if milters is None:
            milters = global_milters
        if any(same_socket(m.socket, config.milter_socket) for m in parse_milters(milters)):
            return Finding(
                FAIL,
                "postfix",
                f"the reinjection listener {name} (proxy.upstream) runs the replytrack milter:"
                " outbound mail would be inspected as inbound",
                f"add -o smtpd_milters= to the {name} service in master.cf",
            )
        return Finding(
            OK,
            "postfix",
            f"reinjection listener {name} for proxy.upstream runs no replytrack milter",
        )
    return Finding(
        WARN,
        "postfix",
        f"no master.cf service{where} listens on proxy.upstream {config.proxy_upstream};"
        " fine if the proxy relays to a smarthost, not if it relays to this Postfix",
        fix,
    )


# --- the other checks ------------------------------------------------------------------------


def check_config(config: Config) -> list[Finding]:
    if config.source:
        return [Finding(OK, "config", f"settings read from {config.source}")]
    return [
        Finding(
            WARN,
            "config",
            "no config file found; defaults and REPLYTRACK_* variables only",
            "replytrack init --write-config /etc/replytrack/replytrack.toml",
        )
    ]


def check_secret(config: Config) -> list[Finding]:
    try:
        path = config.secret_path
    except ConfigError as exc:  # a PostgreSQL store and no secret_file
        return [Finding(FAIL, "secret", str(exc), "set secret_file in the config file")]
    if not path.exists():
        return [
            Finding(
                FAIL,
                "secret",
                f"key file {path} does not exist: the proxy and the milter refuse to start",
                "restore it from a backup (replies to mail already sent are matched with it);"
                " on a new installation: replytrack init",
            )
        ]
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return [
            Finding(
                FAIL,
                "secret",
                f"key file {path} has mode {mode:o}: others can read it and forge Message-IDs",
                f"chmod 600 {path}",
            )
        ]
    try:
        keyring = load_keyring(path, create=False)
    except KeyFileError as exc:
        return [Finding(FAIL, "secret", str(exc), "restore the key file from backup")]
    count = len(keyring.keys)
    return [Finding(OK, "secret", f"key file {path} mode {mode:o}, {count} key(s)")]


def check_store(config: Config, service_user: str = store_probe.SERVICE_USER) -> list[Finding]:
    """The store opens as the daemons open it and takes a real write (a probe row written
    and deleted, a file created in its directory), by the service user when run as root."""
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
    as_root = os.geteuid() == 0
    if as_root and store_probe.user_exists(service_user):
        who = service_user
        found = store_probe.probe_as(service_user, config.db, str(config.secret_path))
    else:
        who = pwd.getpwuid(os.geteuid()).pw_name
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
    if config.db.startswith(("postgres://", "postgresql://")):
        fix = f"grant the database role of {who} the right to write replytrack's tables"
    else:
        directory = Path(config.db).resolve().parent
        fix = (
            f"let {who} write {config.db}, its -wal and -shm files and {directory}"
            " (owner and mode; `lsattr -d` shows an immutable i flag)"
        )
    problems = [f"{p} (as user {who})" for p in found["directory"]]
    if unusable:
        # Not even opened here (an unreadable file or directory): that, and the reason the
        # directory gave the probe.
        problems.append(f"{unusable} (as user {pwd.getpwuid(os.geteuid()).pw_name})")
    else:
        problems += [f"{p} (as user {who})" for p in found["store"]]
    findings += [Finding(FAIL, "store", problem, fix) for problem in problems]
    for problem in found["secret"]:
        path = config.secret_path
        findings.append(
            Finding(FAIL, "secret", f"{problem} (as user {who})", f"chown {who} {path}")
        )
    if not problems:
        findings.append(Finding(OK, "store", f"store {config.db} takes writes (as user {who})"))
    return findings


def check_journal(config: Config) -> list[Finding]:
    """The milter's journal locations: each really written to, and what waits in them."""
    from replytrack.milter.journal import Journal, fallback_path, probe

    path = config.journal_path
    second, _ = fallback_path(config)
    findings: list[Finding] = []
    problem = probe(path)
    if problem:
        findings.append(
            Finding(
                FAIL,
                "journal",
                f"{problem}: verdicts the store cannot take would go to {second}, then only"
                " to the log",
                f"install -d -m 0750 -o replytrack -g replytrack {path.parent}"
                " (or set milter.journal to a writable place off the store's filesystem)",
            )
        )
    else:
        findings.append(Finding(OK, "journal", f"journal {path} is writable"))
    if second.resolve() != path.resolve():
        problem = probe(second)
        if problem and second.parent.exists():
            findings.append(
                Finding(
                    WARN,
                    "journal",
                    f"fallback {problem}",
                    "make it writable by the milter, or set milter.journal_fallback",
                )
            )
    # The milter moves a journal aside to ``<journal>.replay`` while replaying it; backlog()
    # counts both.
    for location in dict.fromkeys((path, second)):
        backlog = Journal(location).backlog()
        if backlog:
            findings.append(
                Finding(
                    WARN,
                    "journal",
                    f"{backlog} inbound verdict(s) journaled in {location} not yet written to"
                    " the store",
                    "make sure the store is writable and the milter is running (it replays the"
                    " journal), or run `replytrack journal replay`",
                )
            )
    return findings


def check_notify_settings(config: Config) -> list[Finding]:
    """The webhook settings as the senders (milter, proxy, ``notify``) check them at start.

    No finding shows the secret, nor credentials written in a URL.
    """
    problems = notify_problems(config)
    if problems:
        fix = "fix the setting: the milter, the proxy and `replytrack notify` refuse to start"
        return [Finding(FAIL, "outbox", problem, fix) for problem in problems]
    if not config.notify_webhooks:
        return []
    if not config.notify_secret.strip():
        return [
            Finding(
                WARN,
                "outbox",
                "webhooks go out unsigned (notify.allow_unsigned = true, no notify.secret):"
                " receivers cannot tell them from forged requests",
                "set notify.secret and verify X-ReplyTrack-Signature in the receivers",
            )
        ]
    count = len(config.notify_webhooks)
    return [Finding(OK, "outbox", f"{count} webhook URL(s), signed with notify.secret")]


def check_outbox(config: Config) -> list[Finding]:
    settings = check_notify_settings(config)
    if not is_postgresql_url(config.db) and not Path(config.db).exists():
        return settings
    try:
        store = open_store(config.db, create=False)
        try:
            counts = store.outbox_counts()
            # Rows due for five minutes or more: no sender is working through the outbox.
            overdue = store.outbox_counts(now=time.time() - 300)["due"]
        finally:
            store.close()
    except StoreError as exc:
        return [*settings, Finding(WARN, "outbox", f"cannot read the outbox: {exc}")]
    findings = settings
    if not config.notify_webhooks:
        if counts["pending"]:
            findings.append(
                Finding(
                    WARN,
                    "outbox",
                    f"{counts['pending']} event(s) queued but no webhook is configured",
                    "set notify.webhooks (or ignore; `replytrack prune` keeps them)",
                )
            )
        else:
            findings.append(Finding(OK, "outbox", "no webhooks configured, nothing queued"))
        return findings
    if overdue:
        findings.append(
            Finding(
                WARN,
                "outbox",
                f"{overdue} notification(s) overdue by 5 minutes or more ({counts['pending']}"
                " pending)",
                "run `replytrack notify` (or the milter/proxy with webhooks configured) and"
                " check that the webhook receivers answer 2xx",
            )
        )
    else:
        findings.append(Finding(OK, "outbox", f"{counts['pending']} notification(s) pending"))
    if counts["dead"]:
        findings.append(
            Finding(
                WARN,
                "outbox",
                f"{counts['dead']} notification(s) given up after {config.notify_max_attempts}"
                " attempts",
                "fix the receiver; the outbox table's last_error says what it answered",
            )
        )
    return findings


def check_listener(name: str, spec: str, command: str) -> list[Finding]:
    why = reachable(spec)
    if why is None:
        return [Finding(OK, name, f"{command} answers on {spec}")]
    return [
        Finding(
            FAIL,
            name,
            f"nothing answers on {spec} ({why})",
            f"start `replytrack {command}` (e.g. systemctl start replytrack-{command})",
        )
    ]



def check_relaying(config: Config) -> list[Finding]:
    """Mails whose upstream answer the proxy never recorded: left ``relaying`` past
    ``proxy.unconfirmed_after`` (no proxy is sweeping) or marked ``unconfirmed``."""
    if not is_postgresql_url(config.db) and not Path(config.db).exists():
        return []
    cutoff = time.time() - config.proxy_unconfirmed_after
    try:
        store = open_store(config.db, create=False)
        try:
            stuck = store.count_relaying(cutoff)
            unconfirmed = len(store.messages(status="unconfirmed", since=time.time() - 86400))
        finally:
            store.close()
    except StoreError as exc:
        return [Finding(WARN, "relaying", f"cannot read recorded mails: {exc}")]
    findings = []
    if stuck:
        findings.append(
            Finding(
                WARN,
                "relaying",
                f"{stuck} mail(s) still relaying {config.proxy_unconfirmed_after:g} s or more"
                " after they were recorded: no proxy has swept them",
                "start `replytrack proxy` (it marks them unconfirmed at start); they are"
                " matched and suppressed meanwhile",
            )
        )
    if unconfirmed:
        findings.append(
            Finding(
                WARN,
                "relaying",
                f"{unconfirmed} mail(s) in the last 24 h unconfirmed: the proxy never learned"
                " whether the upstream took them (killed, or the store failed at that moment)",
                "check the upstream's log for their Message-IDs:"
                " `replytrack messages --status unconfirmed`",
            )
        )
    if not findings:
        findings.append(Finding(OK, "relaying", "every recorded mail has its upstream answer"))
    return findings

@cli.command("doctor")
@click.option(
    "--postfix-config",
    metavar="DIR",
    help="Postfix configuration directory to check (postconf -c DIR) [default: the system's].",
)
@click.option(
    "--skip",
    type=click.Choice(CHECKS),
    multiple=True,
    help="Leave out a check (repeatable), e.g. proxy on an inbound-only host.",
)
@click.option(
    "--service-user",
    metavar="USER",
    default=store_probe.SERVICE_USER,
    show_default=True,
    help="When run as root, test the store's writability as this user (User= of the units).",
)
@output_options
@pass_state
def doctor_command(
    state: State,
    postfix_config: str | None,
    skip: tuple[str, ...],
    service_user: str,
    fmt: str,
) -> None:
    """Check a live installation: Postfix milter settings, the proxy and milter sockets,
    the store, the key file, journal and notification backlog. Each finding says how to
    fix it. Exits 1 when anything FAILs.

    \b
    Example:
      replytrack doctor
      replytrack doctor --postfix-config /etc/postfix-in --skip proxy --json
    """
    config = state.config()
    checks: dict[str, Callable[[], list[Finding]]] = {
        "config": lambda: check_config(config),
        "secret": lambda: check_secret(config),
        "store": lambda: check_store(config, service_user),
        "journal": lambda: check_journal(config),
        "outbox": lambda: check_outbox(config),
        "relaying": lambda: check_relaying(config),
        "proxy": lambda: check_listener(
            "proxy", "inet:" + config.proxy_listen.replace("[", "").replace("]", ""), "proxy"
        ),
        "milter": lambda: check_listener("milter", config.milter_socket, "milter"),
        "postfix": lambda: _postfix(config, postfix_config),
    }
    findings: list[Finding] = []
    for name in CHECKS:
        if name not in skip:
            findings.extend(checks[name]())
    failed = sum(f.status == FAIL for f in findings)
    if fmt != "table":
        emit([asdict(f) for f in findings], fmt, columns=["status", "check", "message", "fix"])
    else:
        # Findings and fixes are sentences: print them whole, not cut to table cells.
        for f in findings:
            click.echo(f"{f.status:<4}  {f.check:<8} {f.message}")
            if f.fix and f.status != OK:
                click.echo(f"{'':<15}fix: {f.fix}")
        warned = sum(f.status == WARN for f in findings)
        click.echo(
            f"\n{len(findings) - failed - warned} ok, {warned} warning(s), {failed} failure(s)"
        )
    if failed:
        click.get_current_context().exit(1)


def _postfix(config: Config, postfix_config: str | None) -> list[Finding]:
    binary = postconf_binary()
    if binary is None:
        return [
            Finding(
                FAIL if postfix_config else WARN,
                "postfix",
                "Postfix is not installed here (no postconf); Postfix settings not checked",
                "run doctor on the Postfix host, or --skip postfix",
            )
        ]
    if postfix_config is None and not Path("/etc/postfix/main.cf").is_file():
        return [
            Finding(
                WARN,
                "postfix",
                "Postfix is installed but not configured here (no /etc/postfix/main.cf)",
                "run doctor on the Postfix host, give --postfix-config DIR, or --skip postfix",
            )
        ]
    if postfix_config and not Path(postfix_config, "main.cf").is_file():
        return [
            Finding(
                FAIL,
                "postfix",
                f"{postfix_config} holds no main.cf",
                "give --postfix-config the directory of main.cf",
            )
        ]
    return check_postfix(config, Postconf(binary, postfix_config))
