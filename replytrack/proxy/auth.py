"""SMTP AUTH for the proxy's clients: the ``proxy.auth_file`` of ``user:password`` lines.

A password is either given in clear or as ``pbkdf2_sha256$ITERATIONS$SALT$HEXDIGEST``
(make one with ``hash_password``). AUTH is only offered over TLS (aiosmtpd refuses it on a
clear connection), so passwords never cross the network in clear.

Checking a password is deliberately slow, so it runs in threads of its own, never on the
event loop (hashlib releases the GIL while it hashes): other connections are answered while
a client's password is checked. Every attempt costs the same hashing work whoever the user
is, known or not, so the time an answer takes does not tell which user names exist.
Failures are counted per client address across connections (``auth_limit``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import hmac
import logging
import re
import secrets
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from replytrack.config import ConfigError
from replytrack.proxy.auth_limit import AuthLimiter, retry_after

log = logging.getLogger("replytrack.proxy")

_SCHEME = "pbkdf2_sha256"
_HASHED = re.compile(rf"{_SCHEME}\$([1-9][0-9]{{0,9}})\$([^$]+)\$([0-9a-f]{{64}})")
# Threads per proxy process that check passwords. Apart from the store's threads, so a
# burst of guesses cannot hold up the store calls of mail in flight.
CHECK_THREADS = 2

S454_LOCKED = "454 4.7.0 too many failed authentications from your address; try again in {} s"


def _pbkdf2(password: bytes, salt: bytes, iterations: int) -> bytes:
    """The one place passwords are hashed (tests count the work done here)."""
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations)


def hash_password(password: str, *, iterations: int = 200_000) -> str:
    """A stored form of ``password`` for the auth file."""
    salt = secrets.token_hex(8)
    digest = _pbkdf2(password.encode(), salt.encode(), iterations)
    return f"{_SCHEME}${iterations}${salt}${digest.hex()}"


def _iterations(stored: str) -> int:
    """The PBKDF2 iterations checking against ``stored`` costs (0 for a clear password)."""
    match = _HASHED.fullmatch(stored)
    return int(match.group(1)) if match else 0


def check_password(stored: str, given: str) -> bool:
    """Whether ``given`` matches ``stored`` (clear or hashed), in constant time.

    An empty ``stored`` (an unknown user) or an empty ``given`` never matches: two empty
    strings compare equal, which would let anyone in with no password.
    """
    if not stored or not given:
        return False
    if stored.startswith(_SCHEME + "$"):
        match = _HASHED.fullmatch(stored)
        if not match:
            return False
        iterations, salt, digest = match.groups()
        computed = _pbkdf2(given.encode(), salt.encode(), int(iterations))
        return hmac.compare_digest(computed.hex(), digest)
    return hmac.compare_digest(stored.encode(), given.encode())


class PasswordFile:
    """The users of an auth file, checked with the same work for every attempt."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = users
        # What one attempt costs: the dearest stored hash. Unknown users are checked against
        # a dummy hash that dear, and cheaper checks are topped up to it.
        self.iterations = max((_iterations(stored) for stored in users.values()), default=0)
        secret = secrets.token_urlsafe(16)
        self._dummy = hash_password(secret, iterations=self.iterations) if self.iterations else ""
        if not self._dummy:
            # No hashes at all: a clear dummy that no password given over the wire equals.
            self._dummy = "\0" + secret

    def verify(self, login: str, password: str | None) -> bool:
        """Whether ``password`` is ``login``'s; ``None`` (undecodable) never is."""
        stored = self._users.get(login)
        known = stored is not None
        against = stored if stored is not None else self._dummy
        ok = check_password(against, password or "")
        spent = _iterations(against) if password else 0
        if spent < self.iterations:
            _pbkdf2(b"", b"replytrack-pad", self.iterations - spent)
        return known and ok


def load_auth_file(path: str | Path) -> dict[str, str]:
    """Users and stored passwords; a malformed file is a ConfigError naming the line."""
    users: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"proxy.auth_file: cannot read {path}: {exc}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user or not stored:
            raise ConfigError(f"proxy.auth_file {path}:{number}: expected user:password")
        if stored.startswith(_SCHEME + "$") and not _HASHED.fullmatch(stored):
            # Taken for a clear password it would be one nobody can type; say so instead.
            raise ConfigError(
                f"proxy.auth_file {path}:{number}: malformed hash,"
                f" expected {_SCHEME}$ITERATIONS$SALT$HEXDIGEST"
            )
        users[user] = stored
    if not users:
        raise ConfigError(f"proxy.auth_file {path}: no users")
    return users


@dataclasses.dataclass
class PendingAuth:
    """Credentials aiosmtpd parsed, waiting to be checked off the event loop."""

    auth: ClientAuth
    session: Session
    mechanism: str
    login: bytes
    password: bytes


class ClientAuth:
    """AUTH for one proxy process: the users, the failure table and the checking threads.

    aiosmtpd calls an authenticator synchronously, on the event loop. This one only wraps
    the credentials in a ``PendingAuth`` marked as failed; the proxy's ``auth_*`` methods
    then ``settle`` it. A mechanism that skipped that step would refuse everyone.
    """

    def __init__(self, users: PasswordFile, limiter: AuthLimiter) -> None:
        self.users = users
        self.limiter = limiter
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=CHECK_THREADS, thread_name_prefix="replytrack-auth"
        )

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        pending = PendingAuth(self, session, mechanism, data.login, data.password)
        return AuthResult(success=False, handled=False, auth_data=pending)

    async def check(self, pending: PendingAuth) -> AuthResult:
        """The verdict on ``pending``: 235, 535, or 454 while its address is locked out."""
        session = pending.session
        cid = getattr(session, "rt_id", "-")
        peer = session.peer
        wait = self.limiter.begin(peer)
        if wait:
            # Debug only: a locked-out guesser would otherwise write a line per guess; the
            # lockout itself was logged as a warning when it began.
            log.debug("[%s] AUTH refused from %s: locked out for %.0f s", cid, peer, wait)
            return AuthResult(
                success=False, handled=False, message=S454_LOCKED.format(retry_after(wait))
            )
        login = pending.login.decode("utf-8", "replace")
        try:
            password: str | None = pending.password.decode("utf-8")
        except UnicodeDecodeError:
            password = None
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self.users.verify, login, password)
        try:
            # Shielded: a client that hangs up mid-check still has its attempt counted.
            ok = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda done: self._count(peer, _result(done), cid))
            raise
        except BaseException:
            self._count(peer, False, cid)
            raise
        self._count(peer, ok, cid)
        if not ok:
            log.warning("[%s] AUTH %s failed from %s", cid, pending.mechanism, peer)
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, handled=False, auth_data=pending.login)

    def _count(self, peer: Any, ok: bool, cid: str) -> None:
        if ok:
            self.limiter.succeeded(peer)
            return
        locked = self.limiter.failed(peer)
        if locked:
            log.warning("[%s] AUTH: locking out %s for %.0f s", cid, peer, locked)

    def close(self) -> None:
        """Stop the checking threads (checks in progress finish first)."""
        self._executor.shutdown(wait=True)


def _result(done: asyncio.Future[bool]) -> bool:
    return not done.cancelled() and done.exception() is None and done.result()


async def settle_auth(result: AuthResult) -> AuthResult:
    """What the proxy's ``auth_*`` methods return: ``result`` with its check done."""
    pending = result.auth_data
    if isinstance(pending, PendingAuth):
        return await pending.auth.check(pending)
    return result
