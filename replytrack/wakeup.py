"""Wake a sleeping loop from a signal handler or another thread, taking no lock.

Python runs a signal handler in the main thread between any two bytecodes, also while that
thread holds a lock. A handler that takes a lock (``threading.Event.set()``, a Condition, a
Queue, logging) waits forever when the main thread was inside that lock's critical section,
as it is for a moment in every ``Event.wait()`` and ``Event.clear()``: the process hangs,
deaf to the very signal it was handling. So a handler sets a plain flag and calls
:meth:`Wakeup.nudge`, which only writes one byte to a non-blocking socket pair; the loop
sleeps on the other end with :meth:`Wakeup.sleep`.

Not ``signal.set_wakeup_fd``: there is one such fd per process, only the main thread may set
it, and asyncio holds it in the proxy's workers, where a webhook sender runs in a thread too.
Nudges also come from other threads (a worker that says it accepts, libmilter's thread
ending, ``Sender.stop()`` from a daemon's main thread), and sleepers run in threads (the
webhook sender in the milter and the proxy). One pair per sleeper has none of those limits.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
from types import TracebackType


class Wakeup:
    """A sleep that ``nudge()`` ends early; ``nudge()`` is safe in a signal handler."""

    def __init__(self) -> None:
        self._waker, self._waiter = socket.socketpair()
        for end in (self._waker, self._waiter):
            end.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._waiter, selectors.EVENT_READ)
        # Set by the first nudge, cleared by sleep() once it took every byte: the nudges
        # between them have nothing to add.
        self._pending = False

    def nudge(self) -> None:
        """End the current or the next ``sleep``; never blocks, never raises."""
        # As short as can be, no call into Python code: in a storm of signals Python runs
        # the next handler at the start of any function called, the handler's own included,
        # nested in the one before; a handler slower than the storm nests until
        # RecursionError. Mostly a wake-up is on its way already and this only reads a flag.
        if self._pending:
            return
        self._pending = True
        try:  # noqa: SIM105 (contextlib.suppress is three calls into Python code)
            self._waker.send(b"\0")
        except OSError:
            pass  # a full buffer holds a wake-up already; a closed one has nobody to wake

    def sleep(self, timeout: float | None) -> bool:
        """Wait until nudged or ``timeout`` seconds passed (None: no limit); True if nudged.

        Every nudge pending is taken: one that comes after this returns ends the next call
        at once, so none is lost and none is counted twice. The caller then looks at its
        flags to see why it was woken.
        """
        nudged = bool(self._selector.select(timeout))
        with contextlib.suppress(BlockingIOError):
            while self._waiter.recv(4096):
                pass
        # After the bytes are taken, not before: a nudge in between, finding the flag still
        # set, sends nothing, and the caller, looking at its flags after this returns, sees
        # what that nudge was for all the same.
        self._pending = False
        return nudged

    def close(self) -> None:
        """Free the pair; a later ``nudge`` does nothing, a later ``sleep`` raises."""
        self._selector.close()
        self._waker.close()
        self._waiter.close()

    def __enter__(self) -> Wakeup:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
