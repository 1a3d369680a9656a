"""``replytrack doctor`` finds a store the daemons cannot write by writing to it, as the user
the daemons run as. Root ignores file modes, so these tests need root (to switch user) and
an unprivileged account: ``nobody``, created when missing."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from replytrack.cli import cli, doctor
from replytrack.store import open_store
from tests.support.install import immutable

USER = "nobody"
# Only the checks these tests are about: the others look at sockets, Postfix, the journal.
ONLY = [
    arg for c in doctor.CHECKS if c not in {"config", "secret", "store"} for arg in ("--skip", c)
]


@dataclass
class Install:
    directory: Path
    config: Path
    db: Path
    key: Path

    def doctor(self, *args: str) -> tuple[int, dict[str, list[dict[str, str]]]]:
        """Exit code and the findings per check."""
        result = CliRunner().invoke(cli, ["-c", str(self.config), "doctor", "--json", *ONLY, *args])
        assert "Traceback" not in result.output
        by_check: dict[str, list[dict[str, str]]] = {}
        for finding in json.loads(result.output):
            by_check.setdefault(finding["check"], []).append(finding)
        return result.exit_code, by_check


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    """An installation owned by ``nobody``, as the units' StateDirectory is by their user."""
    if os.geteuid() != 0:
        pytest.skip("switching to the service user needs root")
    account = _ensure_user(USER)
    # Under /tmp, not pytest's tmp_path: that sits below a directory closed to other users.
    directory = Path(tempfile.mkdtemp(prefix="replytrack-doctor-", dir="/tmp"))
    directory.chmod(0o755)
    monkeypatch.chdir(directory)
    for name in list(os.environ):
        if name.startswith("REPLYTRACK_"):
            monkeypatch.delenv(name)
    state = directory / "state"
    config = directory / "replytrack.toml"
    config.write_text(f'db = "{state / "rt.db"}"\ndomain = "mail.example.com"\n')
    result = CliRunner().invoke(cli, ["-c", str(config), "init"])
    assert result.exit_code == 0, result.output
    for path in (state, *state.iterdir()):
        os.chown(path, account.pw_uid, account.pw_gid)
    state.chmod(0o2770)  # the group model: the service group may create -wal and -shm
    try:
        yield Install(directory, config, state / "rt.db", state / "replytrack.secret")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_read_only_store_fails_doctor_run_by_root(install: Install) -> None:
    code, found = install.doctor("--service-user", USER)
    assert code == 0, found
    [ok] = found["store"]
    assert ok["status"] == "OK" and f"(as user {USER})" in ok["message"]
    # Probe rows leave no trace.
    assert {p.name for p in install.db.parent.iterdir()} == {"rt.db", "replytrack.secret"}

    install.db.chmod(0o444)
    code, found = install.doctor("--service-user", USER)
    assert code == 1
    [fail] = [f for f in found["store"] if f["status"] == "FAIL"]
    # Members of the service group cannot use it either.
    [warn] = [f for f in found["store"] if f"cannot write {install.db} " in f["message"]]
    assert warn["status"] == "WARN" and warn["fix"].endswith(f"chmod 660 {install.db}")
    assert "is not writable" in fail["message"] and f"(as user {USER})" in fail["message"]
    assert f"let {USER} write {install.db}" in fail["fix"]


def test_a_directory_closed_to_new_files_fails_doctor(install: Install) -> None:
    # With the store file writable, SQLite still has to create rt.db-wal and rt.db-shm.
    install.db.parent.chmod(0o555)
    code, found = install.doctor("--service-user", USER)
    assert code == 1
    messages = [f["message"] for f in found["store"] if f["status"] == "FAIL"]
    assert any(f"cannot create files in {install.db.parent}" in m for m in messages), messages


def test_a_key_the_service_user_cannot_read_fails_doctor(install: Install) -> None:
    # `replytrack init` run by root without runuser: a key only root can read.
    os.chown(install.key, 0, 0)
    code, found = install.doctor("--service-user", USER)
    assert code == 1
    fails = [f for f in found["secret"] if f["status"] == "FAIL"]
    assert [f["message"] for f in fails] == [
        f"cannot read key file {install.key}: Permission denied (as user {USER})"
    ]


@pytest.mark.parametrize("what", ["directory", "directory and files"])
def test_an_immutable_store_fails_doctor_while_the_daemons_run(install: Install, what: str) -> None:
    # A running daemon keeps rt.db-wal and rt.db-shm in place, so a write transaction can
    # still start; chattr +i stops root too, so doctor fails whichever user it writes as.
    running = open_store(str(install.db))
    running.messages(limit=1)
    assert (install.db.parent / "rt.db-wal").exists()
    paths = [install.db.parent] + ([install.db] if what != "directory" else [])
    try:
        with immutable(*paths):
            for args in (["--service-user", USER], ["--service-user", "root"]):
                code, found = install.doctor(*args)
                assert code == 1, (args, found)
                assert any(f["status"] == "FAIL" for f in found["store"]), (args, found)
    finally:
        running.close_all()


def test_without_the_service_user_root_is_warned(install: Install) -> None:
    code, found = install.doctor("--service-user", "no-such-replytrack-user")
    assert code == 0
    warn, ok = found["store"]
    assert warn["status"] == "WARN" and "write-tested as root" in warn["message"]
    assert ok["status"] == "OK" and "(as user root)" in ok["message"]
