"""Failed SMTP AUTH attempts counted per client address, across connections, with backoff.

A client that fails ``max_failures`` times within ``window`` seconds is locked out: every
AUTH from its address, right password or not, gets a temporary refusal (``454 4.7.0``) for
``lockout`` seconds, doubling with each further lockout up to ``lockout_max``. A success
forgets the address. Limiting per connection alone is no limit: a client reconnects.

The table lives in one process. A proxy with several workers (``proxy.workers``) has one
table per worker, so an address may fail up to ``max_failures`` times in each worker before
all of them lock it out; the limit is deliberately not divided by the number of workers,
which would lock a person out after one typo when there are many. Sharing the table through
the store would put a write on every failed guess, which is what an attacker would want.

Memory is bounded: at most ``max_addresses`` entries, the stalest dropped first. IPv6
clients are counted per /64, the block one subscriber usually holds, so a single host cannot
dodge the limit by walking through its own addresses (nor flood the table doing so).
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import math
import time
from collections.abc import Callable
from typing import Any

from replytrack.config import Config
from replytrack.proxy.access import peer_address

# Addresses tracked per process. An entry is a few hundred bytes, so this is a few MB.
MAX_ADDRESSES = 10_000


def client_key(peer: Any) -> str:
    """What failures are counted against: the IPv4 address, or the IPv6 /64."""
    address = peer_address(peer)
    if address is None:
        return str(peer[0] if isinstance(peer, tuple) and peer else peer)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclasses.dataclass
class _Entry:
    failures: int = 0  # failures in the current window
    window_start: float = 0.0
    last_failure: float = 0.0
    lockouts: int = 0  # lockouts so far; each one doubles the next
    locked_until: float = 0.0
    in_flight: int = 0  # attempts being checked right now


class AuthLimiter:
    """The per-address failure table of one proxy process (not thread-safe: one loop)."""

    def __init__(
        self,
        *,
        max_failures: int,
        window: float,
        lockout: float,
        lockout_max: float,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.lockout_max = lockout_max
        self.max_addresses = max_addresses
        self._clock = clock
        # Ordered by last failure, oldest first: the stale end is the front.
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        # An entry this long after its last failure is neither locked nor counting.
        self._forget_after = window + lockout_max

    @classmethod
    def from_config(cls, config: Config) -> AuthLimiter:
        """The limiter ``proxy.auth_*`` describe."""
        return cls(
            max_failures=config.proxy_auth_max_failures,
            window=config.proxy_auth_window,
            lockout=config.proxy_auth_lockout,
            lockout_max=config.proxy_auth_lockout_max,
        )

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self, peer: Any) -> float:
        """Seconds ``peer`` must wait before it may try (0: go ahead, attempt reserved).

        Attempts being checked count against the limit, so that many connections sending
        AUTH at the same moment get no more password checks than one connection would.
        Every attempt allowed here must be closed with ``failed`` or ``succeeded``.
        """
        now = self._clock()
        self._prune(now)
        key = client_key(peer)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.locked_until > now:
                return entry.locked_until - now
            if now - entry.window_start >= self.window:
                entry.failures, entry.window_start = 0, now
            if entry.failures + entry.in_flight >= self.max_failures:
                # Only in-flight attempts fill the window: wait for them, briefly.
                return 1.0
        else:
            entry = self._add(key, now)
        entry.in_flight += 1
        return 0.0

    def failed(self, peer: Any) -> float:
        """Count a failed attempt; the length of the lockout it started, or 0."""
        now = self._clock()
        key = client_key(peer)
        entry = self._entries.get(key)
        if entry is None:
            # Evicted while its attempt was checked: count it afresh.
            entry = self._add(key, now)
            entry.in_flight = 1
        entry.in_flight = max(0, entry.in_flight - 1)
        if now - entry.window_start >= self.window:
            entry.failures, entry.window_start = 0, now
        entry.failures += 1
        entry.last_failure = now
        self._entries.move_to_end(key)
        if entry.failures < self.max_failures:
            return 0.0
        entry.failures = 0
        entry.lockouts += 1
        # 2 ** n grows past any lockout_max long before it overflows a float.
        length = min(self.lockout * 2.0 ** min(entry.lockouts - 1, 64), self.lockout_max)
        entry.locked_until = now + length
        return length

    def succeeded(self, peer: Any) -> None:
        """A success: the address starts clean (its lockouts are forgotten too)."""
        self._entries.pop(client_key(peer), None)

    def _add(self, key: str, now: float) -> _Entry:
        while len(self._entries) >= self.max_addresses:
            # Full of live entries: the one that failed longest ago goes. An attacker with
            # many addresses can push others out this way, but gains no guesses he would not
            # get from those addresses anyway.
            self._entries.popitem(last=False)
        entry = _Entry(window_start=now, last_failure=now)
        self._entries[key] = entry
        return entry

    def _prune(self, now: float) -> None:
        # Stale entries are at the front; an entry with an attempt in flight stays.
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.last_failure < self._forget_after or entry.in_flight:
                break
            del self._entries[key]


def retry_after(seconds: float) -> int:
    """Whole seconds to tell a client to wait, at least 1."""
    return max(1, math.ceil(seconds))
