"""The PostgreSQL backend for multi-host sites: ``connection`` (the psycopg pool and how a
call is bounded), ``schema`` (migrations, advisory-locked), ``outbox`` (notifications,
maintenance), ``store`` (the domain calls)."""

from __future__ import annotations

from replytrack.store.postgresql.connection import safe_url
from replytrack.store.postgresql.store import PostgreSQLStore

__all__ = ["PostgreSQLStore", "safe_url"]
