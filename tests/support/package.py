"""The Debian package for tests: built once per test session by scripts/build-deb.sh into a
temporary directory and extracted there (``dpkg-deb -x``); never installed on the machine.
Building takes a minute or two (a virtual environment with every dependency)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = "/opt/replytrack/venv"
CONFIG = "/etc/replytrack/replytrack.toml"
UNITS = ("replytrack-milter.service", "replytrack-proxy.service")


def cannot(reason: str) -> None:
    # CI runs on Debian as root: there every test here must run, not skip.
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


# Each test module that imports the fixtures gets definitions of its own; this keeps the
# build to one per session all the same.
_built: dict[str, Path] = {}


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package, built once for the session from this checkout."""
    if "deb" in _built:
        return _built["deb"]
    if shutil.which("dpkg-deb") is None or not Path("/usr/bin/python3").exists():
        cannot("not a Debian machine (dpkg-deb, /usr/bin/python3)")
    out = tmp_path_factory.mktemp("deb")
    result = subprocess.run(
        [str(REPO / "scripts" / "build-deb.sh"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [package] = out.glob("replytrack_*.deb")
    _built["deb"] = package
    return package


@pytest.fixture(scope="session")
def root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's files, extracted (``dpkg-deb -x``), as an install would lay them."""
    if "root" not in _built:
        target = tmp_path_factory.mktemp("extracted")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
        _built["root"] = target
    return _built["root"]


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


def can_unshare() -> bool:
    """Whether this process may make a private mount namespace (root, unshare(1))."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0
