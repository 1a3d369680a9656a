"""The soak's fault mode (``bench/soak.py --faults``): mails through ``replytrack proxy``
while its store is broken at random moments, then every ``250`` accounted for.

While client sessions send campaign mail for ``duration`` seconds, a fault thread (seeded:
the seed is printed, and the same seed gives the same schedule) takes turns at:

* ``lock``: another connection holds the store's write lock (``BEGIN EXCLUSIVE``) for
  0.3-1.6 times the proxy's busy timeout, so some locks outlast it;
* ``disk``: the store's filesystem (a tmpfs mounted for the run) is filled to the last byte
  and freed after a while, a reader holding a snapshot meanwhile so that the write-ahead
  log cannot be rewritten in place and must grow;
* ``snapshot``: a reader holds a snapshot open alone, so the write-ahead log grows.

Each round of faults visits every kind once, in a seeded order, and the load lasts until
the first round is done. Clients retry a ``4xx`` (and a broken connection) as an MTA does,
same mail and Message-ID, until it gets ``250`` or a ``5xx``. Each attempt carries its own
``X-Test-Marker``, so the mail that arrived upstream is tied to the attempt that got ``250``.

At the end, for every mail whose client got ``250``: the attempt arrived upstream; the
stamped Message-ID it arrived with is recorded as ``relayed``, ``relaying`` or
``unconfirmed`` (states that count as sent); and each of its recipients (To, Cc and
envelope, unique to the mail) is enrolled in the campaign. Every arrival must have a record
that is not ``failed``. Anything else is unaccounted and the exit status is 1.

Without mount rights (not root) the store stays on the work directory's disk and only the
lock and snapshot faults run; this is said at the start.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from soak import ProxyProcess, Sink, settle
from soak_clients import CAMPAIGN, FaultTally, code_class, fault_client, recipients_of

from replytrack.store import open_store
from tests.support.faults import fill_disk, hold_exclusive_lock, small_tmpfs

log = logging.getLogger("replytrack.bench.soak_faults")

# The proxy opens its store with open_store's default busy timeout.
BUSY_TIMEOUT = inspect.signature(open_store).parameters["busy_timeout_ms"].default / 1000
# States of a record that count as sent (reply matching and suppression honour them).
COUNTING_STATES = ("relayed", "relaying", "unconfirmed")
PROXY_TIMEOUT = 10.0
# How long after the load ends clients keep retrying before they give up on a mail.
DRAIN_SECONDS = 60.0


# --- the faults --------------------------------------------------------------------------------
@dataclass
class FaultWindow:
    """One fault: its kind, when it held (monotonic seconds) and how long it was meant to."""

    kind: str
    start: float
    end: float = 0.0
    planned: float = 0.0
    note: str = ""


class FaultThread(threading.Thread):
    """Breaks the store at seeded random moments until ``stop`` is set."""

    def __init__(self, db: Path, fs: Path | None, rng: random.Random) -> None:
        super().__init__(name="faults", daemon=True)
        self.db = db
        self.fs = fs
        self.rng = rng
        self.kinds = ["lock", "disk", "snapshot"] if fs is not None else ["lock", "snapshot"]
        self.stop = threading.Event()
        self.first_round_done = threading.Event()
        self.windows: list[FaultWindow] = []
        self.failed: list[str] = []

    def run(self) -> None:
        for round_no in itertools.count():
            order = self.rng.sample(self.kinds, len(self.kinds))
            for kind in order:
                if self.stop.wait(self.rng.uniform(0.3, 2.0)):
                    return
                try:
                    self.inject(kind)
                except (OSError, sqlite3.Error) as exc:
                    # A fault that could not be set up is reported, never silently dropped.
                    self.failed.append(f"{kind}: {exc}")
                    log.warning("fault %s not injected: %s", kind, exc)
            if round_no == 0:
                self.first_round_done.set()

    def inject(self, kind: str) -> None:
        """Hold one fault of ``kind`` for a seeded random time."""
        if kind == "lock":
            seconds = self.rng.uniform(0.3, 1.6) * BUSY_TIMEOUT
            note = "past busy timeout" if seconds > BUSY_TIMEOUT else ""
            with hold_exclusive_lock(self.db):
                self._hold(FaultWindow("lock", time.monotonic(), planned=seconds, note=note))
        elif kind == "disk":
            assert self.fs is not None
            seconds = self.rng.uniform(0.5, 4.0)
            # Without a reader the proxy's checkpoints let the log be rewritten in place,
            # in space it already has, and a full disk would rarely be met.
            with self._snapshot():
                ballast = fill_disk(self.fs)
                try:
                    self._hold(FaultWindow("disk", time.monotonic(), planned=seconds))
                finally:
                    ballast.unlink()
        else:
            seconds = self.rng.uniform(1.0, 6.0)
            with self._snapshot():
                self._hold(FaultWindow("snapshot", time.monotonic(), planned=seconds))

    def _hold(self, window: FaultWindow) -> None:
        self.stop.wait(window.planned)
        window.end = time.monotonic()
        self.windows.append(window)
        log.info("fault %s held %.1f s %s", window.kind, window.end - window.start, window.note)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """A reader whose open transaction pins the write-ahead log (an ops query)."""
        reader = sqlite3.connect(str(self.db), isolation_level=None, timeout=10)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM messages").fetchall()
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):
                reader.execute("ROLLBACK")
            reader.close()


# --- reconciliation ----------------------------------------------------------------------------
def arrivals(dump: Path) -> dict[str, list[str]]:
    """Attempt marker -> stamped Message-IDs it arrived upstream with (smtp-sink's dump)."""
    found: dict[str, list[str]] = {}
    if not dump.exists():
        return found
    for chunk in re.split(rb"(?m)^X-Client-Addr: ", dump.read_bytes()):
        head = re.split(rb"\r?\n\r?\n", chunk, maxsplit=1)[0]
        marker = re.search(rb"(?mi)^X-Test-Marker: *(\S+)", head)
        message_id = re.search(rb"(?mi)^Message-ID: *<([^>\s]+)>", head)
        if marker:
            found.setdefault(marker[1].decode(), []).append(
                message_id[1].decode() if message_id else ""
            )
    return found


def store_contents(db: Path) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """(stamped Message-ID -> status, {(campaign, recipient)} enrolled) from the store."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        records = dict(
            conn.execute(
                "SELECT message_id, status FROM messages"
                " WHERE original_message_id LIKE '%@client.example'"
            ).fetchall()
        )
        enrolled = set(conn.execute("SELECT campaign, recipient FROM enrollments").fetchall())
    finally:
        conn.close()
    return records, enrolled


@dataclass
class Reconciliation:
    """Mails that broke the promise, by how (each a list of mail or marker names)."""

    lost: list[str] = field(default_factory=list)  # 250, never arrived
    unrecorded: list[str] = field(default_factory=list)  # 250, no record in a counting state
    unenrolled: list[str] = field(default_factory=list)  # 250, a recipient not enrolled
    untracked: list[str] = field(default_factory=list)  # arrived, no record or "failed"
    accepted: int = 0  # mails that got 250

    @property
    def unaccounted(self) -> list[str]:
        """Every mail outside reply matching and suppression, once."""
        names = self.lost + self.unrecorded + self.unenrolled
        names += [marker.rpartition(".")[0] for marker in self.untracked]
        return sorted(set(names))


def reconcile(
    final: dict[str, tuple[int | None, str]],
    arrived: dict[str, list[str]],
    records: dict[str, str],
    enrolled: set[tuple[str, str]],
) -> Reconciliation:
    """Check every 250 and every arrival against the upstream and the store."""
    result = Reconciliation()
    for mail, (code, marker) in sorted(final.items()):
        if code != 250:
            continue
        result.accepted += 1
        if marker not in arrived:
            result.lost.append(mail)
            continue
        if not any(records.get(mid) in COUNTING_STATES for mid in arrived[marker]):
            result.unrecorded.append(mail)
        if any((CAMPAIGN, rcpt) not in enrolled for rcpt in recipients_of(mail)):
            result.unenrolled.append(mail)
    for marker, message_ids in sorted(arrived.items()):
        if any(records.get(mid, "failed") == "failed" for mid in message_ids):
            result.untracked.append(marker)
    return result


# --- the run -----------------------------------------------------------------------------------
@dataclass
class FaultSoakResult:
    """What one fault soak saw; ``ok`` when nothing is unaccounted."""

    seed: int
    disk_faults: bool
    wall: float
    mails: int
    replies: Counter[str]
    final: Counter[str]
    faults: Counter[str]
    fault_4xx: Counter[str]
    statuses: Counter[str]
    arrivals: int
    duplicates: int
    reconciliation: Reconciliation
    fault_errors: list[str]
    store_bytes: int

    @property
    def ok(self) -> bool:
        """The promise held (no 250 unaccounted, nothing arrived untracked), and was put to
        the test: some mail got 250."""
        return not self.reconciliation.unaccounted and self.final["250"] > 0


def init_store(proxy: ProxyProcess) -> None:
    """``replytrack init`` with the proxy's own settings (the daemon refuses a missing store)."""
    result = subprocess.run(
        [sys.executable, "-m", "replytrack", "init"],
        env=proxy.env(),
        cwd=proxy.workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"replytrack init failed: {result.stderr.strip()}")


def attribute_4xx(
    attempts: list[tuple[float, int | None]], windows: list[FaultWindow]
) -> Counter[str]:
    """Retries (4xx and broken connections) by the fault that was held when they came."""
    found: Counter[str] = Counter()
    for at, code in attempts:
        if code is not None and not 400 <= code < 500:
            continue
        # An answer can come a moment after its fault ended (a busy wait running out).
        kind = next((w.kind for w in windows if w.start <= at <= w.end + 1.0), "no fault")
        found[kind] += 1
    return found


def fault_soak(
    *,
    duration: float,
    sessions: int,
    per_connection: int,
    size: int,
    seed: int,
    tmpfs_size: str = "256m",
) -> FaultSoakResult:
    """Run the load with faults, then reconcile. The work directory is removed when the
    promise held and kept (with a copy of the store) when it did not."""
    workdir = Path(tempfile.mkdtemp(prefix="replytrack-soak-faults-"))
    workdir.chmod(0o711)  # smtp-sink runs as nobody and writes its dump below
    (workdir / "sink").mkdir()
    with small_tmpfs(workdir / "store", size=tmpfs_size) as fs:
        if fs is None:
            log.warning("cannot mount a tmpfs (needs root): lock and snapshot faults only")
        db = workdir / "store" / "replytrack.db"
        sink = Sink(workdir / "sink").start()
        proxy = ProxyProcess(
            workdir,
            sink.port,
            extra_env={
                "REPLYTRACK_DB": str(db),
                "REPLYTRACK_PROXY_TIMEOUT": f"{PROXY_TIMEOUT:g}",
                "REPLYTRACK_PROXY_UNCONFIRMED_AFTER": f"{4 * PROXY_TIMEOUT:g}",
            },
        )
        proxy.db = db
        faults = FaultThread(db, fs, random.Random(seed))
        tally = FaultTally()
        try:
            init_store(proxy)
            proxy.start()
            wall = run_load(
                proxy.port,
                faults,
                tally,
                duration=duration,
                sessions=sessions,
                per_connection=per_connection,
                size=size,
                seed=seed,
            )
            dump = sink.dump
            assert dump is not None
            settle(lambda: dump.stat().st_size if dump.exists() else 0)
        finally:
            faults.stop.set()
            proxy.stop()
            sink.stop()
        records, enrolled = store_contents(db)
        store_bytes = sum(f.stat().st_size for f in db.parent.glob(db.name + "*"))
        arrived = arrivals(dump)
        reconciliation = reconcile(tally.final, arrived, records, enrolled)
        if reconciliation.unaccounted or not reconciliation.accepted:
            shutil.copytree(workdir / "store", workdir / "store-copy")
    per_mail = Counter(marker.rpartition(".")[0] for marker in arrived for _ in arrived[marker])
    result = FaultSoakResult(
        seed=seed,
        disk_faults=fs is not None,
        wall=wall,
        mails=len(tally.final),
        replies=Counter(code_class(code) for _, code in tally.attempts),
        final=Counter(code_class(code) for code, _ in tally.final.values()),
        faults=Counter(w.kind + (f" ({w.note})" if w.note else "") for w in faults.windows),
        fault_4xx=attribute_4xx(tally.attempts, faults.windows),
        statuses=Counter(records.values()),
        arrivals=sum(per_mail.values()),
        duplicates=sum(1 for n in per_mail.values() if n > 1),
        reconciliation=reconciliation,
        fault_errors=faults.failed,
        store_bytes=store_bytes,
    )
    if result.ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log.error("work directory kept: %s (proxy.log, sink/, store-copy/)", workdir)
    return result


def run_load(
    port: int,
    faults: FaultThread,
    tally: FaultTally,
    *,
    duration: float,
    sessions: int,
    per_connection: int,
    size: int,
    seed: int,
) -> float:
    """Clients and faults together for ``duration`` seconds (at least one round of every
    fault), then the clients' retries until done; returns the wall time."""
    load_over = threading.Event()
    give_up = threading.Event()
    clients = [
        threading.Thread(
            target=fault_client,
            args=(port, session),
            kwargs={
                "size": size,
                "per_connection": per_connection,
                "tally": tally,
                "load_over": load_over,
                "give_up": give_up,
                "rng": random.Random(f"{seed}/{session}"),
            },
            daemon=True,
        )
        for session in range(sessions)
    ]
    start = time.monotonic()
    for client in clients:
        client.start()
    faults.start()
    time.sleep(duration)
    faults.first_round_done.wait(300)
    load_over.set()
    faults.stop.set()
    faults.join(60)
    # Every fault is released: what is still being retried gets through now.
    deadline = time.monotonic() + DRAIN_SECONDS
    for client in clients:
        client.join(max(0.0, deadline - time.monotonic()))
    give_up.set()
    for client in clients:
        client.join(150)
    return time.monotonic() - start


def report(result: FaultSoakResult, *, duration: float, sessions: int) -> None:
    """Print the reconciliation table."""
    rec = result.reconciliation
    faults = ", ".join(f"{k}: {v}" for k, v in sorted(result.faults.items())) or "none"
    rows = [
        ("seed", f"{result.seed}"),
        ("disk faults", "yes (store on a tmpfs)" if result.disk_faults else "no (no mount)"),
        ("mails", f"{result.mails:,} ({sessions} sessions, {duration:g} s of load)"),
        ("attempts", ", ".join(f"{k}: {v:,}" for k, v in sorted(result.replies.items()))),
        ("final answers", ", ".join(f"{k}: {v:,}" for k, v in sorted(result.final.items()))),
        ("faults injected", faults),
        ("retries during", ", ".join(f"{k}: {v:,}" for k, v in sorted(result.fault_4xx.items()))),
        ("records", ", ".join(f"{k}: {v:,}" for k, v in sorted(result.statuses.items()))),
        ("store files", f"{result.store_bytes / 2**20:.1f} MiB"),
        ("arrived upstream", f"{result.arrivals:,} ({result.duplicates:,} mails twice)"),
        ("250 not arrived", f"{len(rec.lost):,}"),
        ("250 not recorded as sent", f"{len(rec.unrecorded):,}"),
        ("250 recipient not enrolled", f"{len(rec.unenrolled):,}"),
        ("arrived, no record / failed", f"{len(rec.untracked):,}"),
        ("unaccounted", f"{len(rec.unaccounted):,}"),
        ("wall time", f"{result.wall:.1f} s"),
        ("verdict", "every 250 accounted for: PASS" if result.ok else "PROMISE BROKEN: FAIL"),
    ]
    if result.fault_errors:
        rows.insert(6, ("faults not injected", "; ".join(result.fault_errors[:3])))
    width = max(len(k) for k, _ in rows)
    print(f"\nsoak --faults: seed {result.seed}")
    for key, value in rows:
        print(f"  {key:<{width}} | {value}")
    refused = sum(n for kind, n in result.final.items() if kind != "250")
    if refused:
        # Not a broken promise (those clients were told to retry), but the store did not
        # recover once the faults were gone: worth a look at the store files' size.
        print(f"  WARNING: {refused} mail(s) still refused {DRAIN_SECONDS:g} s after the faults")
    if not result.ok:
        print(
            f"  examples: lost {rec.lost[:3]} unrecorded {rec.unrecorded[:3]}"
            f" unenrolled {rec.unenrolled[:3]} untracked {rec.untracked[:3]}"
        )


def run_fault_soak(
    *,
    duration: float,
    sessions: int,
    per_connection: int,
    size: int,
    seed: int | None,
    tmpfs_size: str,
) -> int:
    """The ``--faults`` command: run, print, exit status 0 when nothing is unaccounted."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(relativeCreated)8.0f ms  %(message)s")
    if seed is None:
        seed = random.SystemRandom().randrange(1_000_000)
    log.info(
        "soak --faults: seed %d (rerun with --seed %d for the same fault schedule)", seed, seed
    )
    result = fault_soak(
        duration=duration,
        sessions=sessions,
        per_connection=per_connection,
        size=size,
        seed=seed,
        tmpfs_size=tmpfs_size,
    )
    report(result, duration=duration, sessions=sessions)
    return 0 if result.ok else 1
