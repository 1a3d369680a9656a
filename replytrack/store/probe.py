"""Can the daemons write the store and read the key? Found out by doing it, as their user.

``replytrack doctor`` asks. Asking SQLite whether a write transaction can start proves
nothing (it takes a lock and writes no byte), and a check run by root proves nothing either:
root ignores file modes. So the probe writes a row and deletes it, each step committed, and
creates and removes a file in the store's directory, where SQLite must be able to create the
-wal and -shm files. Run by root, it does all that in a forked child switched to the
service user.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import select
import signal
import time
from pathlib import Path

from replytrack.store.errors import StoreError

# The unprivileged account of the systemd units (User= and Group= in postfix-example/).
SERVICE_USER = "replytrack"
# The child opens one store and writes two short transactions, each bounded by the store's
# busy timeout; this only guards against a child stuck in the filesystem.
_CHILD_TIMEOUT = 60.0


def probe(db: str, key: str | None = None) -> dict[str, list[str]]:
    """Problems met creating a file beside the store (``"directory"``), writing the store
    (``"store"``) and reading the key (``"secret"``)."""
    found: dict[str, list[str]] = {"directory": [], "store": [], "secret": []}
    if not db.startswith(("postgres://", "postgresql://")):
        found["directory"] = _directory_problems(Path(db))
    from replytrack.store import open_store

    try:
        store = open_store(db)
        try:
            store.check_writable()
        finally:
            store.close_all()
    except StoreError as exc:
        found["store"].append(str(exc))
    if key is not None:
        try:
            with open(key, "rb") as file:
                file.read(1)
        except OSError as exc:
            found["secret"].append(f"cannot read key file {key}: {exc.strerror or exc}")
    return found


def _directory_problems(path: Path) -> list[str]:
    directory = path.parent
    trial = directory / f".{path.name}.probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.close(os.open(trial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(trial)
    except OSError as exc:
        return [
            f"cannot create files in {directory} ({exc.strerror or exc}): SQLite needs to"
            f" create {path.name}-wal and {path.name}-shm there"
        ]
    return []


def probe_as(user: str, db: str, key: str | None = None) -> dict[str, list[str]]:
    """:func:`probe` run as ``user`` (with its groups), from a process that is root.

    A forked child switches user and runs the probe; it imports nothing from disk (what it
    needs is loaded before the fork), because the interpreter's own files may be closed to
    the service user. The findings come back as JSON through a pipe.
    """
    account = pwd.getpwnam(user)
    groups = os.getgrouplist(user, account.pw_gid)
    import replytrack.store.sqlite  # noqa: F401 (loaded here, for the child)

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 1
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            os.chdir("/")
            _write_all(write_end, json.dumps(probe(db, key)).encode())
            status = 0
        except BaseException as exc:  # anything: the parent must hear, and no cleanup runs
            with contextlib.suppress(BaseException):
                _write_all(write_end, json.dumps({"error": str(exc)}).encode())
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        output = _read_until_closed(read_end, deadline=time.monotonic() + _CHILD_TIMEOUT)
    finally:
        os.close(read_end)
        if output is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if output is None:
        return _failed(f"the write probe as {user} did not finish in time")
    try:
        found = json.loads(output)
        if "error" in found:
            return _failed(f"the write probe as {user} failed: {found['error']}")
        return {part: list(found[part]) for part in ("directory", "store", "secret")}
    except (ValueError, KeyError, TypeError):
        return _failed(f"the write probe as {user} failed: no answer")


def _failed(problem: str) -> dict[str, list[str]]:
    return {"directory": [], "store": [problem], "secret": []}


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _read_until_closed(fd: int, *, deadline: float) -> bytes | None:
    """Everything written to the pipe until the child closes it; None past the deadline."""
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
