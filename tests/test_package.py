"""The Debian package, built by scripts/build-deb.sh, inspected and run without installing it.

Nothing here installs the package or touches the machine's /etc/replytrack, Postfix or
PostgreSQL: the package is built into a temporary directory (tests/support/package.py),
read with dpkg-deb, extracted with ``dpkg-deb -x``, and both daemons run from the extracted
tree exactly as the units start them (``/opt/replytrack/venv/bin/replytrack``), in a private
mount namespace where the extracted /opt stands in for the machine's. Their config is the
packaged /etc/replytrack/replytrack.toml with only ports and paths changed. The maintainer
scripts are tested in test_package_scripts.py.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import smtplib
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest

from replytrack.cli import cli
from tests.support.env import clean_environ
from tests.support.net import free_port, wait_port
from tests.support.package import (
    CONFIG,
    DOMAIN,
    REPO,
    UNITS,
    VENV,
    campaign_mail,
    can_unshare,
    cannot,
    deb,
    dpkg_deb,
    flagged_then_refused,
    prospect_reply,
    root,
    set_setting,
    wait_delivered,
)
from tests.support.postfix import PostfixLab, render_example

__all__ = ["deb", "root"]  # session fixtures, used by name

ID_DOMAIN = "track.example.test"

pytestmark = pytest.mark.timeout(900)


# --- what the package holds ----------------------------------------------------------------


def test_package_fields(deb: Path) -> None:
    fields = {
        name: dpkg_deb("-f", str(deb), name).strip()
        for name in ("Package", "Version", "Architecture", "Depends")
    }
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert fields["Package"] == "replytrack"
    assert fields["Version"].startswith(version + "-")
    assert fields["Architecture"] == dpkg_arch()
    assert deb.name == f"replytrack_{fields['Version']}_{fields['Architecture']}.deb"
    depends = [d.strip() for d in fields["Depends"].split(",")]
    names = {d.split()[0] for d in depends}
    # pymilter links libmilter; the venv runs Debian's interpreter of the version it was
    # built with; postinst needs adduser (and deb-systemd-invoke, which is Essential).
    assert {"libmilter1.0.1", "adduser"} <= names
    assert any(re.fullmatch(r"python3\.\d+ \(>= 3\.\d+\.\d+\)", d) for d in depends), depends
    info = dpkg_deb("-I", str(deb))
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert script in info


def test_package_contents(deb: Path, root: Path) -> None:
    listing = dpkg_deb("-c", str(deb))
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    for expected in (
        f"{VENV}/bin/replytrack",
        "/usr/bin/replytrack",
        "/lib/systemd/system/replytrack-proxy.service",
        "/lib/systemd/system/replytrack-milter.service",
        CONFIG,
        "/usr/share/doc/replytrack/README.md",
        "/usr/share/doc/replytrack/README.Debian",
        "/usr/share/doc/replytrack/copyright",
        "/usr/share/doc/replytrack/examples/main.cf.inbound",
        "/usr/share/man/man8/replytrack.8.gz",
        "/usr/share/man/man5/replytrack.toml.5.gz",
    ):
        assert expected in paths, expected
    # Everything belongs to root (the service user does not exist yet when dpkg unpacks);
    # the config, which may hold secrets, is never world-readable.
    assert all(" root/root " in line for line in listing.splitlines())
    [config_line] = [line for line in listing.splitlines() if line.endswith("." + CONFIG)]
    assert config_line.startswith("-rw-r-----")
    assert os.readlink(root / "usr/bin/replytrack") == f"{VENV}/bin/replytrack"
    assert (root / "etc/replytrack/replytrack.toml").read_bytes() == (
        REPO / "postfix-example/replytrack.toml"
    ).read_bytes()
    conffiles = subprocess.run(
        ["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    assert CONFIG.encode() in conffiles


def test_venv_is_debians_python_at_the_installed_path(root: Path) -> None:
    venv = root / VENV.lstrip("/")
    # Built with Debian's interpreter, not the developer's (pyenv, /usr/local): the venv
    # must run on a fresh machine.
    target = os.readlink(venv / "bin/python3")
    target = os.readlink(venv / "bin" / target) if not target.startswith("/") else target
    assert re.fullmatch(r"/usr/bin/python3\.\d+", target), target
    cfg = (venv / "pyvenv.cfg").read_text()
    assert re.search(r"^home = /usr/bin$", cfg, re.M), cfg
    shebang = (venv / "bin/replytrack").read_text().splitlines()[0]
    assert re.fullmatch(rf"#!{VENV}/bin/python3(\.\d+)?", shebang), shebang
    # No file names the directory it was built in.
    leaks = subprocess.run(
        ["grep", "-rlI", "-e", "/tmp/replytrack-deb.", str(root)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert leaks == ""
    # Bytecode is there (ProtectSystem=strict: the daemons cannot write it) and names the
    # installed path.
    pyc = next((venv / "lib").glob("python3.*/site-packages/replytrack/__pycache__/__init__.*.pyc"))
    assert f"{VENV}/lib/".encode() in pyc.read_bytes()


def test_units_and_doc_links(root: Path) -> None:
    for unit in UNITS:
        text = (root / "lib/systemd/system" / unit).read_text()
        assert f"ExecStart={VENV}/bin/replytrack --config {CONFIG}" in text
        # Every Documentation= target ships with the package.
        documentation = text_of(text, "Documentation")
        for target in re.findall(r"file://(\S+)", documentation):
            assert (root / target.lstrip("/")).exists(), target
        for page, section in re.findall(r"man:([\w.-]+)\((\d)\)", documentation):
            assert (root / f"usr/share/man/man{section}/{page}.{section}.gz").exists(), page
        assert "man:replytrack(8)" in documentation
    dropin = root / "lib/systemd/system/replytrack-milter.service.d/chroot-socket.conf"
    assert "ReadWritePaths=-/var/spool/postfix/replytrack" in dropin.read_text()


def text_of(unit: str, key: str) -> str:
    return " ".join(
        line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(key + "=")
    )


def test_lintian(deb: Path) -> None:
    if shutil.which("lintian") is None:
        # scripts/bootstrap.sh installs it: under CI its absence is a failure.
        cannot("lintian is not installed (Debian's lintian package)")
    result = subprocess.run(
        ["lintian", "--tag-display-limit", "0", str(deb)],
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], result.stdout


# --- man pages -----------------------------------------------------------------------------


def all_commands() -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []

    def walk(group: click.Group, prefix: str) -> None:
        for name, command in group.commands.items():
            if command.hidden:
                continue
            found.append((f"{prefix} {name}", command))
            if isinstance(command, click.Group):
                walk(command, f"{prefix} {name}")

    walk(cli, "replytrack")
    return found


def render(page: Path) -> str:
    """The page as man shows it, asserting groff found nothing wrong in its markup."""
    if shutil.which("groff") is None:
        cannot("groff is not installed (groff-base)")
    source = gzip.decompress(page.read_bytes())
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-P-c", "-P-b", "-P-u"],
        input=source,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stderr.decode() == ""
    return result.stdout.decode()


def test_command_man_page_has_every_command_and_option(root: Path) -> None:
    text = render(root / "usr/share/man/man8/replytrack.8.gz")
    assert text.startswith("REPLYTRACK(8)")
    headings = {line.strip() for line in text.splitlines() if line.startswith("   replytrack")}
    for path, command in all_commands():
        assert path in headings, f"{path} has no section"
        section = text.split(f"\n   {path}\n", 1)[1].split("\n   replytrack ", 1)[0]
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                # Options read as typed: ASCII hyphens, not typographic ones.
                assert param.opts[-1] in section, f"{path}: {param.opts[-1]}"
    for name in ("ENVIRONMENT", "FILES", "SEE ALSO"):
        assert f"\n{name}\n" in text


def test_config_man_page_has_every_setting(root: Path) -> None:
    text = render(root / "usr/share/man/man5/replytrack.toml.5.gz")
    assert text.startswith("REPLYTRACK.TOML(5)")
    example = tomllib.loads((REPO / "postfix-example/replytrack.toml").read_text())
    for table, values in example.items():
        if isinstance(values, dict):
            section = text.split(f"\n[{table}] TABLE\n", 1)[1]
            for key in values:
                assert re.search(rf"^       {key} = ", section, re.M), f"[{table}] {key}"
                assert f"REPLYTRACK_{table}_{key}".upper() in section
        else:
            assert re.search(rf"^       {table} = ", text, re.M), table
    # The comment above a setting is its description.
    assert "Seconds libmilter waits for Postfix." in text


# --- the daemons, run from the extracted tree ----------------------------------------------


def dpkg_arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


@dataclass
class Installed:
    """Runs the extracted package's replytrack as its units do."""

    root: Path
    work: Path
    config: Path
    namespace: bool
    processes: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def argv(self, *args: str) -> list[str]:
        program = [f"{VENV}/bin/replytrack", "--config", str(self.config), *args]
        if self.namespace:
            # The unit's very program path, /opt/replytrack/venv/bin/replytrack, with the
            # extracted /opt bound over the machine's in a namespace of its own.
            script = 'mount --bind "$0" /opt && exec "$@"'
            return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                    str(self.root / "opt"), *program]  # fmt: skip
        # Without the namespace: the extracted venv's interpreter finds its venv by its own
        # location, so the same code runs, only not through the installed path.
        return [str(self.root / VENV.lstrip("/") / "bin/python3"), "-m", "replytrack",
                *program[1:]]  # fmt: skip

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=clean_environ(REPLYTRACK_CONFIG=str(self.config)),
            cwd=self.work,
        )

    def start(self, name: str, port: int) -> None:
        log = self.work / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                self.argv(name),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=clean_environ(REPLYTRACK_CONFIG=str(self.config)),
                cwd=self.work,
            )
        self.processes.append((name, process, log))
        if not wait_port(port, timeout=60):
            pytest.fail(f"{name} from the package not listening on {port}:\n{log.read_text()}")

    def stop(self) -> None:
        for _name, process, _log in self.processes:
            process.terminate()
        for name, process, log in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
                pytest.fail(f"{name} did not stop on SIGTERM:\n{log.read_text()}")


@pytest.fixture
def installed(root: Path, tmp_path: Path) -> Iterator[Installed]:
    work = tmp_path / "run"
    work.mkdir()
    yield Installed(root, work, work / "replytrack.toml", namespace=can_unshare())


@pytest.mark.postfix
def test_daemons_from_the_package_run_the_demo_flow(
    installed: Installed, postfix_lab: Callable[..., PostfixLab]
) -> None:
    ports = {role: free_port() for role in ("proxy", "reinject", "submit", "milter")}
    while len(set(ports.values())) < len(ports):
        ports = {role: free_port() for role in ports}
    # Postfix configured from the examples the package ships, ports moved.
    docs = installed.root / "usr/share/doc/replytrack/examples"
    lab = postfix_lab(
        domain=DOMAIN,
        main_cf=render_example((docs / "main.cf.inbound").read_text(), ports),
        master_cf=render_example((docs / "master.cf.reinject").read_text(), ports),
    )
    # The packaged config, only ports and paths changed.
    text = (installed.root / CONFIG.lstrip("/")).read_text()
    for table, key, value in (
        ("", "db", str(installed.work / "replytrack.db")),
        ("", "secret_file", str(installed.work / "replytrack.secret")),
        ("", "domain", ID_DOMAIN),
        ("proxy", "listen", f"127.0.0.1:{ports['proxy']}"),
        ("proxy", "upstream", f"127.0.0.1:{ports['reinject']}"),
        ("proxy", "workers", 1),
        ("milter", "socket", f"inet:{ports['milter']}@127.0.0.1"),
        ("milter", "journal", str(installed.work / "journal")),
        ("milter", "journal_fallback", str(installed.work / "fallback")),
    ):
        text = set_setting(text, table, key, value)
    installed.config.write_text(text)

    init = installed.run("init")
    assert init.returncode == 0, init.stderr
    try:
        installed.start("milter", ports["milter"])
        installed.start("proxy", ports["proxy"])

        # Out: step 1 through the packaged proxy, delivered by Postfix, stamped.
        with smtplib.SMTP("127.0.0.1", ports["proxy"], timeout=60) as client:
            client.send_message(campaign_mail(1))
        step1 = wait_delivered(lab, "Offer, step 1")
        [stamped] = step1.get_all("Message-ID") or []
        assert stamped.strip().endswith(f"@{ID_DOMAIN}>")
        assert step1["X-ReplyTrack-Campaign"] is None

        # In: the prospect's reply through Postfix and the packaged milter.
        reply = prospect_reply(stamped)
        eml = installed.work / "reply.eml"
        eml.write_bytes(bytes(reply))
        check = installed.run("check", str(eml), "--json")
        assert check.returncode == 0, check.stderr
        [verdict] = json.loads(check.stdout)
        assert verdict["kind"] == "reply" and verdict["matched"], verdict
        flagged_then_refused(lab, reply, ports["proxy"])
        enrollments = installed.run("enrollments", "--json")
        assert enrollments.returncode == 0, enrollments.stderr
        assert [e["status"] for e in json.loads(enrollments.stdout)] == ["stopped"]
    finally:
        installed.stop()
