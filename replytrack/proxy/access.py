"""Who may submit mail through the proxy, and where it may listen. No SMTP here.

An open relay that stamps our Message-IDs on anybody's mail must never be possible by
accident: the proxy listens beyond loopback only when clients are restricted (an allowlist
or SMTP AUTH over TLS), and a client outside the allowlist must authenticate before MAIL.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from replytrack.config import Config, ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_loopback_host(host: str) -> bool:
    """True when ``host`` (a literal or a name, resolved once) only means this machine."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def allowed_networks(config: Config) -> list[Network]:
    """The client networks of ``proxy_allow``; a bad entry is a ConfigError."""
    networks = []
    for entry in config.proxy_allow:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"proxy.allow: {entry!r} is not an address or network") from None
    return networks


def check_bind(config: Config, host: str) -> None:
    """Refuse to listen beyond loopback unless clients are restricted: by an allowlist
    (``proxy.allow``) or by SMTP AUTH over TLS (``proxy.auth_file`` with
    ``proxy.tls_cert``/``tls_key``)."""
    if is_loopback_host(host):
        return
    allowlist = bool(config.proxy_allow)
    auth = bool(config.proxy_auth_file and config.proxy_tls_cert and config.proxy_tls_key)
    if not (allowlist or auth):
        raise ConfigError(
            f"proxy.listen: refusing to listen on {host} (not loopback) without proxy.allow"
            " (client networks) or proxy.auth_file with proxy.tls_cert and proxy.tls_key;"
            " the proxy must never be an open relay"
        )


def peer_address(peer: Any) -> Address | None:
    """The IP address of aiosmtpd's ``session.peer`` (an IPv4-mapped IPv6 address as the
    IPv4 one, a zone id dropped); None for a peer that has none (a Unix socket)."""
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    if not isinstance(host, str):
        return None
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_allowed(peer: Any, networks: Sequence[Network]) -> bool:
    """Whether a client at ``peer`` may submit mail without AUTH: loopback always, anything
    else only inside ``networks``; a peer without an IP address never."""
    address = peer_address(peer)
    if address is None:
        return False
    return address.is_loopback or any(address in net for net in networks)
