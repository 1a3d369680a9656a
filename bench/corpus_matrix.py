"""Run the classifier over the real-mail corpus and print a confusion matrix.

Usage: .venv/bin/python bench/corpus_matrix.py [CORPUS_DIR]   (default ../shared/corpus)

Rows are corpus categories (human_reply, auto_reply, bounce, mdn, other), columns are the
classifier's kinds. Below the matrix: misses against the per-file expectation, the count of
automated mail classified human, the share of human replies kept human, and the share of
out-of-office notices that state a return date from which one was read. Last, CPU time
per mail: the first run of each (cold: dateparser's start-up lands on the first
out-of-office notice) and, per category, the median, p95 and max of a second, warm run,
which is what a long-lived milter spends.

Expectations: a category's files are expected to get its kind; the few exceptions below are
taken from the notes in the corpus INVENTORY.md (a human-forwarded bounce, the `other`
category's mix of reports, newsletters and forwards), never from what the classifier says.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replytrack.classify import KINDS, _mime, classify_message, needs_body

AUTOMATED = frozenset({"auto_reply", "bounce", "receipt", "feedback"})
ANY = frozenset(KINDS)

CATEGORY_EXPECTS: dict[str, frozenset[str]] = {
    "human_reply": frozenset({"human"}),
    "auto_reply": frozenset({"auto_reply"}),
    "bounce": frozenset({"bounce"}),
    "mdn": frozenset({"receipt"}),
}

# Per-file expectations where INVENTORY.md's note says the file is not what its
# category suggests, and for every file of `other` (a mixed bag by design).
FILE_EXPECTS: dict[str, tuple[frozenset[str], str]] = {
    # INVENTORY: "a HUMAN-forwarded sendmail bounce (Fwd:, References only)".
    "sisimai__lhost-sendmail-14.eml": (frozenset({"human", "bounce"}), "human-forwarded bounce"),
    # other: feedback-loop / ARF / DMARC / TLS reports.
    **{
        name: (frozenset({"feedback"}), "report")
        for name in (
            "sisimai__arf-01.eml",
            "sisimai__arf-11.eml",
            "sisimai__arf-14.eml",
            "sisimai__arf-16.eml",
            "sisimai__arf-18.eml",
            "sisimai__arf-20.eml",
            "phpbouncehandler__fbl-aol.eml",
            "phpbouncehandler__fbl-comcast.eml",
            "phpbouncehandler__fbl-hotmail.eml",
            "phpbouncehandler__fbl-yahoo.eml",
            "phpbouncehandler__arf4.eml",
            "phpbouncehandler__arf5.eml",
            "chatmail__tlsrpt.eml",
            "flanker__complaints_aol.eml",
            "flanker__complaints_yahoo.eml",
            "stalwart__arf_004.eml",
            "stalwart__arf_005.eml",
            "stalwart__dmarc-feedback_100.eml",
            "stalwart__dmarc-feedback_102.eml",
        )
    },
    # other: mail people wrote that is no reply (forwards, new mail, sisimai's "not a bounce").
    "sisimai__not_is-not-bounce-01.eml": (frozenset({"human"}), "person's mail, not a bounce"),
    "sisimai__not_is-not-bounce-02.eml": (frozenset({"human"}), "original as attachment"),
    "flanker__multi-received-headers.eml": (frozenset({"human"}), "Gmail forward with IRT/REF"),
    "webklex__issue-275-2.eml": (frozenset({"human"}), "new Outlook message with Thread-Index"),
    "rt__nested-rfc-822.eml": (frozenset({"human"}), "Gnus forward of a list reply"),
    # other: automated, but no single right kind (a mailbox-full notice in prose).
    "sisimai__not_rb-issue-368-bug.eml": (AUTOMATED, "automatic bounce notification"),
    # other: newsletters and ticket notifications: any verdict is acceptable
    # (human+unmatched becomes "unrelated"; automated kinds never stop anything).
    "chatmail__list-from.eml": (ANY, "newsletter"),
    "chatmail__mailinglist_dhl.eml": (ANY, "notification"),
    "chatmail__mailinglist_xt_local_microsoft.eml": (ANY, "newsletter"),
    "notmuch__threading_ghost-root_1532672447.R6968667928580738175.len_2_S.eml": (
        ANY,
        "RT status notification",
    ),
}

# Out-of-office notices in the corpus that state a return date (read from INVENTORY
# subjects and the mails' text by a person, not by the classifier).
OOO_WITH_DATE: dict[str, str] = {
    "sisimai__rfc3834-01.eml": "Away until May 5",
    "bounceparser__warning-6.eml": "returning 05/01/2010",
    "alaveteli__track-response-abcmail-oof.eml": "returning 03/01/2012",
    "alaveteli__track-response-messageclass-oof.eml": "until Tuesday, January 20",
}


def _headers_of(raw: bytes) -> list[tuple[str, str]]:
    """The header list a milter would see for a stored message."""
    data = _mime.normalise_newlines(raw)
    if data.startswith(b"From "):
        data = data.split(b"\n", 1)[-1]
    head = data.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    headers, _ = _mime.split_header_block(head + "\n\n")
    return headers


def expectation(category: str, name: str) -> frozenset[str]:
    if name in FILE_EXPECTS:
        return FILE_EXPECTS[name][0]
    return CATEGORY_EXPECTS.get(category, ANY)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
    parser.add_argument("corpus", nargs="?", type=Path, default=default)
    parser.add_argument("-v", "--verbose", action="store_true", help="list every file's verdict")
    args = parser.parse_args(argv)
    corpus: Path = args.corpus
    if not corpus.is_dir():
        print(f"corpus directory not found: {corpus}", file=sys.stderr)
        return 2

    matrix: dict[str, Counter[str]] = defaultdict(Counter)
    misses: list[str] = []
    false_human = 0
    automated_total = 0
    human_total = human_kept = 0
    ooo_total = ooo_read = 0
    timings: list[float] = []  # first (cold) classification of each mail
    warm: dict[str, list[float]] = defaultdict(list)  # second classification, per category
    body_wanted: Counter[str] = Counter()
    body_total: Counter[str] = Counter()
    categories = [d for d in sorted(corpus.iterdir()) if d.is_dir()]
    for category_dir in categories:
        category = category_dir.name
        for path in sorted(category_dir.glob("*.eml")):
            raw = path.read_bytes()
            start = time.process_time()
            verdict = classify_message(raw)
            timings.append(time.process_time() - start)
            # The milter is a long-lived process: the second run, with dateparser's
            # one-off import and caches already paid, is what each mail costs there.
            start = time.process_time()
            classify_message(raw)
            warm[category].append(time.process_time() - start)
            matrix[category][verdict.kind] += 1
            group = "human" if category == "human_reply" else "automated"
            body_total[group] += 1
            body_wanted[group] += needs_body(_headers_of(raw))
            expected = expectation(category, path.name)
            if args.verbose:
                print(
                    f"{category:12} {verdict.kind:10} {verdict.subtype or '-':20} "
                    f"{verdict.return_date or '-'!s:10} {path.name}  {' '.join(verdict.evidence)}"
                )
            if verdict.kind not in expected:
                misses.append(
                    f"  {category}/{path.name}: got {verdict.kind} "
                    f"(expected {'/'.join(sorted(expected))}) {' '.join(verdict.evidence)}"
                )
            if "human" not in expected:
                automated_total += 1
                if verdict.kind == "human":
                    false_human += 1
            if category == "human_reply":
                human_total += 1
                human_kept += verdict.kind == "human"
            if path.name in OOO_WITH_DATE:
                ooo_total += 1
                ooo_read += verdict.return_date is not None

    width = max(len(c) for c in matrix) + 2
    print("confusion matrix (rows: corpus category, columns: classifier kind)")
    print(" " * width + "".join(f"{k:>11}" for k in KINDS) + f"{'total':>8}")
    for category in sorted(matrix):
        row = matrix[category]
        cells = "".join(f"{row.get(k, 0):>11}" for k in KINDS)
        print(f"{category:<{width}}{cells}{sum(row.values()):>8}")
    print()
    print(f"misses against the per-file expectation: {len(misses)}")
    for line in misses:
        print(line)
    print()
    kept = 100.0 * human_kept / human_total if human_total else 0.0
    ooo = 100.0 * ooo_read / ooo_total if ooo_total else 0.0
    print(f"automated mail classified human: {false_human} of {automated_total} (goal 0)")
    print(f"human replies kept human: {human_kept}/{human_total} = {kept:.1f}% (goal >= 99%)")
    print(f"OOO return date read: {ooo_read}/{ooo_total} = {ooo:.0f}% (goal >= 80%)")
    print(
        "needs_body() true (milter reads the body even when unmatched): "
        f"other mail {body_wanted['automated']}/{body_total['automated']}, "
        f"human replies {body_wanted['human']}/{body_total['human']}"
    )
    if timings:
        timings.sort()
        print(
            f"CPU per mail, first run: median {1000 * timings[len(timings) // 2]:.2f} ms, "
            f"max {1000 * timings[-1]:.1f} ms (includes dateparser's one-off start-up)"
        )
    print("CPU per mail, warm (ms):")
    for category in sorted(warm):
        print(f"  {category:<{width}}{_spread(warm[category])}")
    print(f"  {'all':<{width}}{_spread([t for ts in warm.values() for t in ts])}")
    return 0


def _spread(seconds: list[float]) -> str:
    """Median, p95 and max of CPU times, in milliseconds."""
    ordered = sorted(seconds)
    if not ordered:
        return "-"
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (
        f"n={len(ordered):<4} median {1000 * ordered[len(ordered) // 2]:.3f}  "
        f"p95 {1000 * p95:.3f}  max {1000 * ordered[-1]:.3f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
