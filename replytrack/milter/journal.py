"""The milter's fail-open journal: mail the store could not take, kept on disk, replayed later.

When the store is locked, missing or read-only, the milter accepts the mail anyway and
appends its decision inputs (envelope, headers, bounded body, queue id), and the verdict
when one could be reached, as one JSON line, fsynced, to the journal. Replay feeds the
inputs through the engine again when the store is back, so the decision is made on what
the store holds then. Replay is idempotent: every event carries a dedupe key derived from
the inbound mail, so an entry replayed twice records one event.

A journal on the store's own filesystem fails with it, so entries go down a chain
(:class:`JournalChain`): the configured journal, then a second location (by default the
service's runtime directory or a private directory under the system's temporary
directory), and when no location takes the entry, the log, where it is written whole as
one ERROR line after :data:`LOG_MARKER` for ``replytrack journal replay --from-log``.

Replay first moves a journal aside (``<journal>.replay``) so appends never race with the
rewrite; entries that still fail stay in that file for the next round. A lock on the
journal's directory keeps two processes (the milter, ``replytrack journal replay``) from
replaying the same file at once.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replytrack.config import Config
from replytrack.metrics import JOURNAL_BACKLOG
from replytrack.milter.decision import Verdict
from replytrack.milter.inbound import Inbound
from replytrack.store.errors import StoreError

log = logging.getLogger(__name__)

# What precedes an entry written to the log; ``--from-log`` looks for it on every line.
LOG_MARKER = "replytrack-journal-entry:"
# journald splits stdout lines longer than 48 KiB (its LineMax default): an entry written to
# the log is kept below that, its body cut first (headers are what matching needs).
LOG_ENTRY_LIMIT = 32 * 1024


def entry(msg: Inbound, reason: str, verdict: Verdict | None = None) -> dict[str, Any]:
    """One journal entry: why it was journaled, the decision inputs, the verdict if known."""
    data: dict[str, Any] = {"reason": reason, "inbound": msg.to_json()}
    if verdict is not None:
        data["verdict"] = verdict.to_json()
    return data


def _dumps(data: Mapping[str, Any]) -> str:
    # ASCII only: a lone surrogate from a raw header byte is escaped, never written raw.
    return json.dumps(data, separators=(",", ":"), default=str)


def log_line(data: dict[str, Any], limit: int = LOG_ENTRY_LIMIT) -> str:
    """``data`` as one JSON line for the log, its body cut when the line would pass ``limit``."""
    line = _dumps(data)
    body = data["inbound"].get("body")
    if len(line) <= limit or not body:
        return line
    raw = base64.b64decode(body)
    cut = {**data, "inbound": {**data["inbound"], "body": ""}, "body_cut": True}
    room = max(0, limit - len(_dumps(cut)))
    # Four base64 characters carry three bytes.
    cut["inbound"]["body"] = base64.b64encode(raw[: room // 4 * 3]).decode("ascii")
    return _dumps(cut)


def entries_from_log(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Journal entries found in log text: ``(line number, entry or None, problem)``.

    A line counts when it holds :data:`LOG_MARKER`; whatever precedes the marker (syslog or
    journald prefixes, the logger's own) is ignored. An entry cut short by a log pipeline
    comes back as None with the reason, so the operator learns what could not be replayed.
    """
    decoder = json.JSONDecoder()
    for number, line in enumerate(lines, 1):
        at = line.find(LOG_MARKER)
        if at < 0:
            continue
        text = line[at + len(LOG_MARKER) :].strip()
        try:
            data, _ = decoder.raw_decode(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            Inbound.from_json(data["inbound"])
        except (ValueError, KeyError, TypeError) as exc:
            yield number, None, f"unreadable entry: {exc}"
            continue
        yield number, data, ""


def probe(path: Path) -> str | None:
    """Why the journal at ``path`` cannot take an entry now, or None when it can.

    Writes, fsyncs and deletes a probe file beside it: only a write tells an immutable or
    read-only directory from a writable one (permission bits do not bind root).
    """
    directory = path.parent
    if not directory.is_dir():
        return f"journal directory {directory} does not exist"
    probe_file = directory / f".replytrack-probe-{os.getpid()}"
    try:
        fd = os.open(probe_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, b"probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe_file.unlink()
        if path.exists():
            # The file itself may be immutable or read-only while its directory is not.
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW))
    except OSError as exc:
        return f"journal {path} is not writable: {exc.strerror or exc}"
    return None


def _private_dir(directory: Path) -> None:
    """Create ``directory`` for this user alone, or make sure an existing one is.

    Under a shared temporary directory anyone may have made the name first (a symlink to
    elsewhere, a directory they own): such a directory is refused, never written into.
    """
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{directory} is not a directory")
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise OSError(f"{directory} is not private to this user (owner or mode)")


class Journal:
    """An append-only JSON-lines file of :class:`Inbound` mail, with replay."""

    def __init__(self, path: str | os.PathLike[str], *, private: bool = False) -> None:
        self.path = Path(path)
        self.replay_path = self.path.with_name(self.path.name + ".replay")
        # True for a location in a directory shared with other users (the temp directory).
        self.private = private
        self._lock = threading.Lock()
        self._replay_lock = threading.Lock()
        JOURNAL_BACKLOG.set(self.backlog())

    def append(self, msg: Inbound, reason: str, verdict: Verdict | None = None) -> None:
        """Write one entry and fsync it before returning (the mail is accepted after this).

        Raises OSError when this location cannot take it.
        """
        data = (_dumps(entry(msg, reason, verdict)) + "\n").encode("ascii")
        with self._lock:
            if self.private:
                _private_dir(self.path.parent)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
            fd = os.open(self.path, flags, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        JOURNAL_BACKLOG.inc()

    def backlog(self) -> int:
        """Entries waiting for replay."""
        total = 0
        for file in (self.replay_path, self.path):
            try:
                with open(file, "rb") as handle:
                    total += sum(1 for line in handle if line.strip())
            except OSError:
                # Missing, or unreadable on a failing disk: doctor names the latter.
                continue
        return total

    @contextlib.contextmanager
    def _directory_lock(self) -> Iterator[None]:
        # One replayer per journal across processes. The directory, not a lock file: it
        # needs no write access, so the milter and root's CLI can both take it.
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def replay(self, process: Callable[[Inbound], object]) -> int:
        """Feed every entry to ``process``; returns how many were done.

        Stops at the first StoreError (the store is still unavailable) and keeps the rest.
        An entry that cannot be parsed or makes ``process`` fail otherwise is logged and
        dropped, so one poisoned line never blocks the journal. Raises OSError when this
        location cannot be read or rewritten.
        """
        with self._replay_lock:
            if not (self.path.exists() or self.replay_path.exists()):
                return 0
            with self._directory_lock():
                return self._replay_locked(process)

    def _replay_locked(self, process: Callable[[Inbound], object]) -> int:
        with self._lock:
            if not self.replay_path.exists():
                if not self.path.exists():
                    return 0
                os.replace(self.path, self.replay_path)
        lines = self.replay_path.read_bytes().decode("utf-8", "surrogateescape").splitlines()
        done = 0
        remaining: list[str] = []
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                msg = Inbound.from_json(json.loads(line)["inbound"])
            except (ValueError, KeyError, TypeError) as exc:
                log.error("journal %s: dropping unreadable entry %d: %s", self.path, index, exc)
                continue
            try:
                process(msg)
            except StoreError as exc:
                log.warning("journal: store still unavailable (qid=%s): %s", msg.queue_id, exc)
                remaining = [ln for ln in lines[index:] if ln.strip()]
                break
            except Exception:
                log.exception("journal: dropping entry qid=%s that fails", msg.queue_id)
                continue
            done += 1
            log.info("journal: replayed qid=%s from %s", msg.queue_id, self.path)
        if remaining:
            self._rewrite(remaining)
        else:
            self.replay_path.unlink(missing_ok=True)
        JOURNAL_BACKLOG.set(self.backlog())
        return done

    def _rewrite(self, lines: list[str]) -> None:
        """Replace the replay file with ``lines``, keeping its owner (root may replay)."""
        tmp = self.replay_path.with_name(self.replay_path.name + ".tmp")
        info = os.stat(self.replay_path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
            os.fsync(fd)
            if os.geteuid() == 0:
                os.fchown(fd, info.st_uid, info.st_gid)
        finally:
            os.close(fd)
        os.replace(tmp, self.replay_path)


def fallback_path(config: Config) -> tuple[Path, bool]:
    """The second journal location and whether it lies in a shared directory.

    ``milter.journal_fallback`` when set; else the service's runtime directory
    (``$RUNTIME_DIRECTORY``, set by systemd's ``RuntimeDirectory=``, a tmpfs: another
    filesystem than the store's); else a directory of this user's own in the system's
    temporary directory.
    """
    if config.milter_journal_fallback:
        return Path(config.milter_journal_fallback), False
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / "journal", False
    return Path(tempfile.gettempdir()) / f"replytrack-{os.geteuid()}" / "journal", True


@dataclass
class Location:
    """One journal of the chain and the last problem it had (logged once, not every mail)."""

    journal: Journal
    problem: str = ""


class JournalChain:
    """The journal locations in order of preference; the log is the last resort."""

    def __init__(self, journals: Iterable[Journal]) -> None:
        self.locations = [Location(j) for j in journals]
        self._log_lock = threading.Lock()
        JOURNAL_BACKLOG.set(self.backlog())

    @classmethod
    def for_config(cls, config: Config) -> JournalChain:
        """The configured journal, then the fallback location (when it is another file)."""
        primary = Journal(config.journal_path)
        second, private = fallback_path(config)
        if second.resolve() == primary.path.resolve():
            return cls([primary])
        return cls([primary, Journal(second, private=private)])

    @property
    def paths(self) -> list[Path]:
        """Every location, in order."""
        return [loc.journal.path for loc in self.locations]

    def append(self, msg: Inbound, reason: str, verdict: Verdict | None = None) -> Path | None:
        """Journal one mail at the first location that takes it; returns that path.

        When none does, the whole entry goes to the log at ERROR (see :data:`LOG_MARKER`)
        and None is returned. Never raises OSError.
        """
        for loc in self.locations:
            try:
                loc.journal.append(msg, reason, verdict)
            except OSError as exc:
                problem = f"{exc.strerror or exc}"
                if problem != loc.problem:
                    log.error(
                        "qid=%s journal %s not writable (%s); trying the next location",
                        msg.queue_id or "-",
                        loc.journal.path,
                        problem,
                    )
                loc.problem = problem
                continue
            if loc.problem:
                log.info("journal %s writable again", loc.journal.path)
                loc.problem = ""
            return loc.journal.path
        line = log_line(entry(msg, reason, verdict))
        with self._log_lock:
            log.error(
                "qid=%s no journal location writable (%s); replay this entry with"
                " `replytrack journal replay --from-log FILE`: %s %s",
                msg.queue_id or "-",
                ", ".join(str(p) for p in self.paths),
                LOG_MARKER,
                line,
            )
        return None

    def backlog(self) -> int:
        """Entries waiting for replay, over every location."""
        return sum(loc.journal.backlog() for loc in self.locations)

    def replay(self, process: Callable[[Inbound], object]) -> int:
        """Replay every location in turn; returns how many entries were done.

        A location that cannot be read or rewritten (its filesystem still failing) is
        skipped this round and named in the log once until it recovers.
        """
        done = 0
        for loc in self.locations:
            try:
                done += loc.journal.replay(process)
            except OSError as exc:
                problem = f"{exc.strerror or exc}"
                if problem != loc.problem:
                    log.warning("journal %s cannot be replayed now: %s", loc.journal.path, problem)
                loc.problem = problem
        JOURNAL_BACKLOG.set(self.backlog())
        return done


class Replayer(threading.Thread):
    """A daemon thread that replays the journal and reactivates due pauses periodically."""

    def __init__(
        self,
        journal: Journal | JournalChain,
        process: Callable[[Inbound], object],
        *,
        reactivate: Callable[[], object] | None = None,
        interval: float = 5.0,
        reactivate_every: float = 60.0,
    ) -> None:
        super().__init__(name="replytrack-replay", daemon=True)
        self.journal = journal
        self.process = process
        self.reactivate = reactivate
        self.interval = interval
        self.reactivate_every = reactivate_every
        self.stopping = threading.Event()

    def run(self) -> None:
        since_reactivate = self.reactivate_every  # reactivate once right at start
        while not self.stopping.is_set():
            try:
                self.journal.replay(self.process)
            except Exception:
                log.exception("journal: replay round failed")
            if self.reactivate is not None and since_reactivate >= self.reactivate_every:
                since_reactivate = 0.0
                try:
                    self.reactivate()
                except Exception as exc:
                    log.warning("reactivating paused enrollments failed: %s", exc)
            self.stopping.wait(self.interval)
            since_reactivate += self.interval

    def stop(self) -> None:
        """Ask the thread to end after its current round."""
        self.stopping.set()
