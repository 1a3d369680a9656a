"""aiosmtpd's private internals, touched here and nowhere else.

aiosmtpd's handler hooks cover the business of a mail, but three things the proxy needs
reach below them:

- a cheaper start per connection: ``SMTP.__init__`` runs ``inspect.getmembers`` and ``dir``
  over itself and the handler on every connection to find hooks and AUTH mechanisms, though
  the answer never changes for one server. The first connection runs it as written and its
  result is kept (an :class:`InitPlan`); later connections build the protocol state and bind
  the same methods from it (``_AuthMechAttr``, ``_auth_methods``, ``_smtp_methods``,
  ``_cb_client_connected``). The plan is checked once against a stock instance, and if they
  differ the stock ``__init__`` is used for every connection;
- a cheaper parse of plain paths (``_getaddr``): aiosmtpd parses every path with the RFC
  5322 header parser and builds a ``typing.Protocol`` class on each call. A plain
  ``<local@domain>`` path is read here with the result aiosmtpd's parser gives (the tests
  compare both); every other form still goes to aiosmtpd;
- our own DATA reading (``smtp_DATA`` replaced; ``_handle_hooks``, ``_decode_data``,
  ``_reader``, ``_writer``, ``_call_handler_hook``, ``_set_post_data_state``) and our own
  session class (``_create_session``).

Checked against aiosmtpd :data:`AIOSMTPD_CHECKED`. ``tests/test_proxy_internals.py``
fingerprints the source of every name in :data:`TOUCHED` and fails when the installed
aiosmtpd differs: re-read them, adjust this module, then record the new fingerprints.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from typing import Any

from aiosmtpd.smtp import SMTP, Session, _AuthMechAttr

from replytrack.headers import PLAIN_ADDR_SPEC

log = logging.getLogger("replytrack.proxy")

AIOSMTPD_CHECKED = "1.4.6"
# What this module relies on in aiosmtpd.smtp, as "Class.attribute" (tests fingerprint them).
TOUCHED = (
    "SMTP.__init__",
    "SMTP._getaddr",
    "SMTP._create_session",
    "SMTP._call_handler_hook",
    "SMTP._cb_client_connected",
    "SMTP._set_post_data_state",
    "SMTP.smtp_DATA",
    "_AuthMechAttr",
)

# A plain path, "<local@domain>" with a dot-atom local part and a dot-separated domain of
# letters, digits and hyphens, then optional spaces and parameters; not one with a comment.
_PLAIN_PATH = re.compile(rf"[ \t]*<({PLAIN_ADDR_SPEC})>(?>[ \t]*)(?!\()")


@dataclasses.dataclass
class InitPlan:
    """What aiosmtpd's SMTP.__init__ computes that is the same for every connection."""

    shared: dict[str, Any]
    auth: list[tuple[str, str | None, Any]]  # mechanism, our method name or None, handler's
    smtp: list[tuple[str, str]]  # command, method name


@dataclasses.dataclass
class InitPlans:
    """The plan of one server's connections: None until the first connection, False when
    the running aiosmtpd does not match what the plan expects."""

    plan: InitPlan | bool | None = None


class PlannedSMTP(SMTP):
    """aiosmtpd's SMTP with the private parts above, offered to subclasses as methods."""

    def __init__(self, handler: Any, *, plans: InitPlans | None = None, **kwargs: Any) -> None:
        plan = plans.plan if plans is not None else False
        if isinstance(plan, InitPlan):
            self._init_from_plan(plan)
            return
        super().__init__(handler, **kwargs)
        if plans is not None and plan is None:
            plans.plan = self._make_plan(handler, kwargs)

    def _init_from_plan(self, plan: InitPlan) -> None:
        loop = plan.shared["loop"]
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        self.__dict__.update(plan.shared)
        self.command_size_limits.clear()
        self._auth_methods = {
            name: _AuthMechAttr(getattr(self, own) if own else theirs, own is not None)
            for name, own, theirs in plan.auth
        }
        self._smtp_methods = {name: getattr(self, attr) for name, attr in plan.smtp}

    def _make_plan(self, handler: Any, kwargs: dict[str, Any]) -> InitPlan | bool:
        # Attributes holding per-connection objects are rebuilt each time, never shared.
        bare = asyncio.StreamReaderProtocol(
            asyncio.StreamReader(loop=self.loop), client_connected_cb=lambda r, w: None
        )
        rebuilt = set(vars(bare)) | {"_auth_methods", "_smtp_methods"}
        auth = []
        for name, attr in self._auth_methods.items():
            method = attr.method
            own = getattr(method, "__name__", None) if attr.is_builtin else None
            auth.append((name, own, None if attr.is_builtin else method))
        plan = InitPlan(
            shared={k: v for k, v in vars(self).items() if k not in rebuilt},
            auth=auth,
            smtp=[(name, method.__name__) for name, method in self._smtp_methods.items()],
        )
        stock = SMTP(handler, loop=self.loop, **kwargs)
        probe = type(self).__new__(type(self))
        probe._init_from_plan(plan)
        same = set(vars(probe)) == set(vars(stock)) and set(probe._auth_methods) == set(
            stock._auth_methods
        )
        if not same:
            log.warning("aiosmtpd's SMTP changed; using its own __init__ per connection")
            return False
        return plan

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN_PATH.match(arg) if arg else None
        if plain is None:
            return SMTP._getaddr(self, arg)
        address = plain.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, arg[plain.end() :]

    def _create_session(self) -> Session:
        return self.new_session()

    def new_session(self) -> Session:
        """The session of a new connection (and after STARTTLS); subclasses make their own."""
        return Session(self.loop)

    # --- for a DATA command read by the subclass ---------------------------------------------
    def reads_raw_data(self) -> bool:
        """Whether a mail goes to a ``handle_DATA`` hook as bytes, as the subclass reads it."""
        return not self._decode_data and "DATA" in self._handle_hooks

    @property
    def reader(self) -> asyncio.StreamReader:
        """The client's stream, as aiosmtpd reads commands from it."""
        return self._reader

    @property
    def writer(self) -> asyncio.StreamWriter:
        return self._writer

    async def call_data_hook(self) -> Any:
        """The handler's ``handle_DATA`` for the envelope as it stands."""
        return await self._call_handler_hook("DATA")

    def end_data(self) -> None:
        """The state after a DATA command, answered or refused: a fresh envelope."""
        self._set_post_data_state()
