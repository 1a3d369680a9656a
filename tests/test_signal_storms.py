"""Daemons stay responsive and stop cleanly through a storm of signals.

Python runs a signal handler in the main thread between any two bytecodes, also while that
thread holds a lock; a handler that took a lock its main loop holds (a threading.Event's)
hung the process for good, deaf to SIGTERM. A signal pending at nearly every bytecode makes
hitting such a window near certain, not rare. :mod:`replytrack.wakeup` is what the handlers
use instead; it is tested here directly too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest

from replytrack.store.sqlite import SQLiteStore
from replytrack.wakeup import Wakeup
from tests.support.env import clean_environ
from tests.support.milter_process import MilterProcess
from tests.test_notify import (
    SECRET,
    Receiver,
    _reply,
    _wait,
    receiver,  # noqa: F401 (fixture)
)

pytestmark = pytest.mark.timeout(180)

# Enough that a handler taking a lock the main loop holds hangs the process nearly every
# run, few enough to send in about a second.
STORM = 200_000
# A hung process is given this long to stop before the test says it hung; then SIGABRT
# makes it print where each of its threads is.
STOP_BOUND = 60
DUMP_ON_ABORT = {"PYTHONFAULTHANDLER": "1"}


# --- the primitive ---------------------------------------------------------------------------
def test_a_nudge_before_the_sleep_is_not_lost() -> None:
    with Wakeup() as wakeup:
        wakeup.nudge()
        assert wakeup.sleep(None) is True
        # Taken: the next sleep waits (here: not at all) and says nobody nudged.
        assert wakeup.sleep(0) is False


def test_a_million_nudges_neither_block_nor_linger() -> None:
    with Wakeup() as wakeup:
        for _ in range(1_000_000):
            wakeup.nudge()
        assert wakeup.sleep(None) is True
        assert wakeup.sleep(0) is False


def test_a_signal_handler_nudges_the_main_thread_asleep() -> None:
    # The real use: the handler runs in the very thread that sleeps.
    asked: list[int] = []
    with Wakeup() as wakeup:

        def on_signal(signum: int, frame: FrameType | None) -> None:
            asked.append(signum)
            wakeup.nudge()

        previous = signal.signal(signal.SIGUSR1, on_signal)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            while not asked:
                wakeup.sleep(None)
        finally:
            signal.signal(signal.SIGUSR1, previous)
    assert asked == [signal.SIGUSR1]


def test_a_nudge_after_close_does_nothing() -> None:
    wakeup = Wakeup()
    wakeup.close()
    wakeup.nudge()  # a handler that fires while the daemon is on its way out


# --- the milter ------------------------------------------------------------------------------
class MilterRun(MilterProcess):
    """The milter, its process ready to be dumped (faulthandler) if it hangs."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, env=DUMP_ON_ABORT)

    def wait_for(self, line: str) -> None:
        """Until ``line`` is logged; an AssertionError (with the log) if it ends or hangs."""
        deadline = time.monotonic() + STOP_BOUND
        while line not in self.text() and self.proc.poll() is None:
            if time.monotonic() > deadline:
                abort(self.proc)
                break
            time.sleep(0.05)
        assert line in self.text(), f"not logged: {line!r}, exit {self.proc.poll()}\n{self.text()}"

    def negotiates(self) -> bool:
        """Whether libmilter answers an MTA's option negotiation (SMFIC_OPTNEG) in kind."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as conn:
            # Protocol version 6, every action, every protocol step offered.
            conn.sendall(struct.pack(">IcIII", 13, b"O", 6, 0x1FF, 0x1FFFFF))
            head = b""
            while len(head) < 5:
                chunk = conn.recv(5 - len(head))
                if not chunk:
                    return False
                head += chunk
        return head[4:5] == b"O"


@pytest.fixture
def milter(tmp_path: Path) -> Iterator[MilterRun]:
    running = MilterRun(tmp_path)
    yield running
    if running.proc.poll() is None:
        running.proc.kill()
        running.proc.wait(10)


def test_milter_reloads_through_a_storm_of_sighup_then_stops_on_sigterm(
    milter: MilterRun,
) -> None:
    milter.wait_for("milter listening")
    _wait(lambda: milter.accepts())
    assert milter.negotiates(), milter.text()
    # An admin's edit, then a reload asked for again and again (a config-management run,
    # a loop in a script): the edit takes effect, the milter serves on.
    milter.config.write_text(milter.base + 'stop_scope = "domain"\n')
    # To the main thread, whose handlers are under test. Sent to the process, some would be
    # taken by libmilter's own signal thread (in sigwait for SIGHUP, SIGTERM and SIGINT),
    # which stops the milter: a race of its own, not what this test is about.
    storm(milter.proc.pid, signal.SIGHUP, to_main_thread=True)
    milter.wait_for("changed: milter_stop_scope")
    assert milter.proc.poll() is None, milter.text()
    assert milter.negotiates(), milter.text()

    milter.proc.send_signal(signal.SIGTERM)
    status = stopped(milter.proc, milter.text)
    assert status == 0, milter.text()
    assert "milter stopped" in milter.text()
    assert "Traceback" not in milter.text()


def test_a_stop_libmilter_makes_on_its_own_ends_the_milter_with_an_error(
    milter: MilterRun,
) -> None:
    """The kernel may hand a SIGHUP sent to the process to libmilter's own signal thread
    (in sigwait), which then ends libmilter's loop. The milter must not then exit 0 as if
    stopped on purpose: its unit restarts it on failure only, and until it is back inbound
    mail goes untracked."""
    milter.wait_for("milter listening")
    _wait(lambda: milter.accepts())
    waiting = _threads_in_sigwait(milter.proc.pid)
    assert len(waiting) == 1, f"libmilter's signal thread not found: {waiting}"
    if _libc.tgkill(milter.proc.pid, waiting[0], signal.SIGHUP) != 0:
        raise OSError(ctypes.get_errno(), "tgkill")
    status = stopped(milter.proc, milter.text)
    assert status != 0, milter.text()
    assert "libmilter stopped without being asked to" in milter.text()
    assert "Traceback" not in milter.text()


def _threads_in_sigwait(pid: int) -> list[int]:
    """The threads of ``pid`` blocked in rt_sigtimedwait (sigwait), from /proc: x86-64's
    syscall 128, aarch64's 137."""
    number = {"x86_64": 128, "aarch64": 137}.get(os.uname().machine)
    if number is None:
        pytest.skip(f"syscall number of rt_sigtimedwait unknown on {os.uname().machine}")
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            if (task / "syscall").read_text().split()[0] == str(number):
                found.append(int(task.name))
    return found


# --- replytrack notify -----------------------------------------------------------------------
def test_notify_delivers_then_stops_through_a_storm_of_stop_signals(
    tmp_path: Path,
    store: SQLiteStore,
    receiver: Receiver,  # noqa: F811 (the fixture imported above)
) -> None:
    env = clean_environ(
        **DUMP_ON_ABORT,
        REPLYTRACK_DB=str(tmp_path / "replytrack.db"),
        REPLYTRACK_DOMAIN="mail.example.com",
        REPLYTRACK_NOTIFY_WEBHOOKS=receiver.url,
        REPLYTRACK_NOTIFY_SECRET=SECRET,
    )
    cmd = [sys.executable, "-m", "replytrack", "notify", "--poll", "0.05"]
    errors = tmp_path / "notify.log"
    with open(errors, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stderr=log, cwd=tmp_path, start_new_session=True)
    try:
        event_id = _reply(store)
        _wait(lambda: receiver.ok_ids() == [event_id] or proc.poll() is not None)
        assert receiver.ok_ids() == [event_id], errors.read_text()
        # SIGTERM and SIGINT again and again (systemd, then an impatient admin's Ctrl-C):
        # the first one stops the sender; the rest find it on its way out.
        storm(proc.pid, signal.SIGTERM, signal.SIGINT)
        status = stopped(proc, errors.read_text)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = errors.read_text()
    assert status == 0, text
    assert "notify sender" in text and "stopped" in text
    assert "Traceback" not in text
    assert store.outbox_counts()["delivered"] == 1


# --- helpers ---------------------------------------------------------------------------------
def storm(pid: int, *signums: signal.Signals, to_main_thread: bool = False) -> None:
    """Send ``STORM`` signals, taking turns among ``signums``, to the process or to its main
    thread alone; the process may end meanwhile."""
    send = _to_main_thread if to_main_thread else os.kill
    with contextlib.suppress(ProcessLookupError):
        for n in range(STORM):
            send(pid, signums[n % len(signums)])


_libc = ctypes.CDLL(None, use_errno=True)


def _to_main_thread(pid: int, signum: int) -> None:
    # tgkill(2) (no wrapper in os): the main thread's id is the process id.
    if _libc.tgkill(pid, pid, signum) != 0:
        code = ctypes.get_errno()
        if code == errno.ESRCH:
            raise ProcessLookupError(code, os.strerror(code))
        raise OSError(code, os.strerror(code))


def stopped(proc: subprocess.Popen[bytes], text: Callable[[], str]) -> int:
    """The exit status; an AssertionError (with the log and where it hung) if it hung."""
    try:
        return proc.wait(STOP_BOUND)
    except subprocess.TimeoutExpired:
        abort(proc)
        raise AssertionError(f"did not stop in {STOP_BOUND} s, hung:\n{text()}") from None


def abort(proc: subprocess.Popen[bytes]) -> None:
    """End a hung process so that it says (on stderr) where each of its threads was."""
    proc.send_signal(signal.SIGABRT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
