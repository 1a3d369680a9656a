"""``replytrack milter`` as a process: socket errors are one-line CLI errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.install import replytrack_init

REPLYTRACK = Path(sys.executable).with_name("replytrack")


def run_milter(tmp_path: Path, spec: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "REPLYTRACK_DB": str(tmp_path / "rt.db"),
        "REPLYTRACK_SECRET_FILE": str(tmp_path / "rt.secret"),
        "REPLYTRACK_DOMAIN": "track.example.com",
        # Never the deployment's /var/spool/replytrack.
        "REPLYTRACK_MILTER_JOURNAL": str(tmp_path / "journal"),
        "REPLYTRACK_MILTER_JOURNAL_FALLBACK": str(tmp_path / "journal-fallback"),
    }
    replytrack_init(env=env, cwd=tmp_path)
    return subprocess.run(
        [str(REPLYTRACK), "milter", "--socket", spec],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )


@pytest.mark.timeout(90)
def test_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_milter(tmp_path, f"inet:{port}@127.0.0.1")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert f"Error: cannot listen on inet:{port}@127.0.0.1" in done.stderr


@pytest.mark.timeout(90)
def test_missing_unix_socket_directory_is_a_one_line_error(tmp_path):
    done = run_milter(tmp_path, f"unix:{tmp_path}/no/such/dir/milter.sock")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "Error: cannot listen on unix:" in done.stderr
