"""The group model, with real accounts: ``init`` run as root hands the store and the key
to the service user and its group; a member of the group runs the ops commands that write
the store (no daemon holding it open), is refused the key (0600) and told by ``doctor`` to
run those commands as the service user, which works. Needs root to make the accounts and
switch to them; they are removed afterwards."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import select
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

# Loaded before a child switches user: check needs them.
import replytrack.cli.milter_cmd
import replytrack.milter.engine  # noqa: F401
from replytrack.cli import cli, doctor

SERVICE, OPS = "rt-svc-test", "rt-ops-test"
ONLY = [a for c in doctor.CHECKS if c not in {"secret", "store"} for a in ("--skip", c)]
REPLY = b"From: ann@acme-prospect.net\r\nTo: sales@acme-sales.net\r\nSubject: Re: hi\r\n\r\nyes\r\n"


def _run_as(user: str, args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the CLI in a forked child switched to ``user`` (the venv's interpreter lives under
    /root, which other users cannot enter, so no new process; what the commands need is
    imported before the fork)."""
    account = pwd.getpwnam(user)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.setgroups(os.getgrouplist(user, account.pw_gid))
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            result = CliRunner().invoke(cli, args, env=env)
            out = json.dumps([result.exit_code, result.output]).encode()
            while out:
                out = out[os.write(write_end, out) :]
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while select.select([read_end], [], [], 60)[0]:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    code, output = json.loads(b"".join(chunks))
    return code, output


@dataclass
class Site:
    directory: Path
    config: Path
    state: Path
    db: Path
    key: Path

    def as_user(self, user: str, *args: str, **env: str) -> tuple[int, str]:
        return _run_as(user, ["-c", str(self.config), *args], env=env or None)

    def doctor_as(self, user: str, **env: str) -> tuple[int, dict[str, list[dict[str, str]]]]:
        args = ["doctor", "--json", "--service-user", SERVICE, *ONLY]
        if user == "root":
            result = CliRunner().invoke(cli, ["-c", str(self.config), *args], env=env or None)
            code, output = result.exit_code, result.output
        else:
            code, output = self.as_user(user, *args, **env)
        by_check: dict[str, list[dict[str, str]]] = {}
        for finding in json.loads(output):
            by_check.setdefault(finding["check"], []).append(finding)
        return code, by_check


@contextlib.contextmanager
def _accounts() -> Iterator[None]:
    made = []
    try:
        for user, extra in ((SERVICE, ["--user-group"]), (OPS, ["-G", SERVICE])):
            try:
                pwd.getpwnam(user)
            except KeyError:
                subprocess.run(
                    [
                        "useradd",
                        "--system",
                        "--no-create-home",
                        "-s",
                        "/usr/sbin/nologin",
                        *extra,
                        user,
                    ],
                    check=True,
                    capture_output=True,
                )
                made.append(user)
        yield
    finally:
        for user in reversed(made):
            subprocess.run(["userdel", user], capture_output=True, check=False)
        with contextlib.suppress(KeyError):
            grp.getgrnam(SERVICE)
            subprocess.run(["groupdel", SERVICE], capture_output=True, check=False)


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("making accounts and switching to them needs root and useradd")
    for name in list(os.environ):
        if name.startswith("REPLYTRACK_"):
            monkeypatch.delenv(name)
    with _accounts():
        directory = Path(tempfile.mkdtemp(prefix="replytrack-group-", dir="/tmp"))
        directory.chmod(0o755)
        monkeypatch.chdir(directory)
        state = directory / "state"
        config = directory / "replytrack.toml"
        try:
            yield Site(directory, config, state, state / "rt.db", state / "replytrack.secret")
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def _init(site: Site) -> None:
    args = ["--db", str(site.db), "--domain", "replies.acme-sales.net", "init"]
    args += ["--service-user", SERVICE, "--write-config", str(site.config)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output


def test_init_as_root_hands_the_files_to_the_service_user_and_group(site: Site) -> None:
    _init(site)
    service = pwd.getpwnam(SERVICE)
    for path, mode in ((site.db, 0o660), (site.key, 0o600), (site.state, 0o2770)):
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (service.pw_uid, service.pw_gid), path
        assert stat.S_IMODE(info.st_mode) == mode, (path, oct(info.st_mode))
    config = site.config.stat()
    assert (config.st_uid, config.st_gid, stat.S_IMODE(config.st_mode)) == (
        0,
        service.pw_gid,
        0o640,
    )


def test_a_group_member_runs_the_ops_commands(site: Site) -> None:
    _init(site)
    # No daemon holds the store open: the member's SQLite creates rt.db-wal itself.
    assert not Path(f"{site.db}-wal").exists()
    code, output = site.as_user(OPS, "stop", "--campaign", "spring", "--reason", "test")
    assert code == 0, output
    code, output = site.as_user(OPS, "events", "--json")
    assert code == 0, output
    [event] = json.loads(output)
    assert event["kind"] == "stopped" and event["actor"] == OPS

    # The key is the service user's alone: check refuses, doctor says what to do instead.
    eml = site.directory / "reply.eml"
    eml.write_bytes(REPLY)
    code, output = site.as_user(OPS, "check", "--json", str(eml))
    assert code != 0 and "key file" in output
    code, found = site.doctor_as(OPS)
    assert code == 0, found
    [secret] = found["secret"]
    assert secret["status"] == "WARN" and f"is for {SERVICE} only" in secret["message"]
    assert "backup" not in secret["fix"]
    assert secret["fix"].startswith(f"run them as the service user: sudo -u {SERVICE} replytrack")
    [store] = found["store"]
    assert store["status"] == "OK" and f"(as user {OPS})" in store["message"]
    # The advice holds: as the service user, check works.
    command = secret["fix"].partition(f"sudo -u {SERVICE} replytrack ")[2].split()
    assert command[:2] == ["--config", str(site.config)]
    code, output = _run_as(SERVICE, [*command[:-1], "--json", str(eml)])
    assert code == 0, output
    assert json.loads(output)[0]["kind"] in ("reply", "unrelated")


def test_doctor_as_root_checks_the_group_and_the_user_who_ran_sudo(site: Site) -> None:
    _init(site)
    code, found = site.doctor_as("root", SUDO_USER=OPS)
    assert code == 0, found
    assert [f["status"] for f in found["store"]] == ["OK", "OK"], found
    assert f"as user {OPS}, who ran sudo" in found["store"][1]["message"]
    assert any(f"is for {SERVICE} only (as user {OPS})" in f["message"] for f in found["secret"])

    # The store in root's group (a copy restored as root, say): members cannot write it.
    os.chown(site.db, pwd.getpwnam(SERVICE).pw_uid, 0)
    code, output = site.as_user(OPS, "stop", "--campaign", "spring")
    assert code != 0 and str(site.db) in output
    code, found = site.doctor_as("root", SUDO_USER=OPS)
    [warn] = [f for f in found["store"] if f"members of group {SERVICE}" in f["message"]]
    assert warn["fix"] == f"chgrp {SERVICE} {site.db} && chmod 660 {site.db}"
    assert any(f"(as user {OPS}, who ran sudo)" in f["message"] for f in found["store"])
    subprocess.run(warn["fix"], shell=True, check=True)
    code, output = site.as_user(OPS, "stop", "--campaign", "spring")
    assert code == 0, output

    # A directory without the group's write bit: fine while a daemon holds the store
    # open, refused to members otherwise.
    site.state.chmod(0o750)
    code, output = site.as_user(OPS, "stop", "--campaign", "summer")
    assert code != 0
    _, found = site.doctor_as("root")
    [warn] = [f for f in found["store"] if f"cannot create files in {site.state}" in f["message"]]
    subprocess.run(warn["fix"], shell=True, check=True)
    code, output = site.as_user(OPS, "stop", "--campaign", "summer")
    assert code == 0, output
