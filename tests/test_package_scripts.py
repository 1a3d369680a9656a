"""The maintainer scripts of the Debian package (postinst, prerm, postrm), run for real
against a scratch root.

Nothing here touches the machine's users, /etc/replytrack or services: the scripts run with
DPKG_ROOT pointing at a scratch directory and, in a mount namespace of their own, a private
copy of /etc, so the real adduser creates the service user there and nowhere else. Only
systemctl is a stand-in (no systemd runs in the test machines): it logs what it was asked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.package import CONFIG, UNITS, can_unshare, cannot, deb

__all__ = ["deb"]  # the session fixture, used by name

pytestmark = pytest.mark.timeout(900)


def control_script(deb: Path, tmp_path: Path, name: str) -> Path:
    control = tmp_path / "control"
    if not control.exists():
        subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    return control / name


@pytest.mark.parametrize("name", ["postinst", "prerm", "postrm"])
def test_maintainer_script_syntax(deb: Path, tmp_path: Path, name: str) -> None:
    script = control_script(deb, tmp_path, name)
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/bin/sh\n")
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("dash"):
        result = subprocess.run(["dash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


SANDBOX = r"""
set -e
# A private copy of /etc (the user database adduser writes) over the real one, seen only
# in this mount namespace. Files vanishing while copied (other programs' lock files) do
# not matter; the user database must be there.
cp -a /etc "$SCRATCH/etc-copy" 2>/dev/null || true
test -f "$SCRATCH/etc-copy/passwd" && test -f "$SCRATCH/etc-copy/group"
mount --bind "$SCRATCH/etc-copy" /etc
run() { "$@" >>"$SCRATCH/script.log" 2>&1; }
run "$CONTROL/postinst" configure ""
run "$CONTROL/postinst" configure ""
echo "passwd $(getent passwd replytrack)"
echo "group $(getent group replytrack)"
for dir in /var/lib/replytrack /var/spool/replytrack /var/spool/postfix/replytrack; do
  echo "dir $dir $(stat -c '%U:%G %a' "$DPKG_ROOT$dir")"
done
echo "conf $(stat -c '%U:%G %a' "$DPKG_ROOT/etc/replytrack/replytrack.toml")"
echo "-- upgrade" >>"$SCRATCH/systemctl.log"
run "$CONTROL/postinst" configure 0.0.9-1
echo "-- remove" >>"$SCRATCH/systemctl.log"
run "$CONTROL/prerm" remove
run "$CONTROL/postrm" remove
run "$CONTROL/postrm" purge
for dir in /var/lib/replytrack /var/spool/replytrack /var/spool/postfix/replytrack; do
  [ -d "$DPKG_ROOT$dir" ] && echo "left $dir"
done
exit 0
"""


def run_maintainer_scripts(deb: Path, tmp_path: Path, *, policy_exit: int | None) -> dict:
    """postinst, prerm and postrm run for real against a scratch DPKG_ROOT, the real adduser
    writing to a private copy of /etc. Only systemctl is a stand-in (no systemd runs here):
    it logs what it was asked. ``policy_exit``: the scratch root's policy-rc.d answer."""
    if os.geteuid() != 0 or not can_unshare():
        cannot("needs root and unshare(1) for a private /etc")
    if shutil.which("adduser") is None or shutil.which("deb-systemd-invoke") is None:
        cannot("adduser or init-system-helpers missing")
    control = control_script(deb, tmp_path, "postinst").parent
    scratch = tmp_path / "scratch"
    dpkg_root = scratch / "root"
    for path in ("run/systemd/system", "var/spool/postfix", "usr/sbin", "etc/replytrack"):
        (dpkg_root / path).mkdir(parents=True)
    # As dpkg leaves it after unpacking: root's, 0640.
    conf = dpkg_root / CONFIG.lstrip("/")
    conf.write_text("# packaged\n")
    conf.chmod(0o640)
    if policy_exit is not None:
        policy = dpkg_root / "usr/sbin/policy-rc.d"
        policy.write_text(f"#!/bin/sh\nexit {policy_exit}\n")
        policy.chmod(0o755)
    fakebin = scratch / "bin"
    fakebin.mkdir()
    (fakebin / "systemctl").write_text(f'#!/bin/sh\necho "$*" >>{scratch}/systemctl.log\nexit 0\n')
    (fakebin / "systemctl").chmod(0o755)
    env = {
        "PATH": f"{fakebin}:/usr/sbin:/usr/bin:/sbin:/bin",
        "DPKG_ROOT": str(dpkg_root),
        "SCRATCH": str(scratch),
        "CONTROL": str(control),
        "LC_ALL": "C",
    }
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", SANDBOX],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    script_log = (scratch / "script.log").read_text() if (scratch / "script.log").exists() else ""
    assert result.returncode == 0, result.stderr + script_log
    systemctl = (scratch / "systemctl.log").read_text()
    return {"out": result.stdout, "systemctl": systemctl, "log": script_log}


def test_postinst_creates_user_dirs_and_never_starts_when_policy_forbids(
    deb: Path, tmp_path: Path
) -> None:
    got = run_maintainer_scripts(deb, tmp_path, policy_exit=101)
    out = got["out"]
    passwd = re.search(r"^passwd (.*)$", out, re.M)
    assert passwd, out
    name, _, uid, gid, _, home, shell = passwd.group(1).split(":")
    assert name == "replytrack" and int(uid) < 1000  # a system user
    assert home == "/var/lib/replytrack" and shell.endswith("nologin")
    assert re.search(rf"^group replytrack:x:{gid}:", out, re.M), out
    for directory in ("/var/lib/replytrack", "/var/spool/replytrack",
                      "/var/spool/postfix/replytrack"):  # fmt: skip
        assert f"dir {directory} replytrack:replytrack 750" in out, out
    assert "conf root:replytrack 640" in out
    # The running system's user database was not touched.
    assert "replytrack:" not in Path("/etc/passwd").read_text()
    install, upgrade_and_remove = got["systemctl"].split("-- upgrade\n")
    upgrade, remove = upgrade_and_remove.split("-- remove\n")
    # A first install starts nothing; with policy-rc.d saying 101 an upgrade restarts
    # nothing and a removal stops nothing (only systemd's unit files are re-read).
    for calls in (install, upgrade, remove):
        assert set(calls.split("\n")) <= {"--system daemon-reload", ""}, got["systemctl"]
    # Purge keeps the store and key, removes the empty directories.
    assert "left /var/lib/replytrack" in out
    assert "left /var/spool/replytrack" not in out
    assert "left /var/spool/postfix/replytrack" not in out


def test_upgrade_restarts_running_units_when_policy_allows(deb: Path, tmp_path: Path) -> None:
    got = run_maintainer_scripts(deb, tmp_path, policy_exit=None)
    install, rest = got["systemctl"].split("-- upgrade\n")
    upgrade, remove = rest.split("-- remove\n")
    assert "start" not in install and "restart" not in install
    assert f"try-restart {' '.join(UNITS)}" in upgrade
    assert "stop replytrack-proxy.service replytrack-milter.service" in remove
