# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)
"""SMTP AUTH against guessing: failures limited per address across connections, the
password checked off the event loop, and the same work for unknown users as for known."""

from __future__ import annotations

import base64
import smtplib
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replytrack.config import Config, ConfigError, validate
from replytrack.proxy import auth
from replytrack.proxy.auth import hash_password
from replytrack.proxy.auth_limit import AuthLimiter, client_key
from replytrack.proxy.testing import ThreadedProxy
from tests.support.upstream import (  # noqa: F401  (fixtures)
    RecordingUpstream,
    make_certificate,
    start_proxy,
    upstream,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def auth_proxy(
    start_proxy: Callable[..., ThreadedProxy], upstream: RecordingUpstream, tmp_path: Path
) -> Callable[..., tuple[ThreadedProxy, ssl.SSLContext]]:
    """Start a proxy offering AUTH over STARTTLS with ``users`` (file text) and settings."""

    def start(users: str, **settings: Any) -> tuple[ThreadedProxy, ssl.SSLContext]:
        cert, key = make_certificate(tmp_path, "proxy.test")
        path = tmp_path / "users"
        path.write_text(users)
        proxy = start_proxy(
            upstream.address,
            proxy_auth_file=str(path),
            proxy_tls_cert=str(cert),
            proxy_tls_key=str(key),
            **settings,
        )
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        return proxy, context

    return start


def _connect(proxy: ThreadedProxy, context: ssl.SSLContext) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", proxy.port, timeout=20)
    client.starttls(context=context)
    client.ehlo()
    return client


def _plain(client: smtplib.SMTP, login: str, password: str) -> tuple[int, bytes]:
    token = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
    return client.docmd("AUTH", f"PLAIN {token}")


def _attempt(
    proxy: ThreadedProxy, context: ssl.SSLContext, login: str, password: str
) -> tuple[int, bytes]:
    """One AUTH PLAIN on a connection of its own, as a guesser that reconnects does."""
    with _connect(proxy, context) as client:
        return _plain(client, login, password)


ALICE = f"alice:{hash_password('s3cret', iterations=1000)}\n"


def test_failures_across_connections_lock_the_address_out_even_for_the_right_password(
    auth_proxy: Callable[..., tuple[ThreadedProxy, ssl.SSLContext]],
    upstream: RecordingUpstream,
) -> None:
    proxy, context = auth_proxy(ALICE, proxy_auth_max_failures=3, proxy_auth_lockout=600.0)
    assert [_attempt(proxy, context, "alice", f"guess{i}")[0] for i in range(3)] == [535] * 3
    code, text = _attempt(proxy, context, "alice", "s3cret")
    assert code == 454 and text.startswith(b"4.7.0"), text
    # Another mechanism, another user: the address is locked out, not the user.
    with _connect(proxy, context) as client:
        code, _ = client.docmd("AUTH", "LOGIN " + base64.b64encode(b"bob").decode())
        assert code == 334
        code, text = client.docmd(base64.b64encode(b"whatever").decode())
        assert code == 454 and text.startswith(b"4.7.0"), text
    # Nothing was relayed on the way.
    assert upstream.received == []


def test_a_lockout_ends_and_a_success_forgets_earlier_failures(
    auth_proxy: Callable[..., tuple[ThreadedProxy, ssl.SSLContext]],
) -> None:
    proxy, context = auth_proxy(ALICE, proxy_auth_max_failures=2, proxy_auth_lockout=600.0)
    # With the failure before each success forgotten, two failures never add up.
    codes = [
        _attempt(proxy, context, "alice", password)[0]
        for password in ("wrong", "s3cret", "wrong", "s3cret")
    ]
    assert codes == [535, 235, 535, 235]

    proxy, context = auth_proxy(
        ALICE, proxy_auth_max_failures=2, proxy_auth_lockout=0.2, proxy_auth_lockout_max=0.2
    )
    assert [_attempt(proxy, context, "alice", "wrong")[0] for _ in range(2)] == [535, 535]
    assert _attempt(proxy, context, "alice", "s3cret")[0] == 454
    # Once the lockout is over the right password works again (waiting, not timing).
    while (code := _attempt(proxy, context, "alice", "s3cret")[0]) == 454:
        threading.Event().wait(0.05)
    assert code == 235


class _Gate:
    """The password hash held until the test lets it finish (a check that takes long)."""

    def __init__(self, real: Callable[[bytes, bytes, int], bytes]) -> None:
        self.real = real
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, password: bytes, salt: bytes, iterations: int) -> bytes:
        self.started.set()
        self.release.wait(30)
        return self.real(password, salt, iterations)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Gate]:
    held = _Gate(auth._pbkdf2)
    try:
        yield held
    finally:
        held.release.set()


def test_other_connections_are_answered_while_a_password_is_checked(
    auth_proxy: Callable[..., tuple[ThreadedProxy, ssl.SSLContext]],
    gate: _Gate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy, context = auth_proxy(ALICE)
    monkeypatch.setattr(auth, "_pbkdf2", gate)
    replies: list[tuple[int, bytes]] = []
    guesser = threading.Thread(
        target=lambda: replies.append(_attempt(proxy, context, "alice", "guess"))
    )
    guesser.start()
    try:
        assert gate.started.wait(20), "the password check never started"
        # The check is held in progress: another client is still served meanwhile.
        with smtplib.SMTP("127.0.0.1", proxy.port, timeout=20) as other:
            code, _ = other.ehlo()
            assert code == 250
            assert other.noop()[0] == 250
        # Still held: the other client was answered before this check gave its verdict.
        assert replies == []
    finally:
        gate.release.set()
        guesser.join(30)
    assert replies and replies[0][0] == 535


@pytest.fixture
def hashing(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The iterations of every password hash computed from now on."""
    done: list[int] = []
    real = auth._pbkdf2

    def counted(password: bytes, salt: bytes, iterations: int) -> bytes:
        done.append(iterations)
        return real(password, salt, iterations)

    monkeypatch.setattr(auth, "_pbkdf2", counted)
    return done


def test_unknown_users_cost_the_same_hashing_as_known_ones(
    auth_proxy: Callable[..., tuple[ThreadedProxy, ssl.SSLContext]],
    hashing: list[int],
) -> None:
    users = (
        f"alice:{hash_password('s3cret', iterations=3000)}\n"
        f"bob:{hash_password('hunter2', iterations=1200)}\n"
        "carol:in-clear\n"
    )
    proxy, context = auth_proxy(users, proxy_auth_max_failures=100)
    work: dict[tuple[str, str], int] = {}
    for login, password in [
        ("alice", "wrong"),
        ("alice", "s3cret"),
        ("bob", "wrong"),
        ("carol", "wrong"),
        ("nobody", "wrong"),
        ("nobody", ""),
        ("alice", ""),
    ]:
        hashing.clear()
        code, _ = _attempt(proxy, context, login, password)
        assert code == (235 if password == "s3cret" else 535)
        work[login, password] = sum(hashing)
    # Every attempt does the work of the dearest stored hash, whoever asks.
    assert set(work.values()) == {3000}, work


def test_auth_settings_are_validated() -> None:
    validate(Config())
    for bad in (
        {"proxy_auth_max_failures": 0},
        {"proxy_auth_window": 0.0},
        {"proxy_auth_lockout": 0.0},
        {"proxy_auth_lockout": 100.0, "proxy_auth_lockout_max": 10.0},
    ):
        with pytest.raises(ConfigError, match=r"proxy\.auth_"):
            validate(Config(**bad))


def test_a_malformed_hash_in_the_auth_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice:pbkdf2_sha256$many$salt$beef\n")
    with pytest.raises(ConfigError, match=r"users:1: malformed hash"):
        auth.load_auth_file(path)


# The failure table itself, on a clock the test moves.


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limiter(clock: _Clock, **settings: Any) -> AuthLimiter:
    values: dict[str, Any] = {"max_failures": 3, "window": 60.0, "lockout": 10.0}
    values |= {"lockout_max": 50.0, "clock": clock} | settings
    return AuthLimiter(**values)


def _fail(limiter: AuthLimiter, peer: Any, times: int) -> float:
    locked = 0.0
    for _ in range(times):
        assert limiter.begin(peer) == 0
        locked = limiter.failed(peer)
    return locked


def test_lockouts_double_up_to_the_maximum() -> None:
    clock = _Clock()
    limiter = _limiter(clock)
    peer = ("192.0.2.7", 4000)
    lengths = []
    for _ in range(5):
        assert _fail(limiter, peer, 2) == 0
        lengths.append(_fail(limiter, peer, 1))
        assert limiter.begin(("192.0.2.7", 5000)) == lengths[-1]
        assert limiter.begin(("192.0.2.8", 4000)) == 0  # another address is not affected
        limiter.succeeded(("192.0.2.8", 4000))
        clock.now += lengths[-1]
    assert lengths == [10.0, 20.0, 40.0, 50.0, 50.0]
    # A success forgets the lockouts: the next one is short again.
    assert limiter.begin(peer) == 0
    limiter.succeeded(peer)
    assert _fail(limiter, peer, 3) == 10.0


def test_failures_outside_the_window_do_not_add_up() -> None:
    clock = _Clock()
    limiter = _limiter(clock)
    peer = ("192.0.2.7", 4000)
    assert _fail(limiter, peer, 2) == 0
    clock.now += 61
    assert _fail(limiter, peer, 2) == 0
    assert _fail(limiter, peer, 1) == 10.0


def test_simultaneous_attempts_count_against_the_limit() -> None:
    limiter = _limiter(_Clock())
    peer = ("192.0.2.7", 4000)
    started = [limiter.begin(peer) for _ in range(5)]
    assert started[:3] == [0, 0, 0] and all(wait > 0 for wait in started[3:])


def test_the_table_is_bounded_and_forgets_quiet_addresses() -> None:
    clock = _Clock()
    limiter = _limiter(clock, max_addresses=50)
    for n in range(500):
        _fail(limiter, (f"10.0.{n // 250}.{n % 250}", 4000), 1)
    assert len(limiter) == 50
    # Quiet for the window and the longest lockout: forgotten on the next attempt.
    clock.now += 60 + 50
    _fail(limiter, ("192.0.2.7", 4000), 1)
    assert len(limiter) == 1


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        (("192.0.2.7", 4000), "192.0.2.7"),
        (("::ffff:192.0.2.7", 4000, 0, 0), "192.0.2.7"),
        (("2001:db8:1:2:aaaa::1", 4000, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:bbbb::9", 4000, 0, 0), "2001:db8:1:2::/64"),
        (("fe80::1%eth0", 4000, 0, 2), "fe80::/64"),
    ],
)
def test_client_key(peer: Any, key: str) -> None:
    assert client_key(peer) == key
