"""The do-not-contact list's pure parts: what an entry is, how an address is hashed, who of
a mail's recipients an entry covers. No I/O; the store keeps the entries.

An address entry holds the address and a keyed hash of it. ``replytrack forget`` erases the
address and keeps the hash, so the person stays unmailable while the store no longer says
who they are. The hash is an HMAC with the site's token keys (the key file, not the store):
whoever copies the store alone cannot test guessed addresses against it. Every key of the
ring is tried when checking, so a key rotation keeps older entries in force.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from replytrack.store.records import (
    DNC_ADDRESS,
    DNC_DOMAIN,
    DO_NOT_CONTACT,
    Suppression,
)
from replytrack.tokens import Keyring

#: ``hasher(address)``: the keyed hashes of an address, the current key's first (that one is
#: stored), then one per older key (checked too).
AddressHasher = Callable[[str], Sequence[str]]

_LABEL = b"replytrack/do-not-contact/v1\x00"
_DIGEST_BYTES = 16
_LABEL_RE = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"{_LABEL_RE}(\.{_LABEL_RE})+")
# An address as the store keeps one: a local part without spaces, brackets or a second @.
_LOCAL = re.compile(r"[^\s@<>()\[\],;:\"\\]{1,64}")


class EntryError(ValueError):
    """Text that is neither an address nor a domain; the message says why."""


@dataclass(frozen=True)
class Entry:
    """A parsed command-line or CSV entry: kind and normalised value."""

    kind: str
    value: str


def address_hasher(keyring: Keyring) -> AddressHasher:
    """The hasher of the do-not-contact list for this keyring."""
    keys = keyring.keys

    def hasher(address: str) -> tuple[str, ...]:
        data = _LABEL + address.strip().lower().encode("utf-8", "surrogatepass")
        return tuple(
            f"{kid}:{hmac.new(key, data, hashlib.sha256).hexdigest()[: 2 * _DIGEST_BYTES]}"
            for kid, key in keys
        )

    return hasher


def parse_entry(text: str) -> Entry:
    """An address (``ann@example.com``) or a whole domain (``example.com`` or
    ``@example.com``), lowercased; raises EntryError for anything else."""
    value = text.strip().lower().rstrip(".")
    local, at, domain = value.rpartition("@")
    if not at:
        local, domain = "", value
    try:
        domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        raise EntryError(f"{text.strip()!r}: not a domain name") from None
    if not _DOMAIN.fullmatch(domain) or len(domain) > 253:
        raise EntryError(f"{text.strip()!r}: not an address or a domain name")
    if not local:
        return Entry(DNC_DOMAIN, domain)
    if not _LOCAL.fullmatch(local):
        raise EntryError(f"{text.strip()!r}: not an address")
    return Entry(DNC_ADDRESS, f"{local}@{domain}")


def read_csv(data: str) -> tuple[list[Entry], list[str]]:
    """The entries of a CSV of addresses, and one problem per unreadable row.

    The column named ``email``, ``e-mail``, ``address`` or ``email_address`` (any case) is
    read when the first row names one; otherwise the first column, and a first row that is
    not an address is taken for a header. Empty rows are skipped.
    """
    rows = list(csv.reader(io.StringIO(data)))
    column, start = 0, 0
    if rows:
        names = [c.strip().lower() for c in rows[0]]
        for wanted in ("email", "e-mail", "email_address", "address", "mail"):
            if wanted in names:
                column, start = names.index(wanted), 1
                break
        else:
            try:
                parse_entry(rows[0][0] if rows[0] else "")
            except EntryError:
                start = 1
    entries: list[Entry] = []
    problems: list[str] = []
    for number, row in enumerate(rows[start:], start=start + 1):
        cell = row[column].strip() if len(row) > column else ""
        if not cell:
            continue
        try:
            entries.append(parse_entry(cell))
        except EntryError as exc:
            problems.append(f"line {number}: {exc}")
    return entries, problems


def domain_suffixes(address: str) -> list[str]:
    """The domains whose entry covers ``address``: its domain and each parent domain with
    at least two labels (an entry for ``example.com`` covers ``mail.example.com``)."""
    labels = address.rpartition("@")[2].split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


def reason_of(entry: Suppression) -> str:
    """The reason a blocked recipient is given: DO_NOT_CONTACT first, so that the proxy's
    reply and the recorded suppression name the list."""
    what = "domain " + (entry.value or "") if entry.kind == DNC_DOMAIN else "address"
    return f"{DO_NOT_CONTACT} ({what})" + (f": {entry.reason}" if entry.reason else "")


def covering(
    addresses: Iterable[str],
    entries: Iterable[Suppression],
    hasher: AddressHasher | None,
) -> dict[str, Suppression]:
    """Which of ``addresses`` the ``entries`` (the store's read for them) cover, and by
    which entry: the address itself, its keyed hash, or its domain or a parent domain."""
    by_address: dict[str, Suppression] = {}
    by_digest: dict[str, Suppression] = {}
    by_domain: dict[str, Suppression] = {}
    for entry in entries:
        if entry.kind == DNC_DOMAIN and entry.value:
            by_domain.setdefault(entry.value, entry)
            continue
        if entry.value:
            by_address.setdefault(entry.value, entry)
        if entry.digest:
            by_digest.setdefault(entry.digest, entry)
    found: dict[str, Suppression] = {}
    for address in addresses:
        hit = by_address.get(address)
        if hit is None and hasher is not None and by_digest:
            hit = next((by_digest[d] for d in hasher(address) if d in by_digest), None)
        if hit is None:
            hit = next((by_domain[d] for d in domain_suffixes(address) if d in by_domain), None)
        if hit is not None:
            found[address] = hit
    return found


def lookup_keys(
    addresses: Iterable[str], hasher: AddressHasher | None
) -> tuple[list[str], list[str], list[str]]:
    """What a store reads to check ``addresses``: the addresses, their domains (with
    parents) and their keyed hashes under every key, each sorted and without repeats."""
    wanted = sorted(set(addresses))
    domains = sorted({d for a in wanted for d in domain_suffixes(a)})
    digests = sorted({d for a in wanted for d in hasher(a)}) if hasher is not None else []
    return wanted, domains, digests


def counts_line(counts: Mapping[str, int]) -> str:
    """``recipients 3, events 2`` for what an erasure removed (tables with none left out)."""
    return ", ".join(f"{name} {n}" for name, n in counts.items() if n) or "nothing"
