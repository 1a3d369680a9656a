"""Installation steps for tests. ``replytrack init``: only init creates a store and a key
file, so a test that starts a daemon or runs a command on a fresh directory calls it first,
as a user would. ``immutable``: a store on a filesystem that refuses every write."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest


def replytrack_init(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> str:
    """Run ``replytrack init [ARGS]`` as a process with the environment (REPLYTRACK_DB,
    REPLYTRACK_SECRET_FILE...) the daemon under test gets, so both name the same files.
    Returns what init printed."""
    result = subprocess.run(
        [sys.executable, "-m", "replytrack", "init", *args],
        env=dict(os.environ if env is None else env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``chattr +i`` on ``paths`` for the block (a store whose filesystem refuses writes even
    to root). Where chattr is missing or the filesystem has no such flag the test skips with
    the reason, except under CI (``CI=true``), where it fails: CI must run it."""
    if shutil.which("chattr") is None:
        _cannot("chattr is not installed (e2fsprogs)")
    done: list[Path] = []
    try:
        for path in paths:
            result = subprocess.run(
                ["chattr", "+i", str(path)], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                _cannot(f"chattr +i {path}: {result.stderr.strip() or result.returncode}")
            done.append(path)
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)


def _cannot(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)
