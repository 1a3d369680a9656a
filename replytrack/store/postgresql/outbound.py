"""The PostgreSQL store's outbound calls: the proxy's path of one campaign mail.

Three statements a mail, each its own transaction where it can be (no BEGIN/COMMIT round
trips): ``blocked_enrollments`` reads the campaign's stop, the recipients' held enrollments
and the do-not-contact entries in one SELECT; ``record_outbound`` writes the mail, its
recipients, its campaign and enrollments in one statement of data-modifying CTEs;
``set_message_status`` settles it in one UPDATE unless the rules ask for more (suppression
events, enrollments taken back), when it runs the full transaction. Each statement names
the indexed key it reads, so that no cached generic plan can prefer a scan on a store that
autovacuum has not analyzed yet.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

from psycopg.rows import DictRow, tuple_row

from replytrack.headers import address_domain
from replytrack.store import rows, rules
from replytrack.store.postgresql.connection import Conn, checked_only, storable, text
from replytrack.store.postgresql.outbox import insert_event
from replytrack.store.postgresql.suppressions import DNC_MATCH, PgSuppressions
from replytrack.store.records import (
    MESSAGE_STATES,
    Enrollment,
    Event,
    OutboundRecipient,
    OutboundRecord,
)

# What a settled mail's suppression events are made of, returned by the statement that
# settles it (one round trip).
_SETTLED = (
    "m.id, m.message_id, m.campaign, m.sender, m.step, m.created_at,"
    " (SELECT coalesce(json_agg(json_build_object('address', r.address, 'reason', r.reason)),"
    " '[]') FROM recipients r WHERE r.message = m.id AND r.status = 'suppressed') AS suppressed"
)


# blocked_enrollments in one statement: the campaign's stop, the recipients' enrollments
# that are not active, the do-not-contact entries that may cover them (DNC_MATCH); each an
# index probe, as JSON (json_agg of no rows is NULL). The enrollments are found by
# recipient, the campaign only checked (connection.checked_only).
_BLOCKED = (
    "SELECT (SELECT json_build_object('reason', c.reason, 'updated_at', c.updated_at,"
    " 'updated_by', c.updated_by, 'status', c.status) FROM campaigns c"
    " WHERE c.campaign = %(campaign)s AND c.status IN ('stopped', 'braked')) AS stop,"
    " (SELECT coalesce(json_agg(e), '[]') FROM enrollments e"
    f" WHERE e.recipient = ANY(%(wanted)s) AND {checked_only('e.campaign')} = %(campaign)s"
    " AND e.status != 'active') AS held,"
    f" (SELECT coalesce(json_agg(s), '[]') FROM suppressions s WHERE {DNC_MATCH}) AS dnc"
)

# record_outbound in one statement. The mail's row, its recipients; for campaign mail the
# campaign and the enrollments of the recipients it was sent to that are not enrolled yet,
# in the sorted order of e_address (one lock order for every host). An enrollment already
# there is locked (DO UPDATE locks every conflicting row, and updates only where WHERE
# holds), so that a refused mail of another host, which takes back the enrollments only it
# made, waits for this statement and then sees its mail; the thread root is kept on the
# enrollment unless one is there (e_thread, or root_* for an enrollment this mail does not
# make).
_RECORD = """
WITH m AS (
    INSERT INTO messages (message_id, original_message_id, campaign, step, sender,
        from_address, subject, created_at, status, size, upstream_reply)
    VALUES (%(message_id)s, %(original_message_id)s, %(campaign)s, %(step)s, %(sender)s,
        %(from_address)s, %(subject)s, %(created_at)s, %(status)s, %(size)s,
        %(upstream_reply)s)
    RETURNING id
), r AS (
    INSERT INTO recipients (message, address, role, envelope, status, reason)
    SELECT m.id, u.* FROM m, unnest(%(r_address)s::text[], %(r_role)s::text[],
        %(r_envelope)s::boolean[], %(r_status)s::text[], %(r_reason)s::text[]) AS u
    ON CONFLICT DO NOTHING
), c AS (
    INSERT INTO campaigns (campaign, created_at)
    SELECT %(campaign)s::text, %(created_at)s::float8 WHERE %(campaign)s::text IS NOT NULL
    ON CONFLICT DO NOTHING
), e AS (
    INSERT INTO enrollments (campaign, recipient, domain, status, reason, since, created_at,
        thread_index)
    SELECT %(campaign)s::text, u.a, u.d, 'active', NULL, %(created_at)s::float8,
        %(created_at)s::float8, u.t
    FROM unnest(%(e_address)s::text[], %(e_domain)s::text[], %(e_thread)s::text[])
        WITH ORDINALITY AS u(a, d, t, n)
    WHERE %(campaign)s::text IS NOT NULL ORDER BY u.n
    ON CONFLICT (campaign, recipient) DO UPDATE SET thread_index = excluded.thread_index
    WHERE enrollments.thread_index IS NULL AND excluded.thread_index IS NOT NULL
), root AS (
    UPDATE enrollments SET thread_index = %(root_index)s::text
    WHERE campaign = %(campaign)s::text AND recipient = %(root_recipient)s::text
    AND thread_index IS NULL
)
SELECT id FROM m
"""

# set_message_status where the rules ask for nothing more than the new status (the
# parameters list the old states after which they do); the key named in each part, so no
# cached generic plan can scan a table.
_PLAIN_SETTLE = (
    "UPDATE messages m SET status = %(status)s, upstream_reply = %(reply)s"
    " FROM (SELECT id, status FROM messages WHERE id = %(pk)s FOR UPDATE) old"
    " WHERE m.id = %(pk)s AND m.id = old.id"
    " AND NOT (old.status = ANY(CASE WHEN m.campaign IS NULL THEN %(taking_back_alone)s::text[]"
    " ELSE %(taking_back)s::text[] END))"
    " AND NOT (old.status = ANY(%(suppressing)s::text[]) AND EXISTS (SELECT 1 FROM recipients r"
    " WHERE r.message = %(pk)s AND r.status = 'suppressed'))"
    " RETURNING old.status"
)


# A refused mail takes back the enrollments only it made: the candidates (its recipients'
# enrollments made at its time) locked first, then those no other mail backs deleted. Both
# found by recipient, the campaign only checked (connection.checked_only).
TAKE_BACK_CANDIDATES = (
    "SELECT e.recipient FROM enrollments e JOIN recipients r"
    " ON r.address = e.recipient WHERE r.message = %s AND r.status = 'sent'"
    f" AND {checked_only('e.campaign')} = %s AND e.created_at = %s"
    " ORDER BY e.recipient FOR UPDATE OF e"
)
TAKE_BACK = (
    f"DELETE FROM enrollments e WHERE {checked_only('e.campaign')} = %s"
    " AND e.recipient = ANY(%s) AND e.status = 'active' AND e.created_at = %s"
    " AND NOT EXISTS (SELECT 1 FROM recipients r"
    " JOIN messages m ON m.id = r.message WHERE r.address = e.recipient"
    " AND r.status = 'sent' AND m.campaign = e.campaign AND m.id != %s"
    " AND m.status != 'failed')"
)


def _states(rule: Callable[[str], bool]) -> str:
    """The message states for which ``rule`` holds, as a PostgreSQL array literal (the
    states are plain words): a string costs psycopg far less to send than a list, whose
    element type it works out anew on every call."""
    states = [state for state in MESSAGE_STATES if rule(state)]
    assert all(state.isidentifier() for state in states)
    return "{" + ",".join(states) + "}"


@functools.lru_cache(maxsize=32)
def _plain_settle_states(status: str) -> dict[str, str]:
    """_PLAIN_SETTLE's state parameters for a change to ``status`` (the rules are pure
    functions of the two states, so they are worked out once per status)."""
    return {
        "suppressing": _states(lambda old: rules.records_suppressions(old, status)),
        "taking_back": _states(lambda old: rules.takes_back_enrollments(old, status, "campaign")),
        "taking_back_alone": _states(lambda old: rules.takes_back_enrollments(old, status, None)),
    }


def plain_settle_params(pk: int, status: str, upstream_reply: str | None) -> dict[str, Any]:
    """_PLAIN_SETTLE's parameters."""
    return {"pk": pk, "status": status, "reply": text(upstream_reply)} | _plain_settle_states(
        status
    )


def _floats(row: dict[str, Any] | None, *names: str) -> Any:
    """A row read as JSON with its DOUBLE PRECISION columns as floats again (JSON writes
    a whole number without its point)."""
    if row is None:
        return None
    return row | {n: None if row[n] is None else float(row[n]) for n in names}


def _settled_suppressions(row: DictRow) -> list[Event]:
    return rules.suppression_events(
        message_id=row["message_id"],
        campaign=row["campaign"],
        sender=row["sender"],
        step=row["step"],
        created_at=row["created_at"],
        recipients=[
            OutboundRecipient(s["address"], "to", True, status="suppressed", reason=s["reason"])
            for s in row["suppressed"]
        ],
    )


def record_params(record: OutboundRecord) -> dict[str, Any]:
    """_RECORD's parameters for ``record`` (made storable): its recipients in sorted order
    and, for campaign mail, the enrollments it makes (``rules.enrolled_by``)."""
    recipients = sorted(
        ((r.address, r.role, r.envelope, r.status, r.reason) for r in record.recipients),
        key=lambda r: r[0],
    )
    enroll = rules.enrolled_by(record)
    root = record.thread if record.campaign is not None else None
    # The root goes in with its enrollment when this mail enrolls its recipient (the
    # statement's parts share one snapshot: a separate UPDATE would not see that row);
    # onto the enrollment already there otherwise.
    root_in_enroll = root is not None and text(root.recipient) in enroll
    return {
        "message_id": record.message_id,
        "original_message_id": record.original_message_id,
        "campaign": record.campaign,
        "step": record.step,
        "sender": record.sender,
        "from_address": record.from_address,
        "subject": record.subject,
        "created_at": record.created_at,
        "status": record.status,
        "size": record.size,
        "upstream_reply": record.upstream_reply,
        **{
            name: [r[i] for r in recipients]
            for i, name in enumerate(("r_address", "r_role", "r_envelope", "r_status"))
        },
        "r_reason": [r[4] for r in recipients],
        "e_address": enroll,
        "e_domain": [address_domain(a) for a in enroll],
        "e_thread": [
            text(root.index) if root_in_enroll and root and a == text(root.recipient) else None
            for a in enroll
        ],
        "root_recipient": None if root is None or root_in_enroll else text(root.recipient),
        "root_index": None if root is None else text(root.index),
    }


class PgOutbound(PgSuppressions):
    """The outbound calls of the PostgreSQL store (the do-not-contact read is part of
    ``blocked_enrollments``)."""

    def blocked_params(self, campaign: str, addresses: Iterable[str]) -> dict[str, Any]:
        """_BLOCKED's parameters: the campaign, the recipients (storable, sorted, once
        each) and the do-not-contact keys that may cover them."""
        wanted = sorted({text(a) for a in addresses})
        dnc_addresses, dnc_domains, dnc_digests = self._dnc_keys(wanted)
        return {
            "campaign": text(campaign),
            "wanted": wanted,
            "dnc_addresses": dnc_addresses,
            "dnc_domains": dnc_domains,
            "dnc_digests": dnc_digests,
        }

    def blocked_enrollments(self, campaign: str, addresses: Iterable[str]) -> dict[str, Enrollment]:
        now = time.time()
        params = self.blocked_params(campaign, addresses)
        row = self.rows(_BLOCKED, params)[0]
        stop = rows.campaign_stop(_floats(row["stop"], "updated_at"))
        return rules.blocked_recipients(
            params["campaign"],
            params["wanted"],
            stop=stop,
            enrollments=[rows.enrollment(_floats(e, "since", "until")) for e in row["held"]],
            now=now,
            do_not_contact=self._dnc_covering(params["dnc_addresses"], row["dnc"]),
        )

    def record_outbound(self, record: OutboundRecord) -> int:
        """Record the mail and, for campaign mail, enroll its ``sent`` recipients at once,
        whatever its status (record first, relay second); suppressions once it is settled.

        One statement (_RECORD), committed as it runs; a mail recorded settled with
        suppressed recipients adds its events in the same transaction.
        """
        record = storable(record)
        params = record_params(record)
        events = []
        if record.campaign is not None and rules.records_suppressions(None, record.status):
            events = rules.suppression_events(
                message_id=record.message_id,
                campaign=record.campaign,
                sender=record.sender,
                step=record.step,
                created_at=record.created_at,
                recipients=record.recipients,
            )

        def write(conn: Conn) -> int:
            # Tuples, not dicts: one column, and the hot path of every mail.
            row = conn.cursor(row_factory=tuple_row).execute(_RECORD, params).fetchone()
            assert row is not None
            for event in events:
                insert_event(conn, event, dedupe_key=None, notify=True)
            return int(row[0])

        return self.write(write) if events else self.write_single(write)

    def set_message_status(self, pk: int, status: str, upstream_reply: str | None) -> None:
        # Most settles change the status and nothing else: one statement, committed as it
        # runs, that applies only where the rules ask for nothing more (the old states
        # after which this change records suppression events, with a campaign and without,
        # or takes enrollments back: from the rules, asked for each state). Where they do
        # ask, it changes nothing and the transaction below does it all.
        params = plain_settle_params(pk, status, upstream_reply)
        settled = self.write_single(
            lambda conn: (
                conn.cursor(row_factory=tuple_row).execute(_PLAIN_SETTLE, params).fetchone()
            )
        )
        if settled is not None:
            return

        def write(conn: Conn) -> None:
            row = conn.execute(
                # m.id = %s named again: a generic plan made before the first ANALYZE of a
                # new store would otherwise hash-join over a scan of messages.
                "UPDATE messages m SET status = %s, upstream_reply = %s"
                " FROM (SELECT id, status FROM messages WHERE id = %s FOR UPDATE) old"
                " WHERE m.id = %s AND m.id = old.id"
                f" RETURNING old.status AS old_status, {_SETTLED}",
                (status, text(upstream_reply), pk, pk),
            ).fetchone()
            if row is None:
                return
            if rules.records_suppressions(row["old_status"], status):
                for event in _settled_suppressions(row):
                    insert_event(conn, event, dedupe_key=None, notify=True)
            if not rules.takes_back_enrollments(row["old_status"], status, row["campaign"]):
                return
            # Lock the candidates first: a concurrent mail that enrolls the same address
            # holds its row lock until it commits, and the DELETE below (a new statement,
            # so a new snapshot) then sees that mail and keeps the enrollment.
            candidates = [
                r["recipient"]
                for r in conn.execute(
                    TAKE_BACK_CANDIDATES, (pk, row["campaign"], row["created_at"])
                )
            ]
            if candidates:
                conn.execute(TAKE_BACK, (row["campaign"], candidates, row["created_at"], pk))

        self.write(write)

    def reconcile_relaying(self, older_than: float) -> int:
        def write(conn: Conn) -> int:
            stuck = conn.execute(
                "UPDATE messages m SET status = 'unconfirmed' WHERE status = 'relaying'"
                f" AND created_at < %s RETURNING {_SETTLED}",
                (older_than,),
            ).fetchall()
            for row in sorted(stuck, key=lambda r: r["id"]):
                if rules.records_suppressions("relaying", "unconfirmed"):
                    for event in _settled_suppressions(row):
                        insert_event(conn, event, dedupe_key=None, notify=True)
            return len(stuck)

        return self.write(write)

    def count_relaying(self, older_than: float) -> int:
        found = self.rows(
            "SELECT count(*) AS n FROM messages WHERE status = 'relaying' AND created_at < %s",
            (older_than,),
        )
        return int(found[0]["n"])
