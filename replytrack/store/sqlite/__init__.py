"""The embedded SQLite backend: ``connection`` (connections and how a call is bounded),
``schema`` (migrations, Message-ID lookup keys), ``outbox`` (notifications, maintenance),
``store`` (the domain calls)."""

from __future__ import annotations

from replytrack.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION, message_key
from replytrack.store.sqlite.store import SQLiteStore

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore", "message_key"]
