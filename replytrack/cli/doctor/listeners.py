"""Doctor's listener checks: the proxy and milter sockets answer, and the proxy's upstream
is a live SMTP server that is not the proxy itself (a mail loop)."""

from __future__ import annotations

import smtplib
import socket
import ssl

from replytrack.cli.doctor.findings import (
    FAIL,
    OK,
    WARN,
    Finding,
    connect_host,
    reachable,
    same_host,
)
from replytrack.config import Config, ConfigError, parse_hostport

# The proxy's greeting ends with this ident (aiosmtpd's "220 <hostname> <ident>").
_PROXY_IDENT = "replytrack"
_PROBE_TIMEOUT = 10.0


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


def ehlo_probe(config: Config, host: str, port: int) -> tuple[str, str]:
    """The upstream's greeting and its answer to EHLO, as the proxy would meet them.

    Raises OSError (smtplib's errors included) when it cannot be had. With implicit TLS the
    certificate is not verified here: the probe asks whether anything answers SMTP, the
    proxy's own connection still checks the certificate.
    """
    target = connect_host(host)
    client: smtplib.SMTP
    if config.proxy_upstream_tls == "tls":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client = smtplib.SMTP_SSL(timeout=_PROBE_TIMEOUT, context=context)
    else:
        client = smtplib.SMTP(timeout=_PROBE_TIMEOUT)
    try:
        code, banner = client.connect(target, port)
        if code != 220:
            raise smtplib.SMTPConnectError(code, banner)
        ehlo_code, ehlo = client.ehlo(config.hostname or socket.getfqdn())
        answer = f"{ehlo_code} {ehlo.decode('utf-8', 'replace').splitlines()[0] if ehlo else ''}"
        return banner.decode("utf-8", "replace"), answer
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


def check_upstream(config: Config) -> list[Finding]:
    """proxy.upstream answers SMTP and is not the proxy: dead, every mail is refused with a
    4xx; the proxy itself (or another replytrack proxy), every mail loops."""
    try:
        host, port = parse_hostport(config.proxy_upstream, setting="proxy.upstream")
        listen_host, listen_port = parse_hostport(config.proxy_listen, setting="proxy.listen")
    except ConfigError as exc:
        return [Finding(FAIL, "proxy", str(exc), "fix the setting in the config file")]
    if port == listen_port and same_host(host, listen_host):
        return [
            Finding(
                FAIL,
                "proxy",
                f"mail loop: proxy.upstream {config.proxy_upstream} is the proxy's own"
                f" proxy.listen {config.proxy_listen}",
                "set proxy.upstream to the Postfix reinjection listener (e.g."
                " 127.0.0.1:10026, master.cf.reinject) or your smarthost",
            )
        ]
    try:
        banner, ehlo = ehlo_probe(config, host, port)
    except (OSError, smtplib.SMTPException) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return [
            Finding(
                FAIL,
                "proxy",
                f"proxy.upstream {config.proxy_upstream} does not answer SMTP ({why}):"
                " every mail would get 451 4.4.1 from the proxy",
                "start the upstream (the Postfix reinjection listener: postfix start, and"
                " check master.cf) or fix proxy.upstream",
            )
        ]
    if banner.split()[-1:] == [_PROXY_IDENT]:
        return [
            Finding(
                FAIL,
                "proxy",
                f"mail loop: proxy.upstream {config.proxy_upstream} is a replytrack proxy"
                f" (it greets with 220 {banner})",
                "set proxy.upstream to the Postfix reinjection listener or your smarthost",
            )
        ]
    if not ehlo.startswith("250"):
        return [
            Finding(
                WARN,
                "proxy",
                f"proxy.upstream {config.proxy_upstream} answers EHLO with {ehlo}",
                "check the upstream's smtpd_helo_restrictions and its log",
            )
        ]
    return [Finding(OK, "proxy", f"proxy.upstream {config.proxy_upstream} answers: 220 {banner}")]


def check_proxy(config: Config) -> list[Finding]:
    """The proxy's listener answers, and so does its upstream."""
    listen = "inet:" + config.proxy_listen.replace("[", "").replace("]", "")
    return [*check_listener("proxy", listen, "proxy"), *check_upstream(config)]
