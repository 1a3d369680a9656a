"""Bench-only what-ifs for the PostgreSQL store, applied in a daemon started with this
directory on PYTHONPATH and ``REPLYTRACK_BENCH_PG_VARIANT`` set (pg_bench.py ``--variants``).
Nothing in replytrack/store changes; these measure a proposed change before it is made.

* ``async-settle``: ``set_message_status`` commits with ``SET LOCAL synchronous_commit =
  off`` (the settle after relaying; the record itself stays durable before the 250). A
  settle lost in a server crash leaves the mail ``relaying``, which the proxy's sweep
  already turns into ``unconfirmed``.
* ``lean-settle``: the suppression query of ``set_message_status`` is skipped for a mail
  that was recorded without a suppressed recipient (the proxy knows when it records).
"""

from __future__ import annotations

import os
import threading
from typing import Any

VARIANTS = set(filter(None, os.environ.get("REPLYTRACK_BENCH_PG_VARIANT", "").split(",")))


def _apply() -> None:
    from replytrack.store import postgresql as pg

    cls: Any = pg.PostgreSQLStore
    # Written against the store of 2026-12-06 (one postgresql.py); a refactored store that
    # renamed these must get an updated patch, not a silently wrong measurement.
    wanted = ("set_message_status", "_run", "record_outbound", "_record_suppressions")
    missing = [name for name in wanted if not hasattr(cls, name)]
    if missing:
        raise SystemExit(f"pg_variants: PostgreSQLStore has no {', '.join(missing)}")
    local = threading.local()
    suppressed: set[int] = set()
    original_settle = cls.set_message_status
    original_run = cls._run
    original_record = cls.record_outbound
    original_suppressions = cls._record_suppressions

    def set_message_status(self: Any, pk: int, status: str, upstream_reply: str | None) -> Any:
        local.settling = True
        local.skip_suppressions = "lean-settle" in VARIANTS and pk not in suppressed
        try:
            return original_settle(self, pk, status, upstream_reply)
        finally:
            local.settling = local.skip_suppressions = False

    def run(self: Any, work: Any, *, write: bool) -> Any:
        if write and "async-settle" in VARIANTS and getattr(local, "settling", False):
            inner = work

            def work(conn: Any) -> Any:
                conn.execute("SET LOCAL synchronous_commit = off")
                return inner(conn)

        return original_run(self, work, write=write)

    def record_outbound(self: Any, record: Any) -> Any:
        pk = original_record(self, record)
        if any(r.status == "suppressed" for r in record.recipients):
            suppressed.add(pk)
        return pk

    def record_suppressions(conn: Any, pks: Any) -> Any:
        if getattr(local, "skip_suppressions", False):
            return None
        return original_suppressions(conn, pks)

    cls.set_message_status = set_message_status
    cls._run = run
    cls.record_outbound = record_outbound
    cls._record_suppressions = staticmethod(record_suppressions)


if VARIANTS:
    _apply()
