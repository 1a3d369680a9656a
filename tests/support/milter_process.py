"""``replytrack --config FILE milter`` as a real process on a loopback port, for the tests
that signal it (reload, stop): its store, key, journal and log in the test's directory."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from replytrack import tokens
from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring
from tests.support.env import clean_environ
from tests.support.net import free_port


class MilterProcess:
    """The milter, started at once with ``stop_scope = "thread"``; ``base`` is the rest of
    its configuration, for a test that edits the scope and reloads."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        domain: str = "mail.test",
        env: dict[str, str] | None = None,
        fill: Callable[[SQLiteStore, Keyring], object] | None = None,
    ) -> None:
        self.port = free_port()
        self.config = tmp_path / "replytrack.toml"
        self.db = tmp_path / "rt.db"
        self.log = tmp_path / "milter.log"
        secret = tmp_path / "rt.secret"
        self.keyring = Keyring.generate()
        tokens.write_keyring(secret, self.keyring)
        store = SQLiteStore(self.db)
        if fill is not None:  # what the store holds before the milter starts
            fill(store, self.keyring)
        store.close_all()
        self.base = (
            f'db = "{self.db}"\ndomain = "{domain}"\nsecret_file = "{secret}"\n'
            f'[milter]\njournal = "{tmp_path / "journal"}"\n'
            f'journal_fallback = "{tmp_path / "journal-fallback"}"\n'
        )
        self.config.write_text(self.base + 'stop_scope = "thread"\n')
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "replytrack", "--config", str(self.config)),
                    *("milter", "--socket", f"inet:{self.port}@127.0.0.1"),
                ],
                cwd=tmp_path,
                env=clean_environ(**(env or {})),
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def accepts(self) -> bool:
        """Whether the milter's port takes a connection now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                return True
        except OSError:
            return False
