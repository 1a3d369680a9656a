"""The milter's fail-open journal: mail the store could not take, kept on disk, replayed later.

When the store is locked, missing or read-only, the milter accepts the mail anyway and
appends its decision inputs (envelope, headers, bounded body, queue id) as one JSON line,
fsynced, to the journal. A background thread replays the journal through the engine when
the store is back. Replay is idempotent: every event carries a dedupe key derived from the
inbound mail, so an entry replayed twice records one event.

Replay first moves the journal aside (``<journal>.replay``) so appends never race with the
rewrite; entries that still fail stay in that file for the next round.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from replytrack.metrics import JOURNAL_BACKLOG
from replytrack.milter.engine import Inbound
from replytrack.store.base import StoreError

log = logging.getLogger(__name__)


class Journal:
    """An append-only JSON-lines file of :class:`Inbound` mail, with replay."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.replay_path = self.path.with_name(self.path.name + ".replay")
        self._lock = threading.Lock()
        self._replay_lock = threading.Lock()
        JOURNAL_BACKLOG.set(self.backlog())

    def append(self, msg: Inbound, reason: str) -> None:
        """Write one entry and fsync it before returning (the mail is accepted after this)."""
        line = json.dumps({"reason": reason, "inbound": msg.to_json()}, separators=(",", ":"))
        data = (line + "\n").encode("utf-8", "surrogateescape")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
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
            except FileNotFoundError:
                continue
        return total

    def replay(self, process: Callable[[Inbound], object]) -> int:
        """Feed every entry to ``process``; returns how many were done.

        Stops at the first StoreError (the store is still unavailable) and keeps the rest.
        An entry that cannot be parsed or makes ``process`` fail otherwise is logged and
        dropped, so one poisoned line never blocks the journal.
        """
        with self._replay_lock:
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
                    entry = json.loads(line)
                    msg = Inbound.from_json(entry["inbound"])
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("journal: dropping unreadable entry %d: %s", index, exc)
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
                log.info("journal: replayed qid=%s", msg.queue_id)
            if remaining:
                tmp = self.replay_path.with_name(self.replay_path.name + ".tmp")
                tmp.write_bytes(("\n".join(remaining) + "\n").encode("utf-8", "surrogateescape"))
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, self.replay_path)
            else:
                self.replay_path.unlink(missing_ok=True)
            JOURNAL_BACKLOG.set(self.backlog())
            return done


class Replayer(threading.Thread):
    """A daemon thread that replays the journal and reactivates due pauses periodically."""

    def __init__(
        self,
        journal: Journal,
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
