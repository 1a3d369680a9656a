"""Reading a Postfix instance for doctor: ``postconf`` runs, its warnings, main.cf and
master.cf parsed, and the fix commands written against the same instance.

Every command a fix prints carries ``-c DIR`` when doctor was given ``--postfix-config``:
a fix pasted as printed must edit the Postfix that was checked, never the system's.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MilterEntry:
    """One entry of smtpd_milters: its socket and its per-milter settings."""

    socket: str
    settings: dict[str, str]

    def text(self) -> str:
        """The entry written back as main.cf syntax."""
        if not self.settings:
            return self.socket
        settings = ", ".join(f"{name}={value}" for name, value in self.settings.items())
        return f"{{ {self.socket}, {settings} }}"


def parse_milters(value: str) -> list[MilterEntry]:
    """Split a (``postconf -x`` expanded) smtpd_milters value into entries.

    Entries are separated by commas or whitespace; ``{ socket, name=value, ... }`` groups a
    socket with per-milter settings (Postfix 3.0+).
    """
    entries: list[MilterEntry] = []
    for match in re.finditer(r"\{([^}]*)\}|([^\s,{}]+)", value):
        if match.group(2) is not None:
            entries.append(MilterEntry(match.group(2), {}))
            continue
        inner = re.sub(r"\s*=\s*", "=", match.group(1))
        parts = [p for p in re.split(r"[\s,]+", inner) if p]
        if not parts:
            continue
        settings = {}
        for part in parts[1:]:
            name, _, setting = part.partition("=")
            settings[name.lower()] = setting
        entries.append(MilterEntry(parts[0], settings))
    return entries


def parse_master_services(text: str) -> list[tuple[str, str]]:
    """``(service name, type)`` of each master.cf service in ``postconf -M`` output."""
    services = []
    for line in text.splitlines():
        if not line.strip() or line[0].isspace() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) >= 2:
            services.append((fields[0], fields[1]))
    return services


def parse_service_params(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """Per-service ``-o`` overrides from ``postconf -P`` output, by (service, type)."""
    params: dict[tuple[str, str], dict[str, str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        path = key.strip().split("/")
        if len(path) != 3:
            continue
        params.setdefault((path[0], path[1]), {})[path[2]] = value.strip()
    return params


@dataclass(frozen=True)
class MainEntry:
    """One parameter setting in main.cf, with the line it starts on."""

    name: str
    line: int
    value: str


def parse_main_cf(text: str) -> list[MainEntry]:
    """Every ``name = value`` of a main.cf, in order, duplicates kept (Postfix keeps the
    last one silently at run time, which is the mistake this is read for)."""
    entries: list[MainEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():  # continues the previous logical line
            if entries:
                last = entries[-1]
                entries[-1] = MainEntry(last.name, last.line, f"{last.value} {stripped}".strip())
            continue
        name, sep, value = line.partition("=")
        if sep:
            entries.append(MainEntry(name.strip(), number, value.strip()))
    return entries


def filter_nexthop(value: str) -> tuple[str, int] | None:
    """Host and port a ``content_filter`` value (``transport:[host]:port``) sends to; None
    when it names no port (then it is no listener of ours)."""
    _, sep, nexthop = value.strip().partition(":")
    if not sep or not nexthop:
        return None
    nexthop = nexthop.removeprefix("inet:")
    if nexthop.startswith("["):
        host, _, rest = nexthop[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = nexthop.rpartition(":")
    return (host, int(port)) if port.isdigit() else None


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


class Postconf:
    """Runs ``postconf`` (against ``config_dir`` when given); raises RuntimeError on failure.

    Postfix's own warnings on stderr (``overriding earlier entry``, unknown parameters) are
    kept in ``warnings``, each once, for doctor to show.
    """

    def __init__(self, binary: str, config_dir: str | None) -> None:
        self.binary = binary
        self.config_dir = config_dir
        self.warnings: list[str] = []

    def run(self, *args: str) -> str:
        cmd = [self.binary]
        if self.config_dir:
            cmd += ["-c", self.config_dir]
        cmd += list(args)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"{' '.join(cmd)}: {exc}") from None
        for line in done.stderr.splitlines():
            _, sep, warning = line.partition("warning: ")
            if sep and warning.strip() not in self.warnings:
                self.warnings.append(warning.strip())
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"{cmd[0]} exited {done.returncode}")
        return done.stdout

    def value(self, name: str) -> str:
        return self.run("-xh", name).strip()

    def directory(self) -> Path:
        """The configuration directory checked (where main.cf and master.cf are)."""
        return Path(self.config_dir or self.value("config_directory"))

    # --- fix commands, for the same instance ---------------------------------------------

    def _prefix(self, program: str) -> str:
        if self.config_dir:
            return f"{program} -c {shlex.quote(self.config_dir)}"
        return program

    def set_main(self, name: str, value: str) -> str:
        """The command that sets a main.cf parameter, then reloads."""
        edit = shlex.quote(f"{name} = {value}")
        return f"{self._prefix('postconf')} -e {edit} && {self.reload()}"

    def remove_main(self, name: str) -> str:
        return f"{self._prefix('postconf')} -X {name} && {self.reload()}"

    def set_service(self, service: str, kind: str, name: str, value: str) -> str:
        """The command that sets a master.cf ``-o`` override, then reloads."""
        edit = shlex.quote(f"{service}/{kind}/{name}={value}")
        return f"{self._prefix('postconf')} -P {edit} && {self.reload()}"

    def add_service(self, service: str, kind: str, entry: str) -> str:
        """The command that adds a master.cf service (no reload: an override follows)."""
        return f"{self._prefix('postconf')} -M {shlex.quote(f'{service}/{kind}={entry}')}"

    def reload(self) -> str:
        return f"{self._prefix('postfix')} reload"

    def show_warnings(self) -> str:
        return f"{self._prefix('postconf')} -n >/dev/null"


def postconf_binary() -> str | None:
    """The postconf program, if Postfix is installed."""
    found = shutil.which("postconf")
    if found:
        return found
    for candidate in ("/usr/sbin/postconf", "/usr/local/sbin/postconf"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None
