"""Postfix's smtp-source as the load generator of the benchmarks."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def run_source(
    port: int,
    mails: int,
    sessions: int,
    msg: Path,
    *,
    sender: str,
    recipient: str,
) -> float:
    """Send ``mails`` copies of ``msg`` over ``sessions`` parallel sessions (a new connection
    per mail) to 127.0.0.1:port; returns wall seconds. Any non-2xx reply ends the bench.

    smtp-source sends each line of ``msg`` with its own CR LF: the file must use LF.
    """
    start = time.monotonic()
    result = subprocess.run(
        [
            "smtp-source",
            "-s",
            str(sessions),
            "-m",
            str(mails),
            "-F",
            str(msg),
            "-f",
            sender,
            "-t",
            recipient,
            "-M",
            "client.bench.example",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"smtp-source failed on port {port}: {result.stdout}{result.stderr}")
    return time.monotonic() - start
