"""``replytrack doctor``: check a live installation and say how to fix what is wrong.

Each check gives findings (OK, WARN or FAIL, what was seen, and the fix). The modules, by
job: ``findings`` (what they share), ``postconf`` and ``postfix`` (the Postfix instance),
``listeners`` (the proxy, its upstream, the milter), ``local`` (config, journal, outbox,
relaying), ``access`` (store and key, as the service user, its group and the invoking
user), ``command`` (the CLI command). Importing the package registers the command.
"""

from __future__ import annotations

from replytrack.cli.doctor.access import check_secret, check_store
from replytrack.cli.doctor.command import doctor_command
from replytrack.cli.doctor.findings import (
    CHECKS,
    FAIL,
    OK,
    WARN,
    Finding,
    reachable,
    same_host,
    same_socket,
)
from replytrack.cli.doctor.listeners import check_listener, check_proxy, check_upstream
from replytrack.cli.doctor.local import (
    check_config,
    check_journal,
    check_notify_settings,
    check_outbox,
    check_relaying,
    example_domain,
)
from replytrack.cli.doctor.postconf import (
    MilterEntry,
    Postconf,
    parse_main_cf,
    parse_master_services,
    parse_milters,
    parse_service_params,
)
from replytrack.cli.doctor.postfix import check_postfix, postfix_findings

__all__ = [
    "CHECKS",
    "FAIL",
    "OK",
    "WARN",
    "Finding",
    "MilterEntry",
    "Postconf",
    "check_config",
    "check_journal",
    "check_listener",
    "check_notify_settings",
    "check_outbox",
    "check_postfix",
    "check_proxy",
    "check_relaying",
    "check_secret",
    "check_store",
    "check_upstream",
    "doctor_command",
    "example_domain",
    "parse_main_cf",
    "parse_master_services",
    "parse_milters",
    "parse_service_params",
    "postfix_findings",
    "reachable",
    "same_host",
    "same_socket",
]
