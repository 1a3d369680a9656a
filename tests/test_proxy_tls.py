# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)
"""TLS and AUTH towards the upstream: required when configured, never opportunistic."""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

import pytest

from replytrack.store.sqlite import SQLiteStore
from tests.support.upstream import (  # noqa: F401  (fixtures)
    RecordingUpstream,
    make_certificate,
    server_tls_context,
    start_proxy,
    upstream,
)

pytestmark = pytest.mark.timeout(60)

MAIL = b"From: a@example.org\r\nTo: b@example.net\r\n\r\nbody\r\n"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return server_tls_context(*certificate)


def send(port: int) -> tuple[int, bytes]:
    try:
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("a@example.org", ["b@example.net"], MAIL)
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code, exc.smtp_error
    return 250, b""


def test_starttls_required_and_offered(
    start_proxy, tls_context: ssl.SSLContext, certificate: tuple[Path, Path], store: SQLiteStore
) -> None:
    with RecordingUpstream(tls_context=tls_context) as tls_upstream:
        proxy = start_proxy(
            tls_upstream.address,
            proxy_upstream_tls="starttls",
            proxy_upstream_ca_file=str(certificate[0]),
        )
        assert send(proxy.port) == (250, b"")
        [got] = tls_upstream.received
    assert got.tls
    assert store.messages()[0].status == "relayed"


def test_big_mail_over_starttls_arrives_whole(
    start_proxy, tls_context: ssl.SSLContext, certificate: tuple[Path, Path]
) -> None:
    # Several MB go upstream a piece at a time, waiting on the TLS transport between
    # pieces; every byte must arrive, dotted lines included.
    body = b"".join(b".line %d " % i + b"z" * (i % 70) + b"\r\n" for i in range(60000))
    mail = b"From: a@example.org\r\nTo: b@example.net\r\n\r\n" + body
    with RecordingUpstream(tls_context=tls_context) as tls_upstream:
        proxy = start_proxy(
            tls_upstream.address,
            proxy_upstream_tls="starttls",
            proxy_upstream_ca_file=str(certificate[0]),
        )
        with smtplib.SMTP("127.0.0.1", proxy.port) as client:
            client.sendmail("a@example.org", ["b@example.net"], mail)
        [got] = tls_upstream.received
    assert got.tls
    assert got.data.endswith(b"\r\n\r\n" + body)


def test_starttls_required_but_not_offered_means_451_and_no_relay(
    start_proxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    proxy = start_proxy(upstream.address, proxy_upstream_tls="starttls")
    code, text = send(proxy.port)
    assert code == 451 and text.startswith(b"4.")
    assert upstream.received == []
    assert upstream.handler.commands.count("MAIL") == 0
    assert store.messages() == []


def test_certificate_is_verified(
    start_proxy, tls_context: ssl.SSLContext, store: SQLiteStore
) -> None:
    # No CA given: the self-signed certificate does not verify, so nothing is relayed.
    with RecordingUpstream(tls_context=tls_context) as tls_upstream:
        proxy = start_proxy(tls_upstream.address, proxy_upstream_tls="starttls")
        code, _ = send(proxy.port)
        assert code == 451
        assert tls_upstream.received == []


def test_implicit_tls(
    start_proxy, tls_context: ssl.SSLContext, certificate: tuple[Path, Path]
) -> None:
    with RecordingUpstream(tls_context=tls_context, implicit_tls=True) as tls_upstream:
        proxy = start_proxy(
            tls_upstream.address,
            proxy_upstream_tls="tls",
            proxy_upstream_ca_file=str(certificate[0]),
        )
        assert send(proxy.port) == (250, b"")
        [got] = tls_upstream.received
    assert got.tls


def test_implicit_tls_against_a_plain_upstream_fails_closed(
    start_proxy, upstream: RecordingUpstream
) -> None:
    proxy = start_proxy(upstream.address, proxy_upstream_tls="tls", proxy_timeout=2.0)
    code, _ = send(proxy.port)
    assert code == 451
    assert upstream.received == []


def test_auth_over_starttls(
    start_proxy,
    tls_context: ssl.SSLContext,
    certificate: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    secret = tmp_path / "upstream.password"
    secret.write_text("s3cret\n")
    with RecordingUpstream(tls_context=tls_context, auth=("relay", "s3cret")) as tls_upstream:
        proxy = start_proxy(
            tls_upstream.address,
            proxy_upstream_tls="starttls",
            proxy_upstream_ca_file=str(certificate[0]),
            proxy_upstream_user="relay",
            proxy_upstream_password_file=str(secret),
        )
        assert send(proxy.port) == (250, b"")
        [got] = tls_upstream.received
    assert got.auth == "relay" and got.tls


def test_wrong_auth_means_451_and_no_relay(
    start_proxy, tls_context: ssl.SSLContext, certificate: tuple[Path, Path]
) -> None:
    with RecordingUpstream(tls_context=tls_context, auth=("relay", "s3cret")) as tls_upstream:
        proxy = start_proxy(
            tls_upstream.address,
            proxy_upstream_tls="starttls",
            proxy_upstream_ca_file=str(certificate[0]),
            proxy_upstream_user="relay",
            proxy_upstream_password="wrong",
        )
        code, text = send(proxy.port)
        assert (code, text[:5]) == (451, b"4.7.0")
        assert tls_upstream.received == []


def test_auth_required_by_config_but_upstream_offers_none(
    start_proxy, upstream: RecordingUpstream
) -> None:
    proxy = start_proxy(upstream.address, proxy_upstream_user="relay", proxy_upstream_password="x")
    code, _ = send(proxy.port)
    assert code == 451
    assert upstream.received == []
