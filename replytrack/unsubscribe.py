"""Unsubscribe links: the token in ``List-Unsubscribe``, reading it back, and what an
unsubscribe does. The token functions are pure; :func:`apply` writes to the store.

The token is made from the stamped Message-ID's token, so nothing new is stored: it keeps
the Message-ID's key id and 128 random bits and carries its own 80-bit HMAC tag, made with
the same key under another label. Like the Message-ID it says nothing in clear. Knowing a
mail's Message-ID (quoted in every reply's References) does not give its unsubscribe token,
and the token does not give the Message-ID's tag: a person who only saw a reply cannot
unsubscribe the recipient, and an unsubscribe link cannot be turned into a forged reference.
Reading a token back re-mints the Message-ID (same random bits, its own tag), which the
store finds like any reference; an altered or forged token fails its tag and does nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from replytrack import tokens
from replytrack.store.records import (
    DNC_ADDRESS,
    RECIPIENT_SENT,
    STOPPED,
    Event,
    SentMessage,
    StatusChange,
    Suppression,
)
from replytrack.tokens import Keyring

if TYPE_CHECKING:
    from replytrack.config import Config
    from replytrack.store.base import Store

log = logging.getLogger(__name__)

_LABEL = b"replytrack/unsubscribe/v1\x00"
_KID = tokens._KID_LEN
_RANDOM = tokens._RANDOM_BYTES
_TAG = tokens._TAG_BYTES
#: The path under ``unsubscribe.url_base`` that one-click links use: ``/u/TOKEN``.
URL_PATH = "/u/"
#: Reasons recorded on the do-not-contact list and on stopped enrollments.
REASON = "unsubscribed"


def _tag(key: bytes, kid: str, random_part: bytes, domain: str) -> bytes:
    message = _LABEL + f"{tokens.VERSION}{kid}".encode() + random_part + domain.lower().encode()
    return hmac.new(key, message, hashlib.sha256).digest()[:_TAG]


# base32 (RFC 4648, lowercase) to the digits int() reads in base 32: decoding through int()
# runs in C, a fifth of base64.b32decode's time on the proxy's per-mail path.
_TO_INT_DIGITS = str.maketrans(
    "abcdefghijklmnopqrstuvwxyz234567", "0123456789abcdefghijklmnopqrstuv"
)
_ALPHABET = tokens._ALPHABET
_b32 = tokens._b32
# 26 bytes are 208 bits; 42 base32 characters carry 210, the last two always zero.
_PAD_BITS = 5 * (tokens.TOKEN_LEN - 1 - _KID) - 8 * (_RANDOM + _TAG)


def _decode(token: str) -> tuple[str, bytes, bytes] | None:
    """(key id, random part, tag) of a token of our shape, or None."""
    if len(token) != tokens.TOKEN_LEN or token[0] != tokens.VERSION:
        return None
    if not _ALPHABET.issuperset(token[1:]):
        return None
    kid, body = token[1 : 1 + _KID], token[1 + _KID :]
    number = int(body.translate(_TO_INT_DIGITS), 32)
    # Set padding bits would give a second spelling of the same token.
    if number & ((1 << _PAD_BITS) - 1):
        return None
    raw = (number >> _PAD_BITS).to_bytes(_RANDOM + _TAG, "big")
    return kid, raw[:_RANDOM], raw[_RANDOM:]


def token_for(keyring: Keyring, message_id: str) -> str | None:
    """The unsubscribe token of a Message-ID we minted (None for any other)."""
    local, _, domain = message_id.strip("<>").rpartition("@")
    parts = _decode(local)
    if parts is None:
        return None
    kid, random_part, _ = parts
    key = keyring.key_for(kid)
    if key is None:
        return None
    return f"{tokens.VERSION}{kid}{_b32(random_part + _tag(key, kid, random_part, domain))}"


def message_id_for(keyring: Keyring, token: str, domain: str) -> str | None:
    """The Message-ID (``token@domain``, ``domain`` the configured one) an unsubscribe
    token was made from, or None when the token is not one of ours or was altered."""
    parts = _decode(token.strip().lower()) if token.strip().isascii() else None
    if parts is None:
        return None
    kid, random_part, tag = parts
    key = keyring.key_for(kid)
    if key is None or not hmac.compare_digest(tag, _tag(key, kid, random_part, domain)):
        return None
    body = _b32(random_part + tokens._tag(key, kid, random_part, domain))
    return f"{tokens.VERSION}{kid}{body}@{domain.lower()}"


# --- the header ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """What the proxy puts in ``List-Unsubscribe`` (built once from the configuration)."""

    keyring: Keyring
    address: str  # unsubscribe@domain: the token goes in as a sub-address
    url_base: str = ""  # https://host[/path]: one-click links, RFC 8058

    @classmethod
    def from_config(cls, config: Config, keyring: Keyring) -> Options | None:
        """The options the configuration asks for; None when unsubscribe links are off."""
        if not config.unsubscribe_enabled:
            return None
        return cls(
            keyring=keyring,
            address=config.unsubscribe_address or f"unsubscribe@{config.domain}",
            url_base=config.unsubscribe_url_base.rstrip("/"),
        )

    def mailto(self, token: str) -> str:
        """``unsubscribe+TOKEN@domain``."""
        local, _, domain = self.address.rpartition("@")
        return f"{local}+{token}@{domain}"

    def headers(self, message_id: str) -> list[tuple[str, str]]:
        """The fields to add to a campaign mail stamped with ``message_id``."""
        token = token_for(self.keyring, message_id)
        if token is None:
            return []
        uris = [f"<mailto:{self.mailto(token)}>"]
        if self.url_base:
            uris.append(f"<{self.url_base}{URL_PATH}{token}>")
        fields = [("List-Unsubscribe", ", ".join(uris))]
        if self.url_base:
            fields.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        return fields


# --- mail to the unsubscribe address ----------------------------------------------------------
def _parts(recipient: str) -> tuple[str, str, str]:
    """(local part before '+', token, host) of an envelope address, lowercased."""
    local, _, host = recipient.strip().strip("<>").lower().rpartition("@")
    base, _, token = local.partition("+")
    return base, token, host


def only_to_unsubscribe(recipients: Sequence[str], *, address: str) -> bool:
    """Whether every envelope recipient is the unsubscribe ``address``, with or without a
    token: such a mail is never a reply, whatever its token (a forged one must not count
    as the sender answering a campaign)."""
    local, _, host = address.lower().rpartition("@")
    return bool(recipients) and all(_parts(r)[::2] == (local, host) for r in recipients)


def recognise(
    recipients: Iterable[str], *, address: str, keyring: Keyring, domain: str
) -> list[str]:
    """The Message-IDs that the envelope ``recipients`` of an inbound mail unsubscribe from:
    each ``LOCAL+TOKEN@DOMAIN`` of the unsubscribe ``address`` whose token verifies. A
    recipient with a forged or altered token, or without one, counts for nothing."""
    local, _, host = address.lower().rpartition("@")
    found: list[str] = []
    for recipient in recipients:
        base, token, r_host = _parts(recipient)
        if r_host != host or base != local or not token:
            continue
        message_id = message_id_for(keyring, token, domain)
        if message_id is not None and message_id not in found:
            found.append(message_id)
    return found


def who_unsubscribes(sent: SentMessage, requester: str | None) -> list[str]:
    """The addresses an unsubscribe from mail ``sent`` covers.

    When the request names a person who got the mail (the sender of a mailto unsubscribe),
    only them; otherwise (a one-click POST names nobody, or the mail came from another
    address) everyone the mail went to, since the link was in each of their copies.
    """
    got = [r.address for r in sent.recipients if r.status == RECIPIENT_SENT]
    if requester and requester.lower() in got:
        return [requester.lower()]
    return got


@dataclass
class Outcome:
    """What an unsubscribe did."""

    message_id: str
    campaign: str | None
    addresses: list[str] = field(default_factory=list)
    stopped: list[tuple[str, str]] = field(default_factory=list)  # (campaign, address)
    recorded: bool = False  # False: the same request was recorded before


def apply(
    store: Store,
    message_id: str,
    *,
    via: str,
    requester: str | None = None,
    queue_id: str | None = None,
    now: float | None = None,
    only_requester: bool = False,
) -> Outcome | None:
    """Unsubscribe the recipients of mail ``message_id`` (found through the store): put
    each on the do-not-contact list, stop each enrollment of theirs in every campaign, and
    record one ``unsubscribe`` event each, queued for the webhooks. ``via`` is ``mailto``
    or ``one-click``. None when the mail is not (or no longer) recorded.

    Safe to repeat: an event already recorded for this mail and address is not recorded
    again, and the list keeps its first entry. ``only_requester``: a written "remove me"
    covers its writer alone, whoever else the mail went to.
    """
    now = time.time() if now is None else now
    found = store.find_sent([message_id])
    if not found:
        return None
    sent = found[0]
    outcome = Outcome(message_id=sent.message_id, campaign=sent.campaign)
    if only_requester:
        outcome.addresses = [requester.lower()] if requester else []
    else:
        outcome.addresses = who_unsubscribes(sent, requester)
    reason = f"{REASON} ({via})"
    for address in outcome.addresses:
        changes = [
            StatusChange(e.campaign, address, STOPPED, reason)
            for e in store.enrollments_of(address)
            if e.status != STOPPED
        ]
        event = Event(
            kind="unsubscribe",
            created_at=now,
            campaign=sent.campaign,
            message_id=sent.message_id,
            sender=requester,
            recipient=address,
            evidence=(f"unsubscribe:{via}",),
            detail={"via": via, "campaigns": sorted({c.campaign for c in changes})},
            queue_id=queue_id,
            actor="unsubscribe",
        )
        recorded = store.record_event(
            event,
            dedupe_key=f"unsubscribe:{sent.message_id}:{address}",
            set_status=changes,
        )
        if recorded is not None:
            outcome.recorded = True
            outcome.stopped += [(c.campaign, address) for c in changes]
    store.add_suppressions(
        [
            Suppression(
                kind=DNC_ADDRESS, value=a, reason=reason, actor="unsubscribe", created_at=now
            )
            for a in outcome.addresses
        ]
    )
    log.info(
        "unsubscribe via %s from %s: %d address(es), %d enrollment(s) stopped",
        via,
        sent.message_id,
        len(outcome.addresses),
        len(outcome.stopped),
    )
    return outcome


def apply_all(
    store: Store,
    message_ids: Sequence[str],
    *,
    via: str,
    requester: str | None = None,
    queue_id: str | None = None,
) -> list[Outcome]:
    """:func:`apply` for each Message-ID :func:`recognise` found (the milter's call)."""
    done = []
    for message_id in message_ids:
        outcome = apply(store, message_id, via=via, requester=requester, queue_id=queue_id)
        if outcome is not None:
            done.append(outcome)
    return done
