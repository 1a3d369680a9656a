"""The milter's calls into the store, bounded.

SQLite store work runs inline, on the libmilter thread that called us, inside
``Store.session`` (see ``ReplyTrackMilter`` for why a session, not a connection per thread):
a hand-off to worker threads cost more CPU than the lookups and, under load, journaled mail
that could have been decided at once (bench/README.md). A store that must not run on
threads it did not start (``Store.runs_on_foreign_threads`` false: PostgreSQL's pool) runs
on threads of our own. Bounds either way: the session ends every call by
STORE_CALL_TIMEOUT seconds, and once MAX_IN_STORE mails are inside the store at the same
time (it is stuck: a hung disk) further mail is journaled at once, not piled up.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from replytrack.store.base import Store
from replytrack.store.errors import StoreError

if TYPE_CHECKING:
    from replytrack.milter.engine import Engine

T = TypeVar("T")
MAX_IN_STORE = 32
STORE_CALL_TIMEOUT = 3.0


class StoreBusy(StoreError):
    """MAX_IN_STORE mails are already inside the store: this one is journaled at once, as
    for any store that cannot take it."""


class _Gate:
    """Counts the mails inside the store and refuses entry past ``MAX_IN_STORE``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inside = 0

    def enter(self) -> bool:
        with self._lock:
            if self.inside >= MAX_IN_STORE:
                return False
            self.inside += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.inside -= 1


_gate = _Gate()


_store_threads: concurrent.futures.ThreadPoolExecutor | None = None
_store_threads_lock = threading.Lock()


def _own_threads() -> concurrent.futures.ThreadPoolExecutor:
    global _store_threads
    with _store_threads_lock:
        if _store_threads is None:
            _store_threads = concurrent.futures.ThreadPoolExecutor(
                max_workers=MAX_IN_STORE, thread_name_prefix="replytrack-store"
            )
        return _store_threads


def _in_session(store: Store, deadline: float, func: Callable[..., T], args: Any) -> T:
    with store.session(deadline=deadline):
        return func(*args)


def with_store(engine: Engine, func: Callable[..., T], *args: Any) -> T:
    """Run ``func`` on one pooled store connection, within the bounds above: here, on
    libmilter's thread, or on a thread of our own for a store that must not run on it
    (``Store.runs_on_foreign_threads``)."""
    if not _gate.enter():
        raise StoreBusy(f"{MAX_IN_STORE} mails already waiting on the store")
    try:
        store = engine.store
        if store is None:
            return func(*args)
        deadline = time.monotonic() + STORE_CALL_TIMEOUT
        if store.runs_on_foreign_threads:
            return _in_session(store, deadline, func, args)
        future = _own_threads().submit(_in_session, store, deadline, func, args)
        try:
            # The session bounds the call itself; this bounds the wait for a thread too.
            return future.result(timeout=STORE_CALL_TIMEOUT + 1.0)
        except concurrent.futures.TimeoutError:
            raise StoreError(f"store call not done in {STORE_CALL_TIMEOUT:g} s") from None
    finally:
        _gate.leave()
