"""The Debian package for tests: built once per test session by scripts/build-deb.sh into a
temporary directory and extracted there (``dpkg-deb -x``); never installed on the machine,
only into an ``Overlay`` of it. Building takes a minute or two (a virtual environment with
every dependency)."""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import os
import re
import shlex
import shutil
import smtplib
import subprocess
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.support.engine_mail import DOMAIN, campaign_mail
from tests.support.postfix import PostfixLab

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


# --- an overlay of the machine to install the package into ---------------------------------

# Run as ``sh -c HOLDER BASE`` by unshare in a mount namespace of its own: a tmpfs on BASE
# holds the overlay's upper layer, so whatever apt, dpkg and the package write lands there;
# the machine's root is only ever read. Waits (sleep) to keep the namespace alive.
HOLDER = r"""
set -e
base=$0
mount -t tmpfs -o mode=0755 replytrack-overlay "$base"
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
mount -t proc proc "$base/root/proc"
mount --rbind /dev "$base/root/dev"
# /run and /tmp of its own: no trace of a running systemd (the maintainer scripts would call
# systemctl), nothing of the machine's temporary files.
mount -t tmpfs -o mode=0755 tmpfs "$base/root/run"
mount -t tmpfs -o mode=1777 tmpfs "$base/root/tmp"
echo ready
exec sleep infinity
"""
# What a root shell (and systemd, for the daemons) gives a program: no REPLYTRACK_* of the
# test run, so the installed replytrack finds /etc/replytrack/replytrack.toml as on a server.
SYSTEM_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}
# Package lists ignored: apt resolves Depends against the installed packages only.
APT_OFFLINE = ("-o", "Dir::Etc::SourceList=/dev/null", "-o", "Dir::Etc::SourceParts=/dev/null")


@dataclass(frozen=True)
class HostState:
    """What installing replytrack would change on this machine."""

    status: str
    user: str
    group: str
    paths: tuple[tuple[str, bool], ...]


def host_state() -> HostState:
    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

    paths = ("/etc/replytrack", "/opt/replytrack", "/usr/bin/replytrack", "/var/lib/replytrack",
             "/var/spool/replytrack", "/lib/systemd/system/replytrack-milter.service")  # fmt: skip
    return HostState(
        status=out("dpkg-query", "-W", "-f=${Status}", "replytrack"),
        user=out("getent", "passwd", "replytrack"),
        group=out("getent", "group", "replytrack"),
        paths=tuple((path, os.path.lexists(path)) for path in paths),
    )


def unit_settings(text: str) -> dict[str, list[str]]:
    """A systemd unit's settings, each key's values in order (no line continuations: the
    package's units have none)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


class Overlay:
    """The machine's root under a tmpfs overlay in a private mount namespace, entered with
    nsenter and chroot. ``close()`` (or the test run's end) ends every process in it, and
    with them the namespace, its mounts and everything written."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.holder: subprocess.Popen[str] | None = None
        self.daemons: list[subprocess.Popen[bytes]] = []

    def open(self) -> None:
        if os.geteuid() != 0:
            cannot("installing the package in an overlay needs root")
        for tool in ("unshare", "nsenter", "chroot", "setpriv", "runuser", "apt-get"):
            if shutil.which(tool) is None:
                cannot(f"{tool} is not installed")
        if not can_unshare():
            cannot("no private mount namespace here (unshare --mount)")
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", HOLDER, str(self.base)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None and self.holder.stderr is not None
        if self.holder.stdout.readline().strip() != "ready":
            self.holder.wait(timeout=30)
            cannot(f"no overlay of / here: {self.holder.stderr.read().strip()}")

    @property
    def root(self) -> Path:
        """The merged tree, as a path in the namespace."""
        return self.base / "root"

    def inside(self, path: str) -> Path:
        """``path`` of the chroot, reachable from this process (through /proc). An absolute
        symlink there resolves against this machine's root: test with os.path.lexists."""
        assert self.holder is not None
        return Path(f"/proc/{self.holder.pid}/root") / str(self.root).lstrip("/") / path.lstrip("/")

    def exists(self, path: str) -> bool:
        """Whether the chroot has ``path`` (a dangling symlink counts)."""
        return os.path.lexists(self.inside(path))

    def argv(self, *command: str, network: bool = True) -> list[str]:
        assert self.holder is not None
        enter = ["nsenter", f"--target={self.holder.pid}", "--mount"]
        # Without a network of its own nothing can be fetched, whatever apt is told.
        offline = [] if network else ["unshare", "--net"]
        return [*enter, *offline, "chroot", str(self.root), *command]

    def sh(self, script: str, *, network: bool = True) -> subprocess.CompletedProcess[str]:
        """``script`` run by sh in the chroot as root."""
        return subprocess.run(
            self.argv("sh", "-c", script, network=network),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env=SYSTEM_ENV,
        )

    def apt(self, *args: str, cwd: str = "/") -> subprocess.CompletedProcess[str]:
        """apt-get in the chroot, offline: Depends must already be installed."""
        command = shlex.join(["apt-get", "-q", *APT_OFFLINE, *args])
        return self.sh(f"cd {shlex.quote(cwd)} && DEBIAN_FRONTEND=noninteractive {command}",
                       network=False)  # fmt: skip

    def start_unit(self, unit: str, log: Path) -> Path:
        """The unit's ExecStart run as its User= and Group= with its UMask=, after making its
        StateDirectory= and RuntimeDirectory= as systemd would; output to ``log``."""
        settings = unit_settings(self.inside(f"/lib/systemd/system/{unit}").read_text())
        [user], [group], [umask] = settings["User"], settings["Group"], settings["UMask"]
        env = {**SYSTEM_ENV, "USER": user, "LOGNAME": user}
        env["HOME"] = self.sh(f"getent passwd {user}").stdout.split(":")[5]
        for kind, parent in (("State", "/var/lib"), ("Runtime", "/run")):
            for name in settings.get(f"{kind}Directory", []):
                mode = settings.get(f"{kind}DirectoryMode", ["0755"])[-1]
                path = f"{parent}/{name}"
                made = self.sh(f"install -d {path} && chown {user}:{group} {path} "
                               f"&& chmod {mode} {path}")  # fmt: skip
                assert made.returncode == 0, made.stderr
                env[f"{kind.upper()}_DIRECTORY"] = path
        [exec_start] = settings["ExecStart"]
        as_user = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups"]
        command = [*as_user, "sh", "-c", f'umask {umask} && exec "$@"', "sh",
                   *shlex.split(exec_start)]  # fmt: skip
        with log.open("wb") as out:
            self.daemons.append(
                subprocess.Popen(
                    self.argv(*command),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        return log

    def stop_daemons(self) -> None:
        for process in self.daemons:
            process.terminate()
        for process in self.daemons:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.daemons.clear()

    def close(self) -> None:
        self.stop_daemons()
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait(timeout=30)


# --- the demo flow through an installed or extracted package ----------------------------


def set_setting(text: str, table: str, key: str, value: object) -> str:
    """``text`` (a TOML file) with ``key`` of ``[table]`` ("" for top level) set to ``value``,
    the line rewritten in place; fails when the file has no such line."""
    start = 0 if not table else text.index(f"\n[{table}]\n")
    end = text.find("\n[", start + 1)
    end = len(text) if end == -1 else end
    section = text[start:end]
    line = re.compile(rf"^{re.escape(key)} = .*$", re.M)
    assert line.search(section), f"[{table}] {key} not in the packaged config"
    section = line.sub(lambda _: f"{key} = {json.dumps(value)}", section, count=1)
    return text[:start] + section + text[end:]


def wait_delivered(lab: PostfixLab, subject: str) -> email.message.Message:
    """The delivered message with this Subject, waiting for Postfix (bounded)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for raw in lab.maildir():
            message = email.message_from_bytes(raw, policy=email.policy.compat32)
            if message["Subject"] == subject:
                return message
        time.sleep(0.2)
    pytest.fail(f"{subject!r} not delivered\n{lab.log_tail()}")


def prospect_reply(stamped: str) -> EmailMessage:
    """The prospect's answer to the step-1 mail whose Message-ID is ``stamped``."""
    reply = EmailMessage()
    reply["From"] = f"Prospect <prospect@{DOMAIN}>"
    reply["To"] = f"sales@{DOMAIN}"
    reply["Subject"] = "Re: Offer, step 1"
    reply["Message-ID"] = f"<reply-1@mua.{DOMAIN}>"
    reply["In-Reply-To"] = stamped.strip()
    reply.set_content("Yes, call me.\n")
    return reply


def flagged_then_refused(lab: PostfixLab, reply: EmailMessage, proxy_port: int) -> None:
    """Send ``reply`` through Postfix and its milter: it arrives flagged as a reply of the
    campaign, and the proxy then refuses step 2 (550 5.7.1)."""
    with smtplib.SMTP("127.0.0.1", lab.smtp_port, timeout=60) as client:
        client.send_message(reply)
    flagged = wait_delivered(lab, "Re: Offer, step 1")
    assert (flagged["X-ReplyTrack"] or "").startswith("reply"), flagged["X-ReplyTrack"]
    assert "campaign=spring" in flagged["X-ReplyTrack"]
    with (
        smtplib.SMTP("127.0.0.1", proxy_port, timeout=60) as client,
        pytest.raises(smtplib.SMTPResponseException) as refused,
    ):
        client.send_message(campaign_mail(2))
    assert refused.value.smtp_code == 550
    assert b"5.7.1" in refused.value.smtp_error
