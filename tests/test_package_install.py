"""The Debian package installed with apt, its daemons run from the installed files, then purged.

A real ``apt-get install ./replytrack_*.deb``, but never on the machine itself: apt, dpkg, the
maintainer scripts and the daemons run chrooted into an overlay of the machine's root whose
upper layer is a tmpfs, mounted in a private mount namespace (tests/support/package.py,
``Overlay``). Every write (the package's files, the service user, /etc/replytrack, dpkg's
status) lands in that tmpfs, which vanishes with the namespace; the last test checks the
machine still has no replytrack. apt runs without a network (its own network namespace,
no package lists): the package's Depends must already be installed, as scripts/bootstrap.sh
does for the test machines.

There is no systemd in the chroot, so the daemons start the way their installed units say
(ExecStart, User=, Group=, UMask=, StateDirectory=, RuntimeDirectory=), without the unit's
sandboxing. They share the machine's loopback: the Postfix of the demo flow is a private
instance on the machine (tests/support/postfix.py) configured from the installed examples.
"""

from __future__ import annotations

import json
import re
import shutil
import smtplib
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port, wait_port
from tests.support.package import (
    CONFIG,
    DOMAIN,
    REPO,
    UNITS,
    VENV,
    HostState,
    Overlay,
    campaign_mail,
    cannot,
    deb,
    flagged_then_refused,
    host_state,
    prospect_reply,
    set_setting,
    wait_delivered,
)
from tests.support.postfix import PostfixLab, render_example

__all__ = ["deb"]  # the session fixture, used by name

ID_DOMAIN = "track.example.test"
OWNED = (
    f"{VENV}/bin/replytrack",
    "/usr/bin/replytrack",
    *(f"/lib/systemd/system/{unit}" for unit in UNITS),
    "/lib/systemd/system/replytrack-milter.service.d/chroot-socket.conf",
    "/usr/share/man/man8/replytrack.8.gz",
    "/usr/share/man/man5/replytrack.toml.5.gz",
    "/usr/share/doc/replytrack/README.Debian",
    "/usr/share/doc/replytrack/examples/main.cf.inbound",
    CONFIG,
)

pytestmark = pytest.mark.timeout(900)


class Installed:
    """The overlay with the package installed by apt, and what the test saw doing it."""

    def __init__(self, overlay: Overlay, before: HostState, apt: subprocess.CompletedProcess[str]):
        self.overlay = overlay
        self.before = before
        self.apt = apt


@pytest.fixture(scope="module")
def installed(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    before = host_state()
    if before.status.startswith("install ok"):
        cannot("replytrack is installed on this machine: an overlay install would test nothing")
    overlay = Overlay(tmp_path_factory.mktemp("overlay"))
    try:
        overlay.open()
        inside_deb = overlay.inside("/tmp") / deb.name
        shutil.copyfile(deb, inside_deb)
        inside_deb.chmod(0o644)  # apt reads it as its _apt user
        apt = overlay.apt("install", "-y", f"./{deb.name}", cwd="/tmp")
        yield Installed(overlay, before, apt)
    finally:
        overlay.close()


def test_apt_installs_the_package(installed: Installed) -> None:
    overlay = installed.overlay
    assert installed.apt.returncode == 0, (
        f"{installed.apt.stdout}{installed.apt.stderr}\n(a missing dependency: "
        "scripts/bootstrap.sh must install it, apt here has no network)"
    )
    assert overlay.sh("dpkg-query -W -f='${Status}' replytrack").stdout == "install ok installed"
    # The service user and group: a system account that cannot log in.
    passwd = overlay.sh("getent passwd replytrack").stdout.strip().split(":")
    assert passwd[0] == "replytrack" and int(passwd[2]) < 1000, passwd
    assert passwd[5] == "/var/lib/replytrack" and passwd[6].endswith("nologin")
    assert overlay.sh("id -gn replytrack").stdout.strip() == "replytrack"
    # Modes and owners as README.Debian says.
    for path, expected in (
        (CONFIG, "root:replytrack 640"),
        ("/var/lib/replytrack", "replytrack:replytrack 750"),
        ("/var/spool/replytrack", "replytrack:replytrack 750"),
        ("/var/spool/postfix/replytrack", "replytrack:replytrack 750"),
    ):
        assert overlay.sh(f"stat -c '%U:%G %a' {path}").stdout.strip() == expected, path
    # The milter's journal is a file it creates there (milter.journal's default).
    assert not overlay.exists("/var/spool/replytrack/journal")
    for path in OWNED:
        assert overlay.exists(path), path
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    result = overlay.sh("replytrack --version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(version)
    assert overlay.sh("man -w replytrack.toml").stdout.strip().endswith("replytrack.toml.5.gz")


def configure(overlay: Overlay, ports: dict[str, int]) -> None:
    """What README.Debian leaves to the admin: the installed config edited (the domain, and
    loopback ports free on this machine), then ``replytrack init`` as the service user."""
    config = overlay.inside(CONFIG)
    text = config.read_text()
    for table, key, value in (
        ("", "domain", ID_DOMAIN),
        ("", "hostname", f"mail.{DOMAIN}"),
        ("proxy", "listen", f"127.0.0.1:{ports['proxy']}"),
        ("proxy", "upstream", f"127.0.0.1:{ports['reinject']}"),
        ("proxy", "workers", 1),
        ("milter", "socket", f"inet:{ports['milter']}@127.0.0.1"),
    ):
        text = set_setting(text, table, key, value)
    config.write_text(text)  # in place: owner and mode stay
    init = overlay.sh("runuser -u replytrack -- replytrack init")
    assert init.returncode == 0, init.stdout + init.stderr
    # Where the installed config puts them, made by the package's directories' owner.
    for path, expected in (
        ("/var/lib/replytrack/replytrack.db", "replytrack 660"),
        ("/var/lib/replytrack/replytrack.secret", "replytrack 600"),
    ):
        assert overlay.sh(f"stat -c '%U %a' {path}").stdout.strip() == expected, path


@pytest.mark.postfix
def test_daemons_from_the_installed_units_run_the_demo_flow(
    installed: Installed, postfix_lab: Callable[..., PostfixLab], tmp_path: Path
) -> None:
    overlay = installed.overlay
    if installed.apt.returncode != 0:
        pytest.fail("the package did not install (see test_apt_installs_the_package)")
    ports = {role: free_port() for role in ("proxy", "reinject", "submit", "milter")}
    while len(set(ports.values())) < len(ports):
        ports = {role: free_port() for role in ports}
    docs = overlay.inside("/usr/share/doc/replytrack/examples")
    lab = postfix_lab(
        domain=DOMAIN,
        main_cf=render_example((docs / "main.cf.inbound").read_text(), ports),
        master_cf=render_example((docs / "master.cf.reinject").read_text(), ports),
    )
    configure(overlay, ports)
    try:
        milter = overlay.start_unit("replytrack-milter.service", tmp_path / "milter.log")
        if not wait_port(ports["milter"], timeout=60):
            pytest.fail(f"the installed milter is not listening:\n{milter.read_text()}")
        proxy = overlay.start_unit("replytrack-proxy.service", tmp_path / "proxy.log")
        if not wait_port(ports["proxy"], timeout=60):
            pytest.fail(f"the installed proxy is not listening:\n{proxy.read_text()}")
        # A fresh install set up as documented starts without a complaint (the journal's
        # directory writable, the store and key where the config says).
        for log in (milter, proxy):
            complaints = [line for line in log.read_text().splitlines()
                          if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)]  # fmt: skip
            assert complaints == [], log.read_text()

        # Out: step 1 through the installed proxy, delivered by Postfix, stamped.
        with smtplib.SMTP("127.0.0.1", ports["proxy"], timeout=60) as client:
            client.send_message(campaign_mail(1))
        step1 = wait_delivered(lab, "Offer, step 1")
        [stamped] = step1.get_all("Message-ID") or []
        assert stamped.strip().endswith(f"@{ID_DOMAIN}>")

        # In: the prospect's reply through Postfix and the installed milter, flagged.
        reply = prospect_reply(stamped)
        flagged_then_refused(lab, reply, ports["proxy"])
        # The ops CLI as the service user, the installed config found without --config.
        enrollments = overlay.sh("runuser -u replytrack -- replytrack enrollments --json")
        assert enrollments.returncode == 0, enrollments.stderr
        assert [e["status"] for e in json.loads(enrollments.stdout)] == ["stopped"]
    finally:
        overlay.stop_daemons()


def test_apt_purge_removes_the_package(installed: Installed) -> None:
    overlay = installed.overlay
    if installed.apt.returncode != 0:
        pytest.fail("the package did not install (see test_apt_installs_the_package)")
    purge = overlay.apt("purge", "-y", "replytrack")
    assert purge.returncode == 0, purge.stdout + purge.stderr
    status = overlay.sh("dpkg-query -W -f='${Status}' replytrack")
    assert status.stdout in ("", "unknown ok not-installed"), status.stdout
    for path in (*OWNED, "/opt/replytrack", "/usr/share/doc/replytrack", "/etc/replytrack",
                 "/var/spool/replytrack", "/var/spool/postfix/replytrack"):  # fmt: skip
        assert not overlay.exists(path), path
    # postrm keeps the store and the key (the only way to match replies to mail already
    # sent), says so, and keeps the system user (files it owns may remain).
    assert "/var/lib/replytrack (store and key file) is kept" in purge.stdout + purge.stderr
    assert overlay.inside("/var/lib/replytrack").is_dir()
    assert overlay.sh("getent passwd replytrack").returncode == 0


def test_the_machine_is_untouched(installed: Installed) -> None:
    installed.overlay.close()
    assert host_state() == installed.before
    assert not installed.before.status.startswith("install ok")
