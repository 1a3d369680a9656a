"""SMTP AUTH for the proxy's clients: the ``proxy.auth_file`` of ``user:password`` lines.

A password is either given in clear or as ``pbkdf2_sha256$ITERATIONS$SALT$HEXDIGEST``
(make one with ``hash_password``). AUTH is only offered over TLS (aiosmtpd refuses it on a
clear connection), so passwords never cross the network in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from replytrack.config import ConfigError

_SCHEME = "pbkdf2_sha256"


def hash_password(password: str, *, iterations: int = 200_000) -> str:
    """A stored form of ``password`` for the auth file."""
    salt = secrets.token_hex(8)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"{_SCHEME}${iterations}${salt}${digest.hex()}"


def check_password(stored: str, given: str) -> bool:
    """Whether ``given`` matches ``stored`` (clear or hashed), in constant time.

    An empty ``stored`` (an unknown user) or an empty ``given`` never matches: two empty
    strings compare equal, which would let anyone in with no password.
    """
    if not stored or not given:
        return False
    if stored.startswith(_SCHEME + "$"):
        try:
            _, iterations, salt, digest = stored.split("$", 3)
            computed = hashlib.pbkdf2_hmac("sha256", given.encode(), salt.encode(), int(iterations))
        except ValueError:
            return False
        return hmac.compare_digest(computed.hex(), digest)
    return hmac.compare_digest(stored.encode(), given.encode())


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
        users[user] = stored
    if not users:
        raise ConfigError(f"proxy.auth_file {path}: no users")
    return users
