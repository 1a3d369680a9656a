"""Secrets in files of their own (``*_file`` settings): read by the daemons, refused when
anyone may read them, and a daemon does not start on such a file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from replytrack.config import (
    ConfigError,
    load_config,
    load_secret_files,
    notify_problems,
    read_db_password,
)
from tests.support.env import clean_environ
from tests.support.install import replytrack_init


def secret_file(tmp_path: Path, mode: int, text: str = "s3cret-value\n") -> Path:
    path = tmp_path / f"secret-{mode:o}"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_notify_secret_read_from_its_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path, 0o640)
    config = load_config(
        "none",
        env={
            "REPLYTRACK_NOTIFY_WEBHOOKS": "https://crm.example.com/hook",
            "REPLYTRACK_NOTIFY_SECRET_FILE": str(path),
        },
    )
    # No "unsigned" complaint: the secret is there, in its file.
    assert notify_problems(config) == []
    assert load_secret_files(config).notify_secret == "s3cret-value"
    assert "s3cret-value" not in repr(load_secret_files(config))


def test_upstream_password_file_checked_too(tmp_path: Path) -> None:
    path = secret_file(tmp_path, 0o600)
    config = load_config("none", env={"REPLYTRACK_PROXY_UPSTREAM_PASSWORD_FILE": str(path)})
    assert load_secret_files(config).proxy_upstream_password == "s3cret-value"


@pytest.mark.parametrize(
    ("mode", "text", "said"),
    [
        (0o644, "x\n", r"mode 644; others must have no access"),
        (0o604, "x\n", "mode 604"),
        (0o600, "\n", "is empty"),
    ],
)
def test_unsafe_or_empty_secret_files_are_refused(
    tmp_path: Path, mode: int, text: str, said: str
) -> None:
    path = secret_file(tmp_path, mode, text)
    config = load_config("none", env={"REPLYTRACK_NOTIFY_SECRET_FILE": str(path)})
    with pytest.raises(ConfigError, match=said):
        load_secret_files(config)


def test_secret_and_its_file_both_set_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path, 0o600)
    config = load_config(
        "none",
        env={"REPLYTRACK_NOTIFY_SECRET": "inline", "REPLYTRACK_NOTIFY_SECRET_FILE": str(path)},
    )
    with pytest.raises(ConfigError, match=r"notify\.secret_file and notify\.secret are both set"):
        load_secret_files(config)


@pytest.mark.parametrize("command", [["milter", "--socket", "inet:0@127.0.0.1"], ["proxy"]])
def test_daemon_refuses_a_world_readable_secret_file(tmp_path: Path, command: list[str]) -> None:
    path = secret_file(tmp_path, 0o644)
    env = clean_environ(
        REPLYTRACK_DB=str(tmp_path / "rt.db"),
        REPLYTRACK_NOTIFY_WEBHOOKS="https://crm.example.com/hook",
        REPLYTRACK_NOTIFY_SECRET_FILE=str(path),
        REPLYTRACK_MILTER_JOURNAL=str(tmp_path / "journal"),
        REPLYTRACK_PROXY_LISTEN="127.0.0.1:0",
    )
    replytrack_init(env=env, cwd=tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "replytrack", *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "notify.secret_file" in done.stderr and "chmod o-rwx" in done.stderr
    assert "Traceback" not in done.stderr


# --- the store's password file: the same reader, stricter about the group --------------------


def test_db_password_file_refuses_the_group_where_other_secrets_allow_it(tmp_path: Path) -> None:
    path = secret_file(tmp_path, 0o640)
    notify = load_config("none", env={"REPLYTRACK_NOTIFY_SECRET_FILE": str(path)})
    assert load_secret_files(notify).notify_secret == "s3cret-value"
    db = load_config("none", env={"REPLYTRACK_DB_PASSWORD_FILE": str(path)})
    with pytest.raises(ConfigError) as refused:
        read_db_password(db)
    assert str(refused.value) == (
        f"db_password_file: {path} has mode 640; group and others must have no access"
        f" (chmod 600 {path})"
    )
    path.chmod(0o600)
    assert read_db_password(db) == "s3cret-value"


@pytest.mark.parametrize(
    ("env_name", "setting"),
    [
        ("REPLYTRACK_DB_PASSWORD_FILE", "db_password_file"),
        ("REPLYTRACK_NOTIFY_SECRET_FILE", "notify.secret_file"),
    ],
)
def test_a_secret_file_that_is_not_text_is_refused_naming_it(
    tmp_path: Path, env_name: str, setting: str
) -> None:
    path = tmp_path / "binary"
    path.write_bytes(b"\xff\xfe\x00secret\n")
    path.chmod(0o600)
    config = load_config("none", env={env_name: str(path)})
    with pytest.raises(ConfigError, match=rf"^{setting}: {path} is not UTF-8 text$"):
        read_db_password(config) if setting == "db_password_file" else load_secret_files(config)
