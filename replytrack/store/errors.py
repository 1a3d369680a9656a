"""What a store call raises. Every backend raises these, never its driver's own errors."""

from __future__ import annotations


class StoreError(Exception):
    """The store could not do what was asked (unreachable, locked, read-only, full, corrupt)."""


class StoreWouldWait(StoreError):
    """The call would have had to wait (another writer holds the store) on a thread that
    asked never to wait (:meth:`Store.prepare_for_event_loop`); nothing was written. The
    caller runs it again where waiting is fine."""
