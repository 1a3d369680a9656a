"""Fixtures shared by the whole suite. Feature-specific fixtures live in their test files
or in ``tests/support/``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# No run of the suite reads a config file: an installed /etc/replytrack/replytrack.toml would
# lend in-process commands and every process started with os.environ its ports, domains and
# key. Set before anything loads a configuration; tests of the file search pass env= or
# --config explicitly.
os.environ["REPLYTRACK_CONFIG"] = "none"

from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring
from tests.support.net import free_port  # noqa: F401 (re-exported for tests)
from tests.support.pg import any_store, pg_server, pg_store, pg_url  # noqa: F401 (fixtures)
from tests.support.postfix import postfix_lab  # noqa: F401 (fixture)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A fresh SQLite store in a temporary directory."""
    s = SQLiteStore(tmp_path / "replytrack.db")
    yield s
    s.close_all()


@pytest.fixture
def keyring() -> Keyring:
    """A fresh signing key."""
    return Keyring.generate()


@pytest.fixture
def corpus_dir() -> Path:
    """The shared corpus of real mail beside the clone; tests using it skip when it is
    absent, except under CI (CI=true), where a missing corpus is a failure."""
    if not CORPUS.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"corpus not found at {CORPUS} (CI=true: it must be beside the clone)")
        pytest.skip(f"corpus not found at {CORPUS}")
    return CORPUS
