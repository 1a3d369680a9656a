"""Message-ID tokens: minted for every outbound mail, verified on every inbound reference.

A Message-ID we mint looks like ``<1ab4x7...q@mail.example.com>``. The token before the ``@``
is, in lowercase base32 without padding:

    version (1 char, "1") | key id (2 chars) | base32(random 16 bytes + HMAC tag 10 bytes)

The 128 random bits make it unique and unguessable; it says nothing about campaign,
recipient, host, time or process. The HMAC-SHA256 tag (truncated to 80 bits) covers the
version, key id, random part and the domain, so a token altered in any way, moved to another
domain, or minted with another installation's key fails verification, and verification
needs no store lookup. The key id lets keys rotate: old keys stay in the key file to verify
replies to mail sent before the rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

VERSION = "1"
_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_RANDOM_BYTES = 16
_TAG_BYTES = 10
_KID_LEN = 2
# base32 of 26 bytes is 42 characters once the padding is dropped.
_BODY_LEN = 42
TOKEN_LEN = 1 + _KID_LEN + _BODY_LEN
_MAC_LABEL = b"replytrack/message-id/v1\x00"


class KeyFileError(Exception):
    """The key file is missing, unreadable, malformed or too widely readable."""


@dataclass(frozen=True)
class Keyring:
    """The signing keys: the first is used to mint, all are accepted when verifying."""

    keys: tuple[tuple[str, bytes], ...]

    @property
    def current(self) -> tuple[str, bytes]:
        """The (key id, key) new tokens are minted with."""
        return self.keys[0]

    def key_for(self, kid: str) -> bytes | None:
        """The key with this id, or None when it is not ours."""
        for candidate, key in self.keys:
            if hmac.compare_digest(candidate, kid):
                return key
        return None

    @classmethod
    def generate(cls) -> Keyring:
        """A keyring with one fresh random key (for tests and ``replytrack init``)."""
        return cls(keys=(_new_key(),))


def _new_key() -> tuple[str, bytes]:
    kid = "".join(secrets.choice(sorted(_ALPHABET)) for _ in range(_KID_LEN))
    return kid, secrets.token_bytes(32)


def _tag(key: bytes, kid: str, random_part: bytes, domain: str) -> bytes:
    message = _MAC_LABEL + f"{VERSION}{kid}".encode() + random_part + domain.lower().encode()
    return hmac.new(key, message, hashlib.sha256).digest()[:_TAG_BYTES]


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def mint(keyring: Keyring, domain: str) -> str:
    """A new Message-ID (without angle brackets): ``token@domain``."""
    kid, key = keyring.current
    random_part = secrets.token_bytes(_RANDOM_BYTES)
    body = _b32(random_part + _tag(key, kid, random_part, domain))
    return f"{VERSION}{kid}{body}@{domain.lower()}"


def verify(keyring: Keyring, message_id: str) -> bool:
    """True when ``message_id`` (with or without angle brackets) is one we minted.

    Forged, truncated, extended, case-flipped tokens and tokens of other installations are
    rejected. No store lookup is needed, so a flood of forged references costs one HMAC each.
    """
    text = message_id.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    token, at, domain = text.rpartition("@")
    if not at or len(token) != TOKEN_LEN or not domain or len(domain) > 253:
        return False
    if token[0] != VERSION or not set(token[1:]) <= _ALPHABET:
        return False
    if domain != domain.lower():
        return False
    kid, body = token[1 : 1 + _KID_LEN], token[1 + _KID_LEN :]
    key = keyring.key_for(kid)
    if key is None:
        return False
    try:
        raw = base64.b32decode(body.upper() + "======")
    except ValueError:
        return False
    if len(raw) != _RANDOM_BYTES + _TAG_BYTES:
        return False
    random_part, tag = raw[:_RANDOM_BYTES], raw[_RANDOM_BYTES:]
    # The decoded bytes must re-encode to exactly this body, so trailing bits cannot vary.
    if _b32(raw) != body:
        return False
    return hmac.compare_digest(tag, _tag(key, kid, random_part, domain))


def load_keyring(path: str | os.PathLike[str], *, create: bool = False) -> Keyring:
    """Read the key file (``kid:hexkey`` per line, newest first).

    A missing file is an error unless ``create`` (only ``replytrack init`` passes it): a
    daemon that made itself a new key would mint IDs nobody else verifies and take every
    reply to earlier mail for a forgery. A new file gets mode 0600 and one random key. An
    existing file readable by group or others is refused: whoever reads it can forge our
    Message-IDs.
    """
    file = Path(path)
    if not file.exists():
        if not create:
            raise KeyFileError(f"key file {file} does not exist; run `replytrack init`")
        _create_keyring(file)
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read key file {file}: {exc}") from None
    if mode & 0o077:
        raise KeyFileError(
            f"key file {file} is readable by others (mode {mode & 0o777:o}); run chmod 600 {file}"
        )
    keys: list[tuple[str, bytes]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kid, sep, hexkey = line.partition(":")
        try:
            key = bytes.fromhex(hexkey)
        except ValueError:
            key = b""
        if not sep or len(kid) != _KID_LEN or not set(kid) <= _ALPHABET or len(key) < 16:
            raise KeyFileError(f"{file}:{number}: expected 'kid:hexkey' (2-char base32 id)")
        keys.append((kid, key))
    if not keys:
        raise KeyFileError(f"key file {file} holds no key")
    return Keyring(keys=tuple(keys))


def _write_temp(file: Path, keyring: Keyring) -> Path:
    """Write the keys to a new private file beside ``file`` and return its path."""
    file.parent.mkdir(parents=True, exist_ok=True)
    # The random part keeps threads of one process and a stale file of a crashed run apart.
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write("# replytrack Message-ID keys: first line signs, all verify. Keep secret.\n")
        for kid, key in keyring.keys:
            out.write(f"{kid}:{key.hex()}\n")
        out.flush()
        os.fsync(out.fileno())
    return tmp


def _create_keyring(file: Path) -> None:
    """Create the key file unless another process just did; never replace an existing one.

    Two ``replytrack init`` runs may race (a provisioning script on several hosts sharing
    one directory, say). If both wrote a key and the second replaced the first, the hosts
    that read the first would mint IDs that nobody can verify.
    """
    try:
        tmp = _write_temp(file, Keyring.generate())
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {file}: {exc}") from None
    try:
        os.link(tmp, file)
    except FileExistsError:
        pass
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {file}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_keyring(path: str | os.PathLike[str], keyring: Keyring) -> None:
    """Write the key file atomically with mode 0600."""
    file = Path(path)
    os.replace(_write_temp(file, keyring), file)


def rotate(path: str | os.PathLike[str]) -> Keyring:
    """Add a new signing key in front; older keys keep verifying replies to older mail."""
    old = load_keyring(path)
    new_kid, new_key = _new_key()
    while old.key_for(new_kid) is not None:
        new_kid, new_key = _new_key()
    keyring = Keyring(keys=((new_kid, new_key), *old.keys))
    write_keyring(path, keyring)
    return keyring
