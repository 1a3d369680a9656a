"""Milter socket specs, in libmilter's form (``inet:8894@127.0.0.1``, ``unix:/path``) and
Postfix's (``inet:127.0.0.1:8894``): the milter listens on one, doctor compares and probes
them."""

from __future__ import annotations

from typing import NamedTuple


class SocketSpec(NamedTuple):
    """A parsed socket spec: family ``inet`` (IPv4 or IPv6) or ``unix``."""

    family: str
    address: str  # the host (lowercase, no brackets) or the socket's path
    port: int | None  # None for unix sockets


def parse_socket_spec(spec: str) -> SocketSpec:
    """``spec`` as (family, host or path, port); ValueError says what is wrong with it."""
    family, sep, rest = spec.strip().partition(":")
    if not sep:
        raise ValueError(f"{spec!r} is not a socket spec like inet:8894@127.0.0.1")
    family = family.lower()
    if family in ("unix", "local"):
        return SocketSpec("unix", rest, None)
    if family not in ("inet", "inet6"):
        raise ValueError(f"{spec!r}: unknown socket family {family!r}")
    if "@" in rest:
        port_text, _, host = rest.partition("@")
    else:
        host, _, port_text = rest.rpartition(":")
    host = host.strip("[]")
    if not port_text.isdigit():
        raise ValueError(f"{spec!r} has no port")
    return SocketSpec("inet", host.lower(), int(port_text))
