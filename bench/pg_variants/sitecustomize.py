"""Bench-only what-ifs for the PostgreSQL store, applied in a daemon started with this
directory on PYTHONPATH and ``REPLYTRACK_BENCH_PG_VARIANT`` set (pg_bench.py ``--variants``).
Nothing in replytrack/store changes; these measure a proposed change before it is made.

* ``async-settle``: ``set_message_status`` commits with ``SET LOCAL synchronous_commit =
  off`` (the settle after relaying; the record itself stays durable before the 250). A
  settle lost in a server crash leaves the mail ``relaying``, which the proxy's sweep
  already turns into ``unconfirmed``.
* ``inline``: every store call made on the proxy's event loop, blocking it for the round
  trip (``prepare_for_event_loop`` says True), as SQLite's calls that need not wait are:
  what the executor's thread hops cost in CPU a mail (not a design: a slow statement would
  stall every session of the worker).
* ``lean-settle``: built into the store since the second run of 2026-12-06 (a settle that
  records nothing more is one statement); asking for it stops the bench.
"""

from __future__ import annotations

import os
import threading
from typing import Any

VARIANTS = set(filter(None, os.environ.get("REPLYTRACK_BENCH_PG_VARIANT", "").split(",")))


def _apply() -> None:
    from replytrack.store import postgresql as pg

    cls: Any = pg.PostgreSQLStore
    # Written against the store of 2026-12-06 (second run); a refactored store that renamed
    # these must get an updated patch, not a silently wrong measurement.
    wanted = ("set_message_status", "_run")
    missing = [name for name in wanted if not hasattr(cls, name)]
    if missing:
        raise SystemExit(f"pg_variants: PostgreSQLStore has no {', '.join(missing)}")
    if "inline" in VARIANTS:
        cls.prepare_for_event_loop = lambda self: True
    if "lean-settle" in VARIANTS:
        raise SystemExit("pg_variants: lean-settle is the store's own behaviour now")
    local = threading.local()
    original_settle = cls.set_message_status
    original_run = cls._run

    def set_message_status(self: Any, pk: int, status: str, upstream_reply: str | None) -> Any:
        local.settling = True
        try:
            return original_settle(self, pk, status, upstream_reply)
        finally:
            local.settling = False

    def run(self: Any, work: Any, *, write: bool, single: bool = False) -> Any:
        if write and "async-settle" in VARIANTS and getattr(local, "settling", False):
            inner = work

            def work(conn: Any) -> Any:
                conn.execute("SET LOCAL synchronous_commit = off")
                return inner(conn)

            # SET LOCAL needs a transaction: the one-statement settle gets BEGIN and COMMIT.
            single = False
        return original_run(self, work, write=write, single=single)

    cls.set_message_status = set_message_status
    cls._run = run


if VARIANTS:
    _apply()
