"""A proxy on an event loop of its own in a thread: for tests, benchmarks and embedding.

It serves as ``replytrack proxy`` does (``ProxyServer``, on the loop ``proxy.event_loop`` asks
for) but is started and stopped by a plain function call from any thread.
"""

from __future__ import annotations

import asyncio
import threading

from replytrack.config import Config
from replytrack.proxy.daemon import loop_factory
from replytrack.proxy.server import ProxyServer
from replytrack.store import Store
from replytrack.tokens import Keyring


async def cancel_other_tasks() -> None:
    """Cancel every task of the running loop but this one, and wait for them to end."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


class ThreadedProxy:
    """A proxy on its own event loop in a thread (tests, benchmarks, embedding)."""

    def __init__(self, config: Config, *, store: Store, keyring: Keyring) -> None:
        self.server = ProxyServer(config, store=store, keyring=keyring)
        # The loop the daemon would run (uvloop unless proxy.event_loop says asyncio).
        self.loop = loop_factory(config)()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server.port

    def start(self) -> ThreadedProxy:
        """Start the loop and the server; returns self."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=10)
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop the server and the loop (a second call does nothing)."""
        if self.loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop)
        future.result(timeout=grace + 10)
        # Sessions of clients that never hung up end here, not as "Task was destroyed".
        asyncio.run_coroutine_threadsafe(cancel_other_tasks(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> ThreadedProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
