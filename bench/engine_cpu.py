#!/usr/bin/env python3
"""In-process CPU of the milter's engine per mail, without Postfix or the milter protocol.

    .venv/bin/python bench/engine_cpu.py [--mails 300] [--repeats 7] [--recorded 2000]

Times, with ``time.process_time`` (this process's CPU only, so other tenants of the machine
count less than in a wall-clock rate), what the milter does per mail on a SQLite store
holding ``--recorded`` sent mails:

- foreign: end of headers on mail naming foreign Message-IDs (looked up, not found), the
  path of most inbound mail; the adapter accepts it there.
- reply (decide): a matched reply, end of headers plus end of message without the writes
  (what ``replytrack check`` does).
- reply (process): the same with the event and the stops recorded (a new Message-ID per
  mail, so every one is a new event).
- classify: the classifier alone on the reply, the share no engine change can move.

Each figure is the minimum over ``--repeats`` runs of ``--mails`` mails, in microseconds.
Stable counts on a noisy machine: ``--only foreign|decide|process`` runs just that loop, for
``--mails`` mails, inside ``functools.reduce``, so that callgrind counts it alone:

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        .venv/bin/python bench/engine_cpu.py --only decide --mails 60

Run it with 10 and 60 mails: the difference over 50 is the instructions per mail.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

from replytrack import classify
from replytrack.config import Config
from replytrack.milter.engine import Engine, Inbound
from replytrack.store import OutboundRecipient, OutboundRecord, open_store
from replytrack.tokens import Keyring, mint

DOMAIN = "track.example.com"
REPLY_BODY = (
    b"Hi Sam,\r\n\r\nThanks for reaching out. Could we talk on Thursday afternoon? I am\r\n"
    b"free after 2pm and would like to hear more about the pricing.\r\n\r\nBest,\r\nAnn\r\n\r\n"
    b"On Mon, 1 Dec 2026 at 09:00, Sam <sales@vendor.example> wrote:\r\n"
    + b"> We help teams like yours track every reply to their outreach. Quoted text.\r\n"
    * 45
)
FOREIGN_BODY = b"Hello,\r\n" + b"Some newsletter or colleague text, nothing of ours here.\r\n" * 70


def fill(store: object, keyring: Keyring, count: int) -> str:
    """Record ``count`` sent mails; returns the Message-ID of the one the replies answer."""
    last = ""
    for n in range(count):
        last = mint(keyring, DOMAIN)
        to = f"p{n}@acme{n % 50}.example"
        store.record_outbound(  # type: ignore[attr-defined]
            OutboundRecord(
                message_id=last,
                original_message_id=None,
                campaign=f"c{n % 20}",
                step=1,
                sender="sales@vendor.example",
                from_address="sales@vendor.example",
                subject="Hello",
                size=4000,
                status="relayed",
                recipients=(
                    OutboundRecipient(to, "to", True),
                    OutboundRecipient(f"cc{n}@acme{n % 50}.example", "cc", True),
                ),
                created_at=time.time() - 3600,
            )
        )
    return last


def foreign(n: int) -> Inbound:
    headers = [
        ("From", "Someone <someone@else.example>"),
        ("To", "sales@vendor.example"),
        ("Subject", "Re: lunch"),
        ("Date", formatdate()),
        ("Message-ID", f"<f{n}@else.example>"),
        ("In-Reply-To", "<abc123@mail.else.example>"),
        ("References", "<x1@mail.else.example> <x2@mail.else.example> <abc123@mail.else.example>"),
        ("Content-Type", "text/plain; charset=utf-8"),
    ]
    return Inbound(envelope_from="someone@else.example", headers=headers, body=None)


def reply(n: int, recorded: str, recipient: str) -> Inbound:
    headers = [
        ("From", f"Ann <{recipient}>"),
        ("To", "Sam <sales@vendor.example>"),
        ("Subject", "Re: Hello"),
        ("Date", formatdate()),
        ("Message-ID", f"<r{n}-{time.time_ns()}@acme.example>"),
        ("In-Reply-To", f"<{recorded}>"),
        ("References", f"<{recorded}>"),
        ("Content-Type", "text/plain; charset=utf-8"),
    ]
    return Inbound(envelope_from=recipient, headers=headers, body=REPLY_BODY)


def best(run: Callable[[int], object], mails: int, repeats: int) -> float:
    """Minimum CPU microseconds per mail over ``repeats`` runs."""
    results = []
    for r in range(repeats):
        start = time.process_time()
        for n in range(mails):
            run(r * mails + n)
        results.append((time.process_time() - start) / mails * 1e6)
    return min(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mails", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--recorded", type=int, default=2000)
    parser.add_argument("--only", choices=("foreign", "decide", "process"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "replytrack.db"
        store = open_store(str(db), create=True)
        keyring = Keyring.generate()
        recorded = fill(store, keyring, args.recorded)
        recipient = f"p{args.recorded - 1}@acme{(args.recorded - 1) % 50}.example"
        engine = Engine(Config(domain=DOMAIN), keyring, store)

        def in_session(func: Callable[[], object]) -> object:
            with store.session(deadline=time.monotonic() + 3.0):
                return func()

        def run_foreign(n: int) -> object:
            msg = foreign(n)
            return in_session(lambda: engine.screen(msg))

        def run_decide(n: int) -> object:
            msg = reply(n, recorded, recipient)
            return in_session(lambda: engine.decide(msg, engine.screen(msg)))

        def run_process(n: int) -> object:
            msg = reply(n, recorded, recipient)
            return in_session(lambda: engine.process(msg))

        def run_classify(n: int) -> object:
            msg = reply(n, recorded, recipient)
            return classify.classify(msg.headers, msg.body, envelope_from=recipient)

        # Warm up (dateparser's language data, SQLite's page cache).
        for n in range(50):
            run_decide(n)
            run_foreign(n)
        if args.only:
            run = {"foreign": run_foreign, "decide": run_decide, "process": run_process}
            functools.reduce(lambda _, n: run[args.only](n), range(args.mails), None)
            store.close_all()
            return
        rows = [
            ("foreign (end of headers)", best(run_foreign, args.mails, args.repeats)),
            ("reply (decide, no writes)", best(run_decide, args.mails, args.repeats)),
            ("reply (process, recorded)", best(run_process, args.mails, args.repeats)),
            ("classify alone (reply)", best(run_classify, args.mails, args.repeats)),
        ]
        store.close_all()
    width = max(len(name) for name, _ in rows)
    for name, micros in rows:
        print(f"{name:<{width}}  {micros:8.1f} us CPU a mail")


if __name__ == "__main__":
    main()
