"""Doctor's Postfix checks: the milter listed, last and failing open; the reinjection
listener; content filters that would loop or swallow inbound mail; main.cf parameters set
twice; Postfix's own warnings. Postfix is read with ``postconf`` only; nothing is changed.
"""

from __future__ import annotations

from pathlib import Path

from replytrack.cli.doctor import postconf as pc
from replytrack.cli.doctor.findings import FAIL, OK, WARN, Finding, same_host, same_socket
from replytrack.cli.doctor.postconf import MilterEntry, Postconf, parse_milters
from replytrack.config import Config, ConfigError, parse_hostport
from replytrack.milter.socket_spec import parse_socket_spec

_MILTER_LISTS = ("smtpd_milters", "non_smtpd_milters")
# The inbound SMTP service of master.cf: mail from the Internet.
_INBOUND_SERVICES = {"smtp", "25"}


def _postfix_milter_spec(spec: str) -> str:
    """Our milter socket written the way Postfix wants it in smtpd_milters."""
    family, host, port = parse_socket_spec(spec)
    if family == "unix":
        return f"unix:{host}"
    return f"inet:{host or '127.0.0.1'}:{port}"


class _Site:
    """What the checks read from one Postfix instance, read once."""

    def __init__(self, postconf: Postconf) -> None:
        self.postconf = postconf
        self.version = postconf.value("mail_version")
        self.milters_value = postconf.value("smtpd_milters")
        self.global_action = postconf.value("milter_default_action")
        self.content_filter = postconf.value("content_filter")
        self.services = pc.parse_master_services(postconf.run("-M"))
        self.overrides = pc.parse_service_params(postconf.run("-P"))
        # Only with -n does postconf warn about parameters nothing uses (a misspelled name).
        postconf.run("-n")
        self.directory = postconf.directory()
        self.where = f" ({postconf.config_dir})" if postconf.config_dir else ""

    def service_setting(self, service: str, kind: str, name: str, global_value: str) -> str:
        return self.overrides.get((service, kind), {}).get(name, global_value)


def check_postfix(config: Config, postconf: Postconf) -> list[Finding]:
    """Postfix settings for replytrack; every fix runs against the instance checked."""
    try:
        site = _Site(postconf)
    except RuntimeError as exc:
        where = f" ({postconf.config_dir})" if postconf.config_dir else ""
        return [
            Finding(
                FAIL,
                "postfix",
                f"cannot read the Postfix configuration{where}: {exc}",
                "check the path given to --postfix-config, or run doctor as a user who may"
                " read /etc/postfix",
            )
        ]
    findings = _check_milter_entry(config, site)
    findings.append(_check_reinjection(config, site))
    findings += _check_content_filters(config, site)
    duplicated, more = _check_duplicates(config, site)
    findings += more
    findings += _postfix_warnings(site, duplicated)
    return findings


def _with_ours_last(others: list[MilterEntry], ours: MilterEntry) -> str:
    return ", ".join(m.text() for m in [*others, ours])


def _check_milter_entry(config: Config, site: _Site) -> list[Finding]:
    ours_spec = _postfix_milter_spec(config.milter_socket)
    wanted = MilterEntry(ours_spec, {"default_action": "accept"})
    milters = parse_milters(site.milters_value)
    index = next(
        (i for i, m in enumerate(milters) if same_socket(m.socket, config.milter_socket)), None
    )
    postconf, where = site.postconf, site.where
    if index is None:
        listed = ", ".join(m.socket for m in milters) or "nothing"
        return [
            Finding(
                FAIL,
                "postfix",
                f"smtpd_milters{where} does not list the replytrack milter {ours_spec}"
                f" (it lists {listed}): inbound replies are not tracked",
                postconf.set_main("smtpd_milters", _with_ours_last(milters, wanted)),
            )
        ]
    findings: list[Finding] = []
    entry = milters[index]
    others = milters[:index] + milters[index + 1 :]
    if index != len(milters) - 1:
        findings.append(
            Finding(
                WARN,
                "postfix",
                f"the replytrack milter is number {index + 1} of {len(milters)} in"
                " smtpd_milters; it should be last so it sees other milters' changes",
                postconf.set_main("smtpd_milters", _with_ours_last(others, entry)),
            )
        )
    else:
        findings.append(
            Finding(OK, "postfix", f"smtpd_milters lists the replytrack milter last ({ours_spec})")
        )
    action = entry.settings.get("default_action")
    if action == "accept":
        findings.append(
            Finding(OK, "postfix", "the replytrack milter fails open (default_action=accept)")
        )
    elif action is None and site.global_action == "accept":
        findings.append(
            Finding(OK, "postfix", "milters fail open (milter_default_action = accept)")
        )
    else:
        shown = (
            f"default_action={action}"
            if action
            else f"milter_default_action = {site.global_action}"
        )
        note = ""
        if pc.version_tuple(site.version) >= (3, 11):
            note = " (Postfix 3.11 and later default to shutdown)"
        fixed = MilterEntry(entry.socket, {**entry.settings, "default_action": "accept"})
        findings.append(
            Finding(
                FAIL,
                "postfix",
                f"the replytrack milter does not fail open: {shown}{note}; a stopped milter"
                " would delay or refuse inbound mail",
                postconf.set_main("smtpd_milters", _with_ours_last(others, fixed)),
            )
        )
    return findings


def _targets_proxy(config: Config, filter_value: str) -> bool:
    target = pc.filter_nexthop(filter_value)
    if target is None:
        return False
    try:
        host, port = parse_hostport(config.proxy_listen, setting="proxy.listen")
    except ConfigError:
        return False
    return target[1] == port and same_host(target[0], host)


def _check_reinjection(config: Config, site: _Site) -> Finding:
    """The proxy's upstream should be a Postfix listener that runs no milters and no
    content filter leading back to the proxy."""
    try:
        host, port = parse_hostport(config.proxy_upstream, setting="proxy.upstream")
    except ConfigError as exc:
        return Finding(FAIL, "postfix", str(exc), "fix proxy.upstream")
    postconf = site.postconf
    for name, kind in site.services:
        if kind != "inet":
            continue
        svc_host, sep, svc_port = name.rpartition(":")
        if not sep:
            svc_host, svc_port = "", name
        if svc_port != str(port) or not same_host(svc_host, host):
            continue
        content_filter = site.service_setting(name, kind, "content_filter", site.content_filter)
        if _targets_proxy(config, content_filter):
            return Finding(
                FAIL,
                "postfix",
                f"mail loop: proxy.upstream {config.proxy_upstream} is the listener {name},"
                f" whose content_filter {content_filter} hands every mail back to the proxy",
                "point proxy.upstream at the reinjection listener (master.cf.reinject), or: "
                + postconf.set_service(name, kind, "content_filter", ""),
            )
        milters = site.service_setting(name, kind, "smtpd_milters", site.milters_value)
        if any(same_socket(m.socket, config.milter_socket) for m in parse_milters(milters)):
            return Finding(
                FAIL,
                "postfix",
                f"the reinjection listener {name} (proxy.upstream) runs the replytrack milter:"
                " outbound mail would be inspected as inbound",
                postconf.set_service(name, kind, "smtpd_milters", ""),
            )
        return Finding(
            OK,
            "postfix",
            f"reinjection listener {name} for proxy.upstream runs no replytrack milter",
        )
    service = f"{host}:{port}"
    fix = (
        postconf.add_service(service, "inet", f"{service} inet n - n - - smtpd")
        + " && "
        + postconf.set_service(service, "inet", "smtpd_milters", "")
        + " (or point proxy.upstream at your smarthost)"
    )
    return Finding(
        WARN,
        "postfix",
        f"no master.cf service{site.where} listens on proxy.upstream {config.proxy_upstream};"
        " fine if the proxy relays to a smarthost, not if it relays to this Postfix",
        fix,
    )


def _check_content_filters(config: Config, site: _Site) -> list[Finding]:
    """A content filter that sends inbound mail through the proxy: stamped and recorded
    as if it had been sent by us."""
    postconf = site.postconf
    if _targets_proxy(config, site.content_filter):
        return [
            Finding(
                FAIL,
                "postfix",
                f"main.cf{site.where} sets content_filter = {site.content_filter} for every"
                " service: inbound mail would pass through the proxy and be stamped and"
                " recorded as if you had sent it",
                f"{postconf.remove_main('content_filter')}; set it only on the services"
                f" your applications submit to (-o content_filter={site.content_filter})",
            )
        ]
    findings = []
    for name, kind in site.services:
        if kind != "inet" or name.rpartition(":")[2] not in _INBOUND_SERVICES:
            continue
        value = site.service_setting(name, kind, "content_filter", site.content_filter)
        if _targets_proxy(config, value):
            findings.append(
                Finding(
                    FAIL,
                    "postfix",
                    f"the inbound service {name} has content_filter = {value}: mail from the"
                    " Internet would pass through the proxy and be recorded as sent",
                    postconf.set_service(name, kind, "content_filter", ""),
                )
            )
    return findings


def _check_duplicates(config: Config, site: _Site) -> tuple[set[str], list[Finding]]:
    """Parameters main.cf sets more than once: Postfix keeps the last silently, so a second
    smtpd_milters (``cat main.cf.inbound >> main.cf``) drops the milters of the first."""
    main_cf = site.directory / "main.cf"
    try:
        entries = pc.parse_main_cf(main_cf.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        return set(), [Finding(WARN, "postfix", f"cannot read {main_cf}: {exc.strerror}")]
    by_name: dict[str, list[pc.MainEntry]] = {}
    for entry in entries:
        by_name.setdefault(entry.name, []).append(entry)
    findings = []
    duplicated = {name for name, found in by_name.items() if len(found) > 1}
    for name in sorted(duplicated):
        found = by_name[name]
        lines = ", ".join(str(e.line) for e in found)
        earlier = ", ".join(str(e.line) for e in found[:-1])
        last = found[-1]
        if name in _MILTER_LISTS:
            kept = parse_milters(last.value)
            dropped: list[MilterEntry] = []
            for entry in found[:-1]:
                for milter in parse_milters(entry.value):
                    seen = [m.socket for m in [*kept, *dropped]]
                    if not any(same_socket(milter.socket, s) or milter.socket == s for s in seen):
                        dropped.append(milter)
            if dropped:
                ours = [m for m in kept if same_socket(m.socket, config.milter_socket)]
                rest = [m for m in kept if m not in ours]
                merged = ", ".join(m.text() for m in [*dropped, *rest, *ours])
                names = ", ".join(m.socket for m in dropped)
                findings.append(
                    Finding(
                        FAIL,
                        "postfix",
                        f"{main_cf} sets {name} {len(found)} times (lines {lines}): Postfix"
                        f" keeps line {last.line} only, so {names} silently dropped out",
                        f"in {main_cf}, delete line(s) {earlier} and make line {last.line}:"
                        f" {name} = {merged}; then {site.postconf.reload()}",
                    )
                )
                continue
        findings.append(
            Finding(
                WARN,
                "postfix",
                f"{main_cf} sets {name} {len(found)} times (lines {lines}); Postfix uses"
                f" line {last.line}: {name} = {last.value}",
                f"in {main_cf}, delete line(s) {earlier}; then {site.postconf.reload()}",
            )
        )
    return duplicated, findings


def _postfix_warnings(site: _Site, explained: set[str]) -> list[Finding]:
    """Postfix's own warnings about the configuration, those not said better above."""
    findings = []
    for warning in site.postconf.warnings:
        if any(
            f"earlier entry: {name}=" in warning or f'entries for "{name}"' in warning
            for name in explained
        ):
            continue
        findings.append(
            Finding(
                WARN,
                "postfix",
                f"Postfix warns: {warning}",
                f"correct what it names; `{site.postconf.show_warnings()}` shows the warnings",
            )
        )
    return findings


def postfix_findings(config: Config, postfix_config: str | None) -> list[Finding]:
    """The postfix check: where Postfix is, then :func:`check_postfix`."""
    binary = pc.postconf_binary()
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
