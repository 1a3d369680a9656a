"""The SQLite store file on disk: created only when asked, refused when it is not a store.

Only ``replytrack init`` (and ``migrate``) create or upgrade a store. Every other opener
gets a one-line StoreError naming the file when it is missing, empty (0 bytes: a truncated
store must not be silently replaced by an empty one), not a SQLite file, another program's
database, or of an older schema. A daemon that quietly made itself a fresh store beside a
wrong path would record nothing where the rest of the site looks for it.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from replytrack.store.errors import StoreError

# Store files (and the -wal and -shm files SQLite gives the same mode) are read and written
# by the service user and its group: the ops CLI runs as members of the group, and in WAL
# mode even a reader must write the -shm file. Nobody else may read them.
STORE_MODE = 0o660
# A directory init creates for the store: the group may enter it, others not.
STORE_DIR_MODE = 0o750

INIT_HINT = "run `replytrack init`"


@dataclass(frozen=True)
class FileState:
    """What an existing store file holds, read without writing to it."""

    version: int  # PRAGMA user_version: 0 before the first migration
    has_tables: bool  # any table at all (a version-0 file with tables is not ours)


def _uri(path: Path, mode: str) -> str:
    # Quoted: a "#", "?" or "%" in the path would otherwise end or alter it.
    return f"file:{quote(str(path))}?mode={mode}"


def create_store_file(path: Path) -> bool:
    """Create an empty store file with STORE_MODE; False when it already exists.

    The mode is set explicitly (not left to the umask): SQLite then gives the -wal and -shm
    files the same mode, so none of the three is ever world-readable.
    """
    try:
        path.parent.mkdir(mode=STORE_DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, STORE_MODE)
    except FileExistsError:
        return False
    except OSError as exc:
        raise StoreError(f"cannot create store {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, STORE_MODE)
    finally:
        os.close(fd)
    return True


def inspect_store_file(path: Path, *, readonly: bool = False) -> FileState:
    """Read an existing file's schema version, writing nothing to it.

    A plain connection that only reads, not a store connection: a wrong ``--db`` naming
    another program's database must not be switched to WAL mode before it is refused. Not
    read-only (unless asked) either: closing a read-write connection removes the -wal and
    -shm files opening a WAL database made, where a read-only one leaves them behind.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise StoreError(f"store {path} does not exist; {INIT_HINT}") from None
    except OSError as exc:
        raise StoreError(f"cannot open store {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise StoreError(
            f"store {path} is empty (0 bytes, truncated?): restore it from a backup,"
            f" or remove it and {INIT_HINT}"
        )
    try:
        mode = "ro" if readonly else "rw"
        conn = sqlite3.connect(_uri(path, mode), uri=True, isolation_level=None, timeout=5.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from None
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise StoreError(f"{path} is not a replytrack store (not a SQLite file)") from None
        raise StoreError(f"cannot read store {path}: {exc}") from None
    finally:
        conn.close()
    return FileState(version=version, has_tables=bool(tables))


def check_usable(path: Path, state: FileState, *, schema_version: int, create: bool) -> None:
    """Refuse a file that is not a replytrack store of this version (create: or a new one)."""
    if state.version == 0 and state.has_tables:
        raise StoreError(
            f"{path} is not a replytrack store (another program's database); check db / --db"
        )
    if state.version > schema_version:
        raise StoreError(
            f"store {path} has schema {state.version}, newer than this replytrack"
            f" ({schema_version}); upgrade replytrack"
        )
    if create:
        return
    if state.version == 0:
        raise StoreError(f"store {path} holds no replytrack schema; {INIT_HINT}")
    if state.version < schema_version:
        raise StoreError(
            f"store {path} has schema {state.version}, this replytrack needs"
            f" {schema_version}; run `replytrack migrate`"
        )
