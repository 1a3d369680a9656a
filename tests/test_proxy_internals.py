"""aiosmtpd's private internals the proxy relies on (replytrack/proxy/internals.py) are the
ones it was checked against: this fails when an aiosmtpd upgrade changes any of them."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from typing import Any

import aiosmtpd
import aiosmtpd.smtp
import pytest

from replytrack.proxy.internals import AIOSMTPD_CHECKED, TOUCHED, InitPlan, InitPlans
from replytrack.proxy.protocol import NullSenderSMTP

# sha256 of the source of each name in TOUCHED, in aiosmtpd AIOSMTPD_CHECKED (first 16 hex).
FINGERPRINTS = {
    "SMTP.__init__": "8a9ca80f23ad9bf2",
    "SMTP._getaddr": "0aeb21c56ac1260e",
    "SMTP._create_session": "22b243e82ff1c7a4",
    "SMTP._call_handler_hook": "6ff23a6634ea0307",
    "SMTP._cb_client_connected": "a73e95bb7f362ab9",
    "SMTP._set_post_data_state": "1dc8a8abca2a8164",
    "SMTP.smtp_DATA": "3a33f30d3fd6d02f",
    "_AuthMechAttr": "f0918a59ff9135dd",
}


def _source(name: str) -> str:
    obj: Any = aiosmtpd.smtp
    for part in name.split("."):
        obj = getattr(obj, part)
    return inspect.getsource(obj)


def test_every_touched_name_is_fingerprinted() -> None:
    assert set(FINGERPRINTS) == set(TOUCHED)


@pytest.mark.parametrize("name", TOUCHED)
def test_aiosmtpd_internal_is_unchanged(name: str) -> None:
    digest = hashlib.sha256(_source(name).encode()).hexdigest()[:16]
    assert digest == FINGERPRINTS[name], (
        f"aiosmtpd {aiosmtpd.__version__} changed {name} (checked against"
        f" {AIOSMTPD_CHECKED}): re-read it against replytrack/proxy/internals.py, adjust"
        " that module, then record the new fingerprint and version"
    )


class _Handler:
    async def handle_DATA(self, *args: object) -> str:
        return "250 OK"


def test_a_planned_connection_has_what_a_stock_one_has() -> None:
    async def run() -> None:
        plans = InitPlans()
        first = NullSenderSMTP(_Handler(), plans=plans, hostname="proxy.example")
        assert isinstance(plans.plan, InitPlan)
        second = NullSenderSMTP(_Handler(), plans=plans, hostname="proxy.example")
        stock = aiosmtpd.smtp.SMTP(_Handler(), hostname="proxy.example")
        assert set(vars(second)) == set(vars(stock)) == set(vars(first))
        assert set(second._auth_methods) == set(stock._auth_methods)
        assert second._smtp_methods.keys() == stock._smtp_methods.keys()
        # Bound to the new connection, not the first.
        assert second._smtp_methods["DATA"].__self__ is second
        assert second.reads_raw_data()

    asyncio.run(run())
