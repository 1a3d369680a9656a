"""The ``replytrack doctor`` command: runs the checks, prints the findings, exits 1 on FAIL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import click

from replytrack.cli.common import State, cli, emit, output_options, pass_state
from replytrack.cli.doctor.access import check_secret, check_store
from replytrack.cli.doctor.findings import CHECKS, FAIL, OK, WARN, Finding
from replytrack.cli.doctor.listeners import check_listener, check_proxy
from replytrack.cli.doctor.local import check_config, check_journal, check_outbox, check_relaying
from replytrack.cli.doctor.postfix import postfix_findings
from replytrack.store import probe as store_probe


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
    help="The daemons' user (User= of the units): run as root, doctor tests the store and"
    " the key as this user; run as another user, it checks the key belongs to it.",
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
        "secret": lambda: check_secret(config, service_user),
        "store": lambda: check_store(config, service_user),
        "journal": lambda: check_journal(config),
        "outbox": lambda: check_outbox(config),
        "relaying": lambda: check_relaying(config),
        "proxy": lambda: check_proxy(config),
        "milter": lambda: check_listener("milter", config.milter_socket, "milter"),
        "postfix": lambda: postfix_findings(config, postfix_config),
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
