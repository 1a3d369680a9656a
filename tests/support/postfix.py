"""A private, loopback-only Postfix instance for tests and benchmarks.

Everything lives under one base directory (config, queue, data, log, Maildir); the system
Postfix (``/etc/postfix/main.cf``, ``/var/spool/postfix``) is never read for settings,
written or started. Several instances can run at once: each has its own directory and a free
port. Postfix's master must start as root (its daemons drop to the ``postfix`` user), so the
lab needs root; without it the fixture skips with that reason.

Usage in a test::

    @pytest.mark.postfix
    def test_something(postfix_lab):
        lab = postfix_lab(milter="inet:127.0.0.1:8894")
        smtplib.SMTP("127.0.0.1", lab.smtp_port).sendmail(...)
        [msg] = lab.wait_for_mail(1)

Gotchas this module handles (learned the hard way, see ../shared/tools/README.md):

* ``postfix`` prints fatal errors only when stderr is a terminal, so it runs under
  ``script(1)``.
* There is no syslog in the test machines: ``maillog_file`` plus ``maillog_file_prefixes``
  and the ``postlog`` service make Postfix write its own log file.
* ``mail_owner`` cannot be root; ``data_directory`` must belong to ``postfix``; the
  daemons (user ``postfix``) must be able to traverse the base directory, which is why it
  is made outside pytest's private (mode 0700) ``tmp_path``.
* DNS is never consulted (``smtp_dns_support_level = disabled``, no peer-name lookups),
  and mail for other domains is never sent anywhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import free_port, port_open

PACKAGES = ("postfix", "swaks", "libmilter-dev")
MODES = ("local", "relay", "discard")
QUEUE_DIRS = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")
# The unprivileged user the virtual(8) delivery agent writes the Maildir as.
MAILDIR_UID = 65534


class PostfixUnavailable(RuntimeError):
    """Postfix cannot run here (not root, or the packages cannot be installed)."""


class PostfixError(RuntimeError):
    """The lab instance failed: bad config, did not start or stop, mail did not arrive."""


def _installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return "install ok installed" in result.stdout


def ensure_postfix(packages: Sequence[str] = PACKAGES) -> None:
    """Make sure Postfix, swaks and libmilter-dev are installed; install them when missing.

    Debconf is preseeded to "No configuration" and a ``policy-rc.d`` guard keeps the package
    scripts from configuring or starting the system Postfix. Raises ``PostfixUnavailable``
    with the reason when not running as root (the lab's master must start as root) and
    ``PostfixError`` when apt-get fails.
    """
    if os.geteuid() != 0:
        raise PostfixUnavailable("the private Postfix lab needs root (Postfix master runs as root)")
    if shutil.which("dpkg-query") is None:
        raise PostfixUnavailable("not a Debian-like system (no dpkg-query): cannot install Postfix")
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    subprocess.run(
        ["debconf-set-selections"],
        input="postfix postfix/main_mailer_type select No configuration\n"
        "postfix postfix/mailname string replytrack.invalid\n",
        text=True,
        check=True,
    )
    guard = Path("/usr/sbin/policy-rc.d")
    created = False
    if not guard.exists():
        # Exit code 101 tells invoke-rc.d "action forbidden": no service gets started.
        guard.write_text("#!/bin/sh\nexit 101\n")
        guard.chmod(0o755)
        created = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        result = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        if created:
            guard.unlink(missing_ok=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise PostfixError(f"apt-get install {' '.join(missing)} failed:\n{tail}")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


MASTER_CF_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixLab:
    """One private Postfix instance under ``base_dir``, listening on ``127.0.0.1:smtp_port``.

    ``mode``: ``local`` delivers mail for ``domain`` (any local part) to one Maildir under
    ``base_dir/mail`` and rejects other domains; ``relay`` sends everything to ``relay``
    (``"127.0.0.1:PORT"``); ``discard`` accepts and drops everything (benchmarks).
    ``milter``: an ``smtpd_milters`` entry (``inet:127.0.0.1:PORT`` or ``unix:/path``) with
    ``milter_default_action``. ``extra_main`` adds main.cf settings, ``extra_master`` adds
    master.cf lines. ``main_cf`` / ``master_cf`` are fragments (an admin's lines, e.g. from
    postfix-example/) appended verbatim after the generated files; later main.cf settings win.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        mode: str = "local",
        relay: str | None = None,
        milter: str | None = None,
        milter_default_action: str = "accept",
        domain: str = "example.test",
        extra_main: Mapping[str, Any] | None = None,
        extra_master: Sequence[str] | None = None,
        main_cf: str | None = None,
        master_cf: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if mode == "relay" and not relay:
            raise ValueError("mode 'relay' needs relay='HOST:PORT'")
        self.base = Path(base_dir).resolve()
        self.smtp_port = port if port is not None else free_port()
        self.mode = mode
        self.relay = relay
        self.milter = milter
        self.milter_default_action = milter_default_action
        self.domain = domain
        self.extra_main = dict(extra_main or {})
        self.extra_master = list(extra_master or [])
        self.main_cf = main_cf
        self.master_cf = master_cf
        self.etc = self.base / "etc"
        self.spool = self.base / "spool"
        self.data = self.base / "data"
        self.logdir = self.base / "log"
        self.maillog = self.logdir / "maillog"
        self.mail_dir = self.base / "mail"
        self._master_pid: int | None = None

    # --- configuration ------------------------------------------------------------------

    def main_cf_text(self) -> str:
        """The main.cf this instance runs with."""
        lines = [
            "# Generated by tests/support/postfix.py for a private test instance.",
            "compatibility_level = 3.6",
            f"queue_directory = {self.spool}",
            f"data_directory = {self.data}",
            "command_directory = /usr/sbin",
            "daemon_directory = /usr/lib/postfix/sbin",
            "meta_directory = /etc/postfix",
            "shlib_directory = /usr/lib/postfix",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            f"myhostname = lab.{self.domain}",
            f"mydomain = {self.domain}",
            "myorigin = $myhostname",
            "mydestination =",
            "local_recipient_maps =",
            "alias_maps =",
            "alias_database =",
            "append_dot_mydomain = no",
            "biff = no",
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "# Never resolve anything through DNS, never reverse-lookup clients.",
            "smtp_dns_support_level = disabled",
            "smtpd_peername_lookup = no",
            "# No syslog here: Postfix writes its own log file.",
            f"maillog_file = {self.maillog}",
            f"maillog_file_prefixes = {self.logdir}",
            "smtpd_banner = $myhostname ESMTP replytrack-lab",
            "# Tests want quick retries, not the production backoff.",
            "queue_run_delay = 2s",
            "minimal_backoff_time = 2s",
            "maximal_backoff_time = 4s",
            "in_flow_delay = 0",
        ]
        if self.mode == "local":
            lines += [
                f"virtual_mailbox_domains = {self.domain}",
                f"virtual_mailbox_base = {self.mail_dir}",
                "virtual_mailbox_maps = static:maildir/",
                f"virtual_uid_maps = static:{MAILDIR_UID}",
                f"virtual_gid_maps = static:{MAILDIR_UID}",
                "default_transport = error:5.7.1 test lab: delivery outside the test domain",
                "relay_transport = $default_transport",
                "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            ]
        elif self.mode == "relay":
            assert self.relay is not None
            host, _, port = self.relay.rpartition(":")
            lines += [
                f"relayhost = [{host}]:{port}",
                "default_transport = smtp",
                "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            ]
        else:
            lines += [
                "default_transport = discard:test lab",
                "relay_transport = $default_transport",
                "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            ]
        if self.milter:
            lines += [
                f"smtpd_milters = {self.milter}",
                f"milter_default_action = {self.milter_default_action}",
                "milter_protocol = 6",
            ]
        lines += [f"{key} = {value}" for key, value in self.extra_main.items()]
        text = "\n".join(lines) + "\n"
        if self.main_cf:
            text += "\n" + self.main_cf.rstrip("\n") + "\n"
        return text

    def master_cf_text(self) -> str:
        """The master.cf this instance runs with (nothing chrooted)."""
        text = "# Generated by tests/support/postfix.py; nothing runs chrooted.\n"
        text += f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd\n"
        text += MASTER_CF_SERVICES
        text += "".join(line.rstrip("\n") + "\n" for line in self.extra_master)
        if self.master_cf:
            text += "\n" + self.master_cf.rstrip("\n") + "\n"
        return text

    def write_config(self) -> None:
        """Create the directories and write main.cf and master.cf."""
        for directory in (self.etc, self.spool, self.data, self.logdir, self.mail_dir):
            directory.mkdir(parents=True, exist_ok=True)
        # Postfix daemons run as 'postfix' and deliver as MAILDIR_UID: both must reach in.
        self.base.chmod(0o755)
        shutil.chown(self.data, "postfix", "postfix")
        os.chown(self.mail_dir, MAILDIR_UID, MAILDIR_UID)
        (self.etc / "main.cf").write_text(self.main_cf_text())
        (self.etc / "master.cf").write_text(self.master_cf_text())

    # --- running ------------------------------------------------------------------------

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``postfix -c ETC ARGS`` under script(1): postfix prints fatal errors only to a
        terminal, and we want them in the exception, not lost."""
        command = shlex.join(["postfix", "-c", str(self.etc), *args])
        return subprocess.run(
            ["script", "-qec", command, "/dev/null"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def master_pid(self) -> int | None:
        """The PID of this instance's master, when it runs."""
        pid_file = self.spool / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None
        return pid if comm == "master" else None

    def running(self) -> bool:
        """True while this instance's master process runs."""
        return self.master_pid() is not None

    def check(self) -> None:
        """``postfix check`` on the written config (also creates the queue directories)."""
        result = self._postfix("check")
        if result.returncode != 0:
            raise PostfixError(f"postfix check failed:\n{self._clean(result.stdout)}")

    def start(self, timeout: float = 30) -> PostfixLab:
        """Write the config, check it, start the instance and wait until it listens."""
        ensure_postfix()
        if self.running():
            raise PostfixError(f"instance in {self.base} already runs")
        self.write_config()
        if port_open(self.smtp_port):
            raise PostfixError(f"127.0.0.1:{self.smtp_port} is already in use")
        self.check()
        result = self._postfix("start")
        if result.returncode != 0:
            raise PostfixError(
                f"postfix start failed:\n{self._clean(result.stdout)}\n{self.log_tail()}"
            )
        if not wait_until(lambda: port_open(self.smtp_port), timeout):
            raise PostfixError(
                f"smtpd not listening on 127.0.0.1:{self.smtp_port}\n{self.log_tail()}"
            )
        self._master_pid = self.master_pid()
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop the instance and wait until its master has exited (no-op when stopped)."""
        pid = self.master_pid() or self._master_pid
        if pid is None or not Path(f"/proc/{pid}").exists():
            return
        self._postfix("stop")
        if not wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout):
            # The polite way failed; the master's process group holds only this instance.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            if not wait_until(lambda: not Path(f"/proc/{pid}").exists(), 5):
                raise PostfixError(f"master {pid} of {self.base} did not exit")
        self._master_pid = None

    def reload(self) -> None:
        """Rewrite the config and ``postfix reload`` (for settings changed on the object)."""
        self.write_config()
        self.check()
        result = self._postfix("reload")
        if result.returncode != 0:
            raise PostfixError(f"postfix reload failed:\n{self._clean(result.stdout)}")

    def postconf(self, *args: str) -> str:
        """Run ``postconf -c ETC ARGS`` and return its output."""
        result = subprocess.run(
            ["postconf", "-c", str(self.etc), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise PostfixError(f"postconf {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    # --- observing ----------------------------------------------------------------------

    def log(self) -> str:
        """The instance's maillog so far."""
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the maillog, for error messages."""
        return "maillog tail:\n" + "\n".join(self.log().splitlines()[-lines:])

    def maildir_files(self) -> list[Path]:
        """Delivered message files (local mode), oldest first."""
        files: list[Path] = []
        for sub in ("new", "cur"):
            folder = self.mail_dir / "maildir" / sub
            if folder.is_dir():
                files.extend(p for p in folder.iterdir() if p.is_file())
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def maildir(self) -> list[bytes]:
        """Delivered messages (local mode) as raw bytes, oldest first."""
        return [p.read_bytes() for p in self.maildir_files()]

    def wait_for_mail(self, count: int = 1, timeout: float = 20) -> list[bytes]:
        """Wait until at least ``count`` messages were delivered; return all of them."""
        if not wait_until(lambda: len(self.maildir_files()) >= count, timeout):
            have = len(self.maildir_files())
            raise PostfixError(
                f"expected {count} delivered message(s) within {timeout}s, have {have}\n"
                f"{self.log_tail()}"
            )
        return self.maildir()

    def queue_size(self) -> int:
        """Messages in the queue (all queues, counted on disk)."""
        total = 0
        for name in QUEUE_DIRS:
            folder = self.spool / name
            if folder.is_dir():
                total += sum(len(files) for _, _, files in os.walk(folder))
        return total

    def wait_queue_empty(self, timeout: float = 20) -> None:
        """Wait until nothing is left in the queue."""
        if not wait_until(lambda: self.queue_size() == 0, timeout):
            raise PostfixError(
                f"queue not empty after {timeout}s ({self.queue_size()} left)\n{self.log_tail()}"
            )

    def wait_for_log(self, text: str, timeout: float = 20) -> str:
        """Wait until ``text`` appears in the maillog; return the log."""
        if not wait_until(lambda: text in self.log(), timeout):
            raise PostfixError(f"{text!r} not logged within {timeout}s\n{self.log_tail()}")
        return self.log()

    @staticmethod
    def _clean(output: str) -> str:
        return output.replace("\r", "").strip()


# The loopback ports written in postfix-example/, by role.
EXAMPLE_PORTS = {"proxy": 10025, "reinject": 10026, "submit": 10027, "milter": 8894}


def render_example(text: str, ports: Mapping[str, int]) -> str:
    """A postfix-example/ file with its loopback ports replaced by ``ports`` (by role, see
    ``EXAMPLE_PORTS``); nothing else changes. Raises ValueError when a setting line still
    names a default port, i.e. the example grew a port this function does not know."""
    for role, default in EXAMPLE_PORTS.items():
        text = re.sub(rf"(127\.0\.0\.1\]?:){default}\b", rf"\g<1>{ports[role]}", text)
    # A default port still present where another one was asked for means a missed spot.
    moved = [str(d) for role, d in EXAMPLE_PORTS.items() if ports[role] != d]
    if not moved:
        return text
    defaults = "|".join(moved)
    leftover = [
        line
        for line in text.splitlines()
        if not line.lstrip().startswith("#") and re.search(rf"\b({defaults})\b", line)
    ]
    if leftover:
        raise ValueError(f"untemplated port in: {leftover}")
    return text


def make_base_dir(prefix: str = "replytrack-pflab-") -> Path:
    """A fresh base directory the ``postfix`` user can traverse (pytest's tmp_path is 0700)."""
    root = Path(os.environ.get("REPLYTRACK_PFLAB_ROOT", tempfile.gettempdir()))
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    path.chmod(0o755)
    return path


@pytest.fixture
def postfix_lab(tmp_path: Path) -> Iterator[Callable[..., PostfixLab]]:
    """A factory of private Postfix instances, stopped and removed on teardown.

    ``postfix_lab(**kwargs)`` takes PostfixLab's keyword arguments plus ``start=True``.
    Skips the test (with the reason) when Postfix cannot run here because we are not root.
    Each instance's directory is linked from ``tmp_path`` (``pflab-N``) while it exists.
    """
    labs: list[PostfixLab] = []

    def factory(*, start: bool = True, **kwargs: Any) -> PostfixLab:
        try:
            ensure_postfix()
        except PostfixUnavailable as exc:
            pytest.skip(str(exc))
        base = make_base_dir()
        with contextlib.suppress(OSError):
            (tmp_path / f"pflab-{len(labs)}").symlink_to(base)
        lab = PostfixLab(base, **kwargs)
        labs.append(lab)
        if start:
            lab.start()
        return lab

    yield factory
    errors: list[str] = []
    for lab in labs:
        try:
            lab.stop()
        except PostfixError as exc:
            errors.append(str(exc))
            continue
        if not os.environ.get("REPLYTRACK_PFLAB_KEEP"):
            # Failures already show the log tail; removing the directory keeps /tmp from
            # filling up over many runs. REPLYTRACK_PFLAB_KEEP=1 keeps it for a post-mortem.
            shutil.rmtree(lab.base, ignore_errors=True)
    if errors:
        raise PostfixError("; ".join(errors))
