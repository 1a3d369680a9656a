"""Secrets kept in files of their own (``*_file`` settings)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from replytrack.config.errors import ConfigError

if TYPE_CHECKING:
    from replytrack.config import Config

# --- secrets kept in files of their own (*_file settings) ------------------------------------

# Secrets with a *_file twin: the daemons read the file into the value at start and reload.
SECRET_FILES = {
    "notify_secret": "notify_secret_file",
    "proxy_upstream_password": "proxy_upstream_password_file",
}


def read_secret_file(path: str, *, setting: str, mask: int = 0o007) -> str:
    """The secret in ``path`` (its first line, surrounding blanks stripped), refusing a file
    whose mode has any bit of ``mask`` set, with ConfigError messages naming ``setting``.

    The default mask is as libpq's for .pgpass but for the group, which keeps access: the
    group model lets its members run the ops commands that need the same secret. A caller
    whose secret is for the service user alone passes 0o077.
    """
    file = Path(path)
    try:
        info = file.stat()
        if not file.is_file():
            raise ConfigError(f"{setting}: {file} is not a regular file")
        if info.st_mode & mask:
            group_too = bool(mask & 0o070)
            who, fix = ("group and others", "chmod 600") if group_too else ("others", "chmod o-rwx")
            raise ConfigError(
                f"{setting}: {file} has mode {info.st_mode & 0o777:o}; {who} must have no"
                f" access ({fix} {file})"
            )
        secret = file.read_text(encoding="utf-8").partition("\n")[0].strip()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{setting}: {file} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{setting}: {file} is empty")
    return secret


def load_secret_files(config: Config) -> Config:
    """``config`` with every secret that has a ``*_file`` setting read from its file.

    Setting both the value and its file is refused: which one wins would be a guess.
    """
    values: dict[str, str] = {}
    for name, file_name in SECRET_FILES.items():
        path = getattr(config, file_name)
        if not path:
            continue
        setting = file_name.replace("_", ".", 1)
        if getattr(config, name):
            raise ConfigError(
                f"{setting} and {name.replace('_', '.', 1)} are both set; keep one"
            )
        values[name] = read_secret_file(path, setting=setting)
    return dataclasses.replace(config, **values) if values else config  # type: ignore[arg-type]


