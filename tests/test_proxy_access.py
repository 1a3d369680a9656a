# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)
"""Never an open relay: loopback by default, an allowlist or AUTH over TLS for the rest."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
import ssl
import time
import types
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope

from replytrack.config import Config, ConfigError
from replytrack.proxy.access import allowed_networks, check_bind, client_allowed
from replytrack.proxy.auth import check_password, hash_password, load_auth_file
from replytrack.proxy.handler import ProxyHandler
from replytrack.proxy.protocol import ProxySession
from replytrack.proxy.relay import UpstreamPool, UpstreamSettings
from replytrack.proxy.server import ProxyServer
from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring
from tests.conftest import free_port
from tests.support.upstream import (  # noqa: F401  (fixtures)
    RecordingUpstream,
    make_certificate,
    start_proxy,
    upstream,
)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("peer", "allow", "ok"),
    [
        (("127.0.0.1", 4000), [], True),
        (("127.8.9.10", 4000), [], True),
        (("::1", 4000, 0, 0), [], True),
        (("::ffff:127.0.0.1", 4000, 0, 0), [], True),
        (("192.0.2.7", 4000), [], False),
        (("192.0.2.7", 4000), ["192.0.2.0/24"], True),
        (("::ffff:192.0.2.7", 4000, 0, 0), ["192.0.2.0/24"], True),
        (("198.51.100.1", 4000), ["192.0.2.0/24"], False),
        (("2001:db8::5", 4000, 0, 0), ["2001:db8::/32"], True),
        (None, [], False),
        ("/run/replytrack.sock", [], False),
    ],
)
def test_client_allowed(peer: object, allow: list[str], ok: bool) -> None:
    networks = allowed_networks(Config(proxy_allow=allow))
    assert client_allowed(peer, networks) is ok


def test_bad_allowlist_entry_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"proxy\.allow"):
        allowed_networks(Config(proxy_allow=["not-a-network"]))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_binds_need_nothing(host: str) -> None:
    check_bind(Config(), host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_non_loopback_bind_is_refused_without_allowlist_or_auth(host: str) -> None:
    with pytest.raises(ConfigError, match="open relay"):
        check_bind(Config(), host)
    check_bind(Config(proxy_allow=["10.0.0.0/8"]), host)
    check_bind(Config(proxy_auth_file="users", proxy_tls_cert="c", proxy_tls_key="k"), host)
    with pytest.raises(ConfigError):
        # AUTH without TLS does not count.
        check_bind(Config(proxy_auth_file="users"), host)


def test_server_refuses_non_loopback_listen(store: SQLiteStore, keyring: Keyring) -> None:
    with pytest.raises(ConfigError, match="open relay"):
        ProxyServer(Config(), store=store, keyring=keyring, listen="0.0.0.0:0")


def test_auth_file_without_tls_is_refused(
    store: SQLiteStore, keyring: Keyring, tmp_path: Path
) -> None:
    users = tmp_path / "users"
    users.write_text("alice:secret\n")
    with pytest.raises(ConfigError, match="only offered over TLS"):
        ProxyServer(Config(proxy_auth_file=str(users)), store=store, keyring=keyring)


def mail_from(
    peer: tuple[str, int], config: Config, store: SQLiteStore, *, auth: bool, null: bool = False
) -> str:
    """handle_MAIL for a client at ``peer`` (a second real address needs a netns); ``null``
    as ProxySMTP calls it for MAIL FROM:<>."""

    async def run() -> str:
        pool = UpstreamPool(UpstreamSettings.from_config(config))
        handler = ProxyHandler(config=config, store=store, keyring=Keyring.generate(), pool=pool)
        session = ProxySession(asyncio.get_running_loop(), "c1")
        session.peer = peer
        session.authenticated = auth
        server = types.SimpleNamespace(null_reverse_path=null)
        return await handler.handle_MAIL(server, session, Envelope(), "a@example.org", [])  # type: ignore[arg-type]

    return asyncio.run(run())


def test_remote_client_gets_554_at_mail(store: SQLiteStore) -> None:
    # The upstream is down, so a client that passes the access check gets 451 4.4.1.
    config = Config(proxy_upstream=f"127.0.0.1:{free_port()}")
    assert mail_from(("192.0.2.7", 5000), config, store, auth=False).startswith("554 5.7.1")
    assert mail_from(("192.0.2.7", 5000), config, store, auth=True).startswith("451 4.4.1")
    allowed = Config(proxy_upstream=config.proxy_upstream, proxy_allow=["192.0.2.0/24"])
    assert mail_from(("192.0.2.7", 5000), allowed, store, auth=False).startswith("451 4.4.1")


def test_passwords() -> None:
    stored = hash_password("correct horse", iterations=1000)
    assert check_password(stored, "correct horse")
    assert not check_password(stored, "wrong")
    assert check_password("plain", "plain") and not check_password("plain", "plai")


def test_auth_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "users"
    bad.write_text("# users\nno-colon-here\n")
    with pytest.raises(ConfigError, match=":2"):
        load_auth_file(bad)


def test_remote_client_gets_554_for_the_null_sender_too(store: SQLiteStore) -> None:
    config = Config(proxy_upstream=f"127.0.0.1:{free_port()}")
    refused = mail_from(("192.0.2.7", 5000), config, store, auth=False, null=True)
    assert refused.startswith("554 5.7.1")
    assert mail_from(("192.0.2.7", 5000), config, store, auth=True, null=True).startswith("451")


def test_client_auth_over_starttls(
    start_proxy, upstream: RecordingUpstream, tmp_path: Path, store: SQLiteStore
) -> None:
    cert, key = make_certificate(tmp_path, "proxy.test")
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('s3cret', iterations=1000)}\n")
    proxy = start_proxy(
        upstream.address,
        proxy_auth_file=str(users),
        proxy_tls_cert=str(cert),
        proxy_tls_key=str(key),
    )
    context = ssl.create_default_context(cafile=str(cert))
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.ehlo()
        # No AUTH on a clear connection.
        assert not client.has_extn("auth")
        client.starttls(context=context)
        client.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("alice", "wrong")
        client.login("alice", "s3cret")
        client.sendmail("a@example.org", ["b@example.net"], b"Subject: x\r\n\r\nbody\r\n")
    assert len(upstream.received) == 1


def _local_address() -> str | None:
    """A non-loopback IPv4 address of this host (no packet is sent), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.mark.parametrize(
    ("login", "password"),
    [("nobody", ""), ("nobody", "anything"), ("alice", "")],
)
def test_auth_with_unknown_user_or_empty_password_is_refused_and_mail_stays_refused(
    start_proxy,
    upstream: RecordingUpstream,
    tmp_path: Path,
    store: SQLiteStore,
    login: str,
    password: str,
) -> None:
    host = _local_address()
    if host is None:
        pytest.skip("this host has no non-loopback IPv4 address to connect from")
    cert, key = make_certificate(tmp_path, "proxy.test")
    users = tmp_path / "users"
    users.write_text("alice:s3cret\n")
    proxy = start_proxy(
        upstream.address,
        proxy_listen=f"{host}:0",
        proxy_auth_file=str(users),
        proxy_tls_cert=str(cert),
        proxy_tls_key=str(key),
    )
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with smtplib.SMTP(host, proxy.port, source_address=(host, 0)) as client:
        client.starttls(context=context)
        client.ehlo()
        token = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
        code, _ = client.docmd("AUTH", f"PLAIN {token}")
        assert code == 535
        code, text = client.mail("a@example.org")
        assert code == 554 and text.startswith(b"5.7.1")
    assert upstream.received == [] and upstream.handler.commands == []


def test_auth_tries_per_connection_are_limited(
    start_proxy, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    cert, key = make_certificate(tmp_path, "proxy.test")
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('s3cret', iterations=1000)}\n")
    proxy = start_proxy(
        upstream.address,
        proxy_auth_file=str(users),
        proxy_tls_cert=str(cert),
        proxy_tls_key=str(key),
    )
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    token = base64.b64encode(b"\0alice\0wrong").decode()
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.starttls(context=context)
        client.ehlo()
        codes = [client.docmd("AUTH", f"PLAIN {token}")[0] for _ in range(5)]
        assert codes == [535] * 5
        code, text = client.docmd("AUTH", f"PLAIN {token}")
        assert code == 421 and b"AUTH" in text


def test_starttls_after_mail_closes_the_open_upstream_transaction(
    start_proxy, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    cert, key = make_certificate(tmp_path, "proxy.test")
    proxy = start_proxy(upstream.address, proxy_tls_cert=str(cert), proxy_tls_key=str(key))
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.ehlo()
        assert client.mail("a@example.org")[0] == 250
        # STARTTLS starts a new session (RFC 3207 4.2): the transaction opened upstream
        # before it is gone with the old one, so its connection must be closed.
        client.starttls(context=context)
        client.ehlo()
        deadline = time.monotonic() + 10
        while upstream.handler.closed < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert upstream.handler.closed == 1
        client.sendmail("c@example.org", ["d@example.net"], b"Subject: x\r\n\r\nbody\r\n")
    [got] = upstream.received
    assert (got.mail_from, got.rcpt_tos) == ("c@example.org", ["d@example.net"])
