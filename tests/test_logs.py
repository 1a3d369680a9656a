"""Daemon logging: no time stamp of our own when stderr is the journal (journald adds one),
one otherwise; syslog through a real unix datagram socket with the ``mail`` facility."""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from replytrack import logs
from replytrack.config import ConfigError, load_config

SCRIPT = (
    "import logging, sys\n"
    "from replytrack.logs import setup_logging\n"
    "setup_logging('info', fmt=sys.argv[1])\n"
    "logging.getLogger('replytrack.proxy').info('hello')\n"
)


def logged(tmp_path: Path, fmt: str, *, journal: bool) -> str:
    out = tmp_path / f"stderr-{fmt}-{journal}"
    with open(out, "wb") as stderr:
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal:
            # What systemd sets for a unit whose stderr is the journal: device:inode of it.
            info = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
        subprocess.run([sys.executable, "-c", SCRIPT, fmt], stderr=stderr, env=env, check=True)
    return out.read_text()


def test_no_own_time_stamp_under_the_journal(tmp_path: Path) -> None:
    assert logged(tmp_path, "auto", journal=True) == "INFO replytrack.proxy: hello\n"
    stamped = logged(tmp_path, "auto", journal=False)
    assert stamped.endswith(" INFO replytrack.proxy: hello\n")
    assert stamped[:4].isdigit()  # the year
    assert logged(tmp_path, "plain", journal=False) == "INFO replytrack.proxy: hello\n"
    assert logged(tmp_path, "timestamped", journal=True)[:4].isdigit()


@pytest.fixture
def syslog_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    directory = tempfile.mkdtemp(prefix="rt-log-")
    path = os.path.join(directory, "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(10)
        monkeypatch.setattr(logs, "SYSLOG_SOCKET", path)
        yield sock
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.handlers.SysLogHandler):
            root.removeHandler(handler)
            handler.close()
    os.unlink(path)
    os.rmdir(directory)


def test_syslog_with_the_mail_facility(syslog_socket: socket.socket) -> None:
    config = load_config("none", env={"REPLYTRACK_LOG_TARGET": "syslog"})
    assert config.log_facility == "mail"
    logs.setup_from(config)
    logging.getLogger("replytrack.milter").warning("qid=ABC reply flagged")
    data = syslog_socket.recv(4096).decode()
    # <PRI> = facility mail (2) * 8 + warning (4); the tag names us and our pid.
    assert data.startswith(f"<20>replytrack[{os.getpid()}]: WARNING replytrack.milter: ")
    assert data.rstrip("\x00").endswith("qid=ABC reply flagged")


@pytest.mark.parametrize(
    ("name", "value"),
    [("LOG_TARGET", "file"), ("LOG_FORMAT", "json"), ("LOG_FACILITY", "kern")],
)
def test_bad_log_settings_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name.lower().replace("_", ".", 1)):
        load_config("none", env={f"REPLYTRACK_{name}": value})
