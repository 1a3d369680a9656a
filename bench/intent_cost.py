"""What labelling a reply's intent adds to classifying it.

Usage: .venv/bin/python bench/intent_cost.py [--repeat N] [--mode both|on|off] [--mail I]

For three matched-reply shapes (milter_bench.py --replies' 4 KB reply; 90 characters above a
31 KB quoted thread; a short reply whose new text ends in a list footer), prints the best of
five timeit runs of ``classify()`` with intent labelling on and off, and of ``label_intent``
alone. ``--mode on|off`` runs only that side ``--repeat`` times (``--mail I``: only the I-th
mail, 0 being milter_bench.py --replies' and unsubscribe_cost.py's reply), for callgrind:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.on .venv/bin/python \
        bench/intent_cost.py --mode on --repeat 200
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import replytrack.classify as classifier
from replytrack.classify import _mime
from replytrack.classify.detectors import Context
from replytrack.classify.intent import Intent, label_intent
from replytrack.classify.new_text import new_text

HEADERS = [
    ("From", "Prospect <p1@prospect1.example>"),
    ("To", "sales@bench.example"),
    ("Subject", "Re: our meeting"),
    ("Date", "Wed, 25 Nov 2026 10:00:00 +0000"),
    ("Message-ID", "<abc@prospect1.example>"),
    ("In-Reply-To", "<tok@bench.example>"),
    ("MIME-Version", "1.0"),
    ("Content-Type", "text/plain; charset=utf-8"),
]
_LINE = "Sounds good, let us talk on Tuesday about the proposal and the pricing.\n"
_QUOTED = "> We would like to show you how our product helps teams like yours. Unsubscribe here.\n"
MAILS = {
    "4 KB reply, no quote (milter_bench --replies)": (_LINE * 56).encode(),
    "90 chars above a 31 KB quoted thread": (
        "Sounds good, let's talk Tuesday at 10. Send me the pricing before, please. Thanks, P\n\n"
        "On Tue, 24 Nov 2026 at 09:00, Sales <sales@bench.example> wrote:\n" + _QUOTED * 360
    ).encode(),
    "short reply, list footer below '-- '": (
        b"Not interested, thanks.\n\n-- \nP. Prospect\n"
        b'To unsubscribe from this list: send the line "unsubscribe x" in the body.\n'
    ),
}


def _no_intent(ctx: Context) -> Intent | None:
    return None


def _best(call: Callable[[], object], number: int) -> float:
    """Best of five timeit runs, in microseconds per call."""
    return 1e6 * min(timeit.repeat(call, number=number, repeat=5)) / number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--mode", choices=("both", "on", "off"), default="both")
    parser.add_argument("--mail", type=int, help="only this mail (0, 1, 2), with --mode")
    args = parser.parse_args(argv)
    # Intent labelling off: the classifier's hook replaced by one that labels nothing.
    with_intent = classifier._intent
    if args.mode != "both":
        if args.mode == "off":
            classifier._intent = _no_intent
        bodies = list(MAILS.values())
        for body in bodies if args.mail is None else [bodies[args.mail]]:
            for _ in range(args.repeat):
                classifier.classify(HEADERS, body)
        return 0
    for name, body in MAILS.items():
        text = new_text(_mime.view(HEADERS, body).own_text())
        verdict = classifier.classify(HEADERS, body)
        assert verdict.intent is not None

        def run(body: bytes = body) -> object:
            return classifier.classify(HEADERS, body)

        def alone(text: str = text) -> object:
            return label_intent(text)

        classifier._intent = with_intent
        on = _best(run, args.repeat)
        classifier._intent = _no_intent
        off = _best(run, args.repeat)
        classifier._intent = with_intent
        print(
            f"{name}: classify {off:.0f} us, with intent {on:.0f} us (+{on - off:.0f} us); "
            f"label_intent alone {_best(alone, args.repeat):.0f} us -> {verdict.intent.intent}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
