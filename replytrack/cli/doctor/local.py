"""Doctor's checks of this host's own parts: the config file and its example values, the
milter's journal, the notification outbox, and mails whose upstream answer was never
recorded."""

from __future__ import annotations

import time
from pathlib import Path

from replytrack.cli.doctor.findings import FAIL, INFO, OK, WARN, Finding
from replytrack.config import MONITOR, Config, is_postgresql_url, notify_problems
from replytrack.config.mode import describe
from replytrack.store import StoreError, open_store

# Domains nobody owns (RFC 2606, RFC 6761): the examples in the docs and the placeholder
# replytrack uses when none is set. Message-IDs under them still match replies, but they
# say the example configuration went live unedited.
_EXAMPLE_DOMAINS = ("example.com", "example.net", "example.org")
_RESERVED_SUFFIXES = (".example", ".invalid", ".test", ".localhost")


def example_domain(domain: str) -> bool:
    """True for a domain from the docs or a reserved name, not one the site owns."""
    name = domain.strip().strip(".").lower()
    if name in _EXAMPLE_DOMAINS or any(name.endswith("." + d) for d in _EXAMPLE_DOMAINS):
        return True
    return ("." + name).endswith(_RESERVED_SUFFIXES)


def check_config(config: Config) -> list[Finding]:
    findings = []
    if config.source:
        findings.append(Finding(OK, "config", f"settings read from {config.source}"))
        where = f"in {config.source}"
    else:
        findings.append(
            Finding(
                WARN,
                "config",
                "no config file found; defaults and REPLYTRACK_* variables only",
                "replytrack init --write-config /etc/replytrack/replytrack.toml",
            )
        )
        where = "in the config file"
    if example_domain(config.domain):
        findings.append(
            Finding(
                WARN,
                "config",
                f"domain = {config.domain} is an example, not a domain you own: every"
                " Message-ID the proxy mints ends in it",
                f"set domain {where} to a domain of yours (e.g. the one you send from),"
                " then restart the proxy",
            )
        )
    findings.append(mode_finding(config, where))
    return findings


def mode_finding(config: Config, where: str) -> Finding:
    """The mode, said in every run: monitor mode is a choice for a first week, so it is
    INFO (neither a warning nor a failure), with how to end it."""
    if config.mode != MONITOR:
        return Finding(OK, "config", describe(config.mode))
    return Finding(
        INFO,
        "config",
        f"{describe(config.mode)}. `replytrack campaigns` shows what would have been"
        f' stopped; to enforce, set mode = "enforce" {where} and'
        " `systemctl reload replytrack-milter replytrack-proxy`",
    )


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
    if not (config.notify_secret.strip() or config.notify_secret_file):
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
