"""The proxy's supervisor: worker processes on one listening socket, watched, replaced
when they die, replaced one at a time at a reload, stopped together.

See :mod:`replytrack.proxy.daemon` for the worker side and why there are workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from replytrack import systemd
from replytrack.config import Config
from replytrack.proxy.daemon import SHUTDOWN_GRACE, reread
from replytrack.wakeup import Wakeup

log = logging.getLogger("replytrack.proxy")

# A worker that dies sooner than this after it started is restarted after a growing pause
# (1 s, 2 s, 4 s ... at most RESTART_BACKOFF_MAX) instead of at once.
QUICK_DEATH = 10.0
RESTART_BACKOFF_MIN = 1.0
RESTART_BACKOFF_MAX = 30.0
# A worker that died this many times in a row that quickly is given up on, and so is the
# proxy (exit 1, for systemd or the admin to see) rather than restart it forever.
QUICK_DEATHS_MAX = 6
# How long a worker started at a reload may take to serve before the reload is given up.
READY_TIMEOUT = 60.0


# --- the supervisor --------------------------------------------------------------------------
@dataclasses.dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    # When the next start is due (after a worker died), and the pause after a quick death.
    due: float = 0.0
    pause: float = 0.0
    quick_deaths: int = 0


class Supervisor:
    """Start ``count`` workers on ``sockets``, replace the ones that die, stop them all on
    SIGTERM/SIGINT, replace them all with the configuration ``load`` gives on SIGHUP.
    ``run()`` returns the exit status for the command."""

    def __init__(
        self,
        config: Config,
        sockets: list[socket.socket],
        count: int,
        *,
        metrics_dir: str | None = None,
        load: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.slots = [_Slot(i) for i in range(count)]
        self.metrics_dir = metrics_dir
        self.load = load
        # Set by the signal handlers, which take no lock (see replytrack.wakeup): plain
        # flags, and a nudge that ends the main loop's sleep.
        self._stopping = False
        self._reloading = False
        self._wakeup = Wakeup()
        # Pids of workers that said they accept; workers told to retire, not yet exited.
        self._ready: set[int] = set()
        self._retiring: list[subprocess.Popen[bytes]] = []
        self._announced = False
        # Set when a worker kept dying at once: the command then exits 1.
        self.failed = False

    def _spec(self, index: int, ready_fd: int) -> bytes:
        return json.dumps(
            {
                "config": dataclasses.asdict(self.config),
                "fds": [s.fileno() for s in self.sockets],
                "index": index,
                "supervisor": os.getpid(),
                "notify": index == 0,
                "ready_fd": ready_fd,
            }
        ).encode()

    def _start(self, index: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        # Only this process speaks to systemd (NotifyAccess=main).
        env.pop("NOTIFY_SOCKET", None)
        if self.metrics_dir:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        # The worker writes one byte here once it accepts from the socket.
        ready_r, ready_w = os.pipe()
        # Started from the main thread: PR_SET_PDEATHSIG fires when the thread that started
        # the child ends, which must be the supervisor itself.
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "replytrack.proxy.daemon"],
                stdin=subprocess.PIPE,
                pass_fds=[*(s.fileno() for s in self.sockets), ready_w],
                env=env,
            )
        finally:
            os.close(ready_w)
        threading.Thread(
            target=self._watch_ready, args=(proc.pid, ready_r), name="replytrack-ready", daemon=True
        ).start()
        assert proc.stdin is not None
        try:
            proc.stdin.write(self._spec(index, ready_w))
            proc.stdin.close()
        except OSError:
            log.warning("worker %d (pid %d) did not take its settings", index, proc.pid)
        log.info("worker %d started (pid %d)", index, proc.pid)
        return proc

    def _watch_ready(self, pid: int, fd: int) -> None:
        try:
            said = os.read(fd, 1)
        except OSError:
            said = b""
        finally:
            os.close(fd)
        if said:
            self._ready.add(pid)
            self._wakeup.nudge()

    def _spawn(self, slot: _Slot) -> None:
        slot.proc, slot.started = self._start(slot.index), time.monotonic()

    def _reap(self) -> None:
        now = time.monotonic()
        for retired in list(self._retiring):
            if retired.poll() is not None:
                self._retiring.remove(retired)
                self._mark_dead(retired.pid)
                log.info(
                    "retired worker (pid %d) exited with status %s", retired.pid, retired.returncode
                )
        for slot in self.slots:
            proc = slot.proc
            if proc is None or proc.poll() is None:
                continue
            slot.proc = None
            self._mark_dead(proc.pid)
            lived = now - slot.started
            if lived < QUICK_DEATH:
                slot.quick_deaths += 1
                slot.pause = min(RESTART_BACKOFF_MAX, max(RESTART_BACKOFF_MIN, slot.pause * 2))
            else:
                slot.quick_deaths, slot.pause = 0, 0.0
            slot.due = now + slot.pause
            if slot.quick_deaths >= QUICK_DEATHS_MAX:
                log.error(
                    "worker %d (pid %d) exited with status %s, %d times in a row within %.0f s"
                    " of starting; giving up (see its errors above)",
                    slot.index,
                    proc.pid,
                    proc.returncode,
                    slot.quick_deaths,
                    QUICK_DEATH,
                )
                self.failed = True
                self._stopping = True
                continue
            log.error(
                "worker %d (pid %d) exited with status %s after %.1f s; starting another%s",
                slot.index,
                proc.pid,
                proc.returncode,
                lived,
                f" in {slot.pause:.0f} s" if slot.pause else "",
            )

    def _mark_dead(self, pid: int) -> None:
        self._ready.discard(pid)
        if self.metrics_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.metrics_dir)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stopping = True
        self._wakeup.nudge()

    def _on_hangup(self, signum: int, frame: Any) -> None:
        self._reloading = True
        self._wakeup.nudge()

    def _on_child(self, signum: int, frame: Any) -> None:
        self._wakeup.nudge()

    def run(self) -> int:
        """Supervise until SIGTERM or SIGINT, then stop the workers; returns 0, or 1 when
        a worker did not stop cleanly or kept dying as it started."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_child)
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            for slot in self.slots:
                self._spawn(slot)
            while not self._stopping:
                self._wakeup.sleep(1.0)
                self._reap()
                now = time.monotonic()
                for slot in self.slots:
                    if slot.proc is None and slot.due <= now and not self._stopping:
                        self._spawn(slot)
                serving = all(s.proc is not None and s.proc.pid in self._ready for s in self.slots)
                if serving and not self._announced:
                    self._announced = True
                    log.info("all %d workers accept mail", len(self.slots))
                    systemd.ready(f"{len(self.slots)} workers")
                if self._reloading and not self._stopping:
                    self._reloading = False
                    self._reload_workers()
            systemd.stopping()
            status = self._shutdown()
            return 1 if self.failed else status
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._wakeup.close()

    def _reload_workers(self) -> None:
        """Re-read the configuration and replace each worker by one that uses it, the new
        one accepting before the old one retires; on any failure keep what runs."""
        systemd.reloading()
        log.info("reloading the configuration")
        new = reread(self.config, self.load) if self.load is not None else None
        if new is not None:
            running, self.config = self.config, new
            for slot in self.slots:
                if not self._replace(slot):
                    # Workers that die from now on come back with what is known to work.
                    self.config = running
                    break
            else:
                log.info("reloaded: every worker uses the new configuration")
        systemd.ready(f"{len(self.slots)} workers")

    def _replace(self, slot: _Slot) -> bool:
        old = slot.proc
        if old is None:
            return True  # waiting to be restarted: it will start with the new settings
        new = self._start(slot.index)
        deadline = time.monotonic() + READY_TIMEOUT
        while new.pid not in self._ready and new.poll() is None and not self._stopping:
            if time.monotonic() > deadline:
                break
            self._wakeup.sleep(0.5)
        if new.pid not in self._ready:
            # Not by TERM alone: a stop asked for meanwhile finds the loop's flag still set.
            if new.poll() is None:
                new.send_signal(signal.SIGTERM)
                try:
                    new.wait(SHUTDOWN_GRACE)
                except subprocess.TimeoutExpired:
                    new.kill()
                    new.wait()
            self._mark_dead(new.pid)
            if not self._stopping:
                log.error(
                    "reload: worker %d did not start with the new configuration (see its"
                    " errors above); the running workers keep the earlier one",
                    slot.index,
                )
            self._wakeup.nudge()  # the main loop may have missed a SIGCHLD meanwhile
            return False
        slot.proc, slot.started = new, time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            old.send_signal(signal.SIGUSR1)
        self._retiring.append(old)
        log.info("worker %d (pid %d) retiring, replaced by pid %d", slot.index, old.pid, new.pid)
        return True

    def _shutdown(self) -> int:
        log.info(
            "stopping %d workers: no new connections, finishing open transactions",
            sum(1 for s in self.slots if s.proc is not None),
        )
        # The workers hold the listening socket too; each closes its copy on SIGTERM.
        for sock in self.sockets:
            sock.close()
        running = [s.proc for s in self.slots if s.proc is not None] + self._retiring
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_GRACE + 10
        status = 0
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
                status = 1
            else:
                # -SIGTERM: it was still starting (no handler yet), so nothing was open.
                if proc.returncode not in (0, -signal.SIGTERM):
                    log.error("worker pid %d exited with status %s", proc.pid, proc.returncode)
                    status = 1
        log.info("stopped")
        return status


def metrics_dir() -> str:
    """A fresh directory for the workers' metric files (removed by ``cleanup_metrics``)."""
    return tempfile.mkdtemp(prefix="replytrack-proxy-metrics-")


def serve_metrics(listen: str, directory: str) -> None:
    """``/metrics`` on ``listen`` with the workers' metrics summed (raises OSError)."""
    from replytrack import metrics

    metrics.serve_workers(listen, directory)


def cleanup_metrics(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
