"""What stamping needs from the store before a mail is recorded.

- A client's Message-ID kept by ``proxy.stamp`` that is recorded already (the client sends
  the mail again after a 4xx, or uses one ID twice) gets ours after all: one Message-ID
  names one record, and the client's stays in ``X-Original-Message-ID``, so replies to it
  still match.
- A threaded follow-up (``proxy.threading``) gets its thread's headers.

Both are store reads, made through the handler's ``store_call`` (on the event loop when the
store need not wait), and only for the mails that need them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from replytrack.config import Config
from replytrack.proxy import threading
from replytrack.proxy.stamp import STAMP_ALWAYS, Stamped
from replytrack.store import Store
from replytrack.tokens import Keyring, mint

StoreCall = Callable[..., Awaitable[Any]]


async def prepare(
    stamped: Stamped,
    recipients: Sequence[str],
    config: Config,
    store: Store,
    keyring: Keyring,
    store_call: StoreCall,
    stamp: Callable[[bytes | bytearray, str, str], Awaitable[Stamped]],
    *,
    now: float,
) -> Stamped:
    """``stamped`` as it is to be recorded and relayed; store errors propagate.

    ``store_call(func, *args)`` makes a store call; ``stamp(data, message_id, mode)``
    stamps again (the handler's).
    """
    if stamped.kept_client_id and await store_call(store.find_sent, [stamped.message_id]):
        ours = mint(keyring, config.domain)
        stamped = await stamp(stamped.source, ours, STAMP_ALWAYS)
    if not threading.wanted(stamped, config.proxy_thread_followups):
        return stamped
    recipient = threading.thread_recipient(stamped, recipients)
    if stamped.campaign is None or recipient is None:
        return stamped
    history = await store_call(threading.look_up, store, stamped.campaign, recipient)
    return threading.follow_up(stamped, history, recipient, now=now)
