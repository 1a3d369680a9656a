#!/usr/bin/env python3
"""Write the man pages replytrack(8) and replytrack.toml(5) in roff.

replytrack(8) is the CLI's own help: every command of the click group (subgroups too),
its usage, help text and options, as ``replytrack COMMAND --help`` shows them.
replytrack.toml(5) is the commented example configuration (postfix-example/replytrack.toml):
each table and key with its default and the comment above it, plus any setting of
``replytrack.config.Config`` the example leaves out. So neither page can drift from the
code: scripts/build-deb.sh regenerates both for every package.

Usage: make-man.py [--toml FILE] [--out DIR]   (run with the Python that has replytrack)
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from replytrack import __version__
from replytrack.cli import cli
from replytrack.config import ENV_PREFIX, Config

log = logging.getLogger("make-man")

# Tables of the TOML file; a flat Config field "proxy_listen" is "[proxy] listen".
TABLES = ("proxy", "milter", "notify", "unsubscribe")
# Config fields that are not settings a user writes.
INTERNAL_FIELDS = {"source"}


def escape(text: str) -> str:
    """One line of text as roff: backslashes and hyphens escaped (an unescaped "-" may print
    as a typographic hyphen, which breaks copying an option), no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def comment_lines(lines: list[str]) -> str:
    """Comment lines of the example file as roff: prose filled, indented lines (examples
    of values) kept as written."""
    out: list[str] = []
    for line in lines:
        if line.startswith("  "):
            out += [".nf", escape(line), ".fi"]
        else:
            out.append(escape(line))
    return "\n".join(out)


def paragraphs(help_text: str) -> list[str]:
    """Click help text as roff paragraphs. A paragraph click would not rewrap (marked with a
    lone \\b line, the Example: blocks) stays as written, in a no-fill block."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(help_text)):
        lines = block.splitlines()
        if lines and lines[0].strip() == "\b":
            out.append(".PP\n.nf\n" + "\n".join(escape(line) for line in lines[1:]) + "\n.fi")
        elif lines:
            out.append(".PP\n" + "\n".join(escape(line.strip()) for line in lines))
    return out


def walk(
    command: click.Command, name: str, parent: click.Context | None
) -> list[tuple[str, click.Command, click.Context]]:
    """Every command under ``command`` (itself first), each with a context for its help."""
    ctx = click.Context(command, info_name=name, parent=parent)
    found = [(ctx.command_path, command, ctx)]
    if isinstance(command, click.Group):
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            if sub is not None and not sub.hidden:
                found.extend(walk(sub, sub_name, ctx))
    return found


def options(command: click.Command, ctx: click.Context) -> list[str]:
    """The options of ``command`` as tagged paragraphs, as --help lists them."""
    out: list[str] = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        opts, help_text = record
        # A long list of choices may break after any "|" (\\: marks where it may).
        tag = escape(opts).replace("|", "|\\:")
        out.append(f".TP\n\\fB{tag}\\fR\n{escape(help_text) if help_text else ''}")
    return out


def command_page() -> str:
    """replytrack(8)."""
    commands = walk(cli, "replytrack", None)
    _, root, root_ctx = commands[0]
    parts = [
        f'.TH REPLYTRACK 8 "" "replytrack {__version__}" "System Administration"',
        # No hyphenation: option names, paths and settings must read whole.
        ".nh",
        ".ad l",
        ".SH NAME",
        "replytrack \\- reply tracking for outbound campaign mail (SMTP proxy, Postfix milter,"
        " ops commands)",
        ".SH SYNOPSIS",
        ".B replytrack",
        "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        *paragraphs(root.help or ""),
        ".SH OPTIONS",
        "Given before the command; they apply to every command.",
        *options(root, root_ctx),
        ".SH COMMANDS",
    ]
    for path, command, ctx in commands[1:]:
        usage = " ".join(command.collect_usage_pieces(ctx))
        parts.append(f'.SS "{escape(path)}"')
        parts.append(f".B {escape(path)}\n{escape(usage)}")
        parts.extend(paragraphs(command.help or command.short_help or ""))
        parts.extend(options(command, ctx))
    parts += [
        ".SH ENVIRONMENT",
        ".TP",
        "\\fBREPLYTRACK_CONFIG\\fR",
        "The configuration file, or \\fBnone\\fR to read no file.",
        ".TP",
        "\\fBREPLYTRACK_\\fITABLE\\fB_\\fIKEY\\fR",
        "Overrides a setting of the file, e.g. \\fBREPLYTRACK_PROXY_LISTEN\\fR for"
        " \\fB[proxy] listen\\fR; see \\fBreplytrack.toml\\fR(5).",
        ".SH FILES",
        ".TP",
        "\\fI/etc/replytrack/replytrack.toml\\fR",
        "The configuration, read when \\fI./replytrack.toml\\fR does not exist.",
        ".TP",
        "\\fI/var/lib/replytrack\\fR",
        "The SQLite store, its write\\-ahead log and the Message\\-ID key file.",
        ".TP",
        "\\fI/var/spool/replytrack/journal\\fR",
        "Inbound verdicts the store could not take, waiting for replay.",
        ".TP",
        "\\fI/usr/share/doc/replytrack\\fR",
        "README.md, README.Debian and the Postfix examples.",
        ".SH SEE ALSO",
        "\\fBreplytrack.toml\\fR(5), \\fBpostconf\\fR(5), \\fBmaster\\fR(5)",
    ]
    return "\n".join(parts) + "\n"


@dataclass
class Setting:
    table: str
    key: str
    value: str
    comment: list[str]


def read_example(path: Path) -> tuple[list[str], list[tuple[str, list[str]]], list[Setting]]:
    """The example file's opening comment, each table's comment, and its settings in order,
    each with the comment lines just above it."""
    header: list[str] = []
    table_notes: list[tuple[str, list[str]]] = [("", [])]
    settings: list[Setting] = []
    table = ""
    pending: list[str] = []
    in_header = True
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if line.startswith("#"):
            text = line[1:].removeprefix(" ")
            if index == 1 and text.startswith("/etc/") and " - " in text:
                # The file's own name opens it; the page's SYNOPSIS says that already.
                text = text.partition(" - ")[2]
                text = text[:1].upper() + text[1:]
            pending.append(text)
        elif not line:
            if in_header:
                header, pending, in_header = pending, [], False
            elif pending and not settings_since_table(settings, table):
                table_notes[-1][1].extend(pending)
                pending = []
        elif line.startswith("["):
            table = line.strip("[]").strip()
            table_notes.append((table, []))
            pending, in_header = [], False
        elif "=" in line:
            key, _, value = (part.strip() for part in line.partition("="))
            # An array may span lines: read up to its closing bracket.
            while value.startswith("[") and value.count("[") > value.count("]"):
                value += " " + lines[index].strip()
                index += 1
            settings.append(Setting(table, key, value, pending))
            pending, in_header = [], False
    return header, table_notes, settings


def settings_since_table(settings: list[Setting], table: str) -> bool:
    return bool(settings) and settings[-1].table == table


def flat_name(table: str, key: str) -> str:
    return f"{table}_{key}" if table else key


def config_page(example: Path) -> str:
    """replytrack.toml(5)."""
    header, table_notes, settings = read_example(example)
    documented = {flat_name(s.table, s.key) for s in settings}
    parts = [
        f'.TH REPLYTRACK.TOML 5 "" "replytrack {__version__}" "File Formats"',
        # No hyphenation: option names, paths and settings must read whole.
        ".nh",
        ".ad l",
        ".SH NAME",
        "replytrack.toml \\- configuration of replytrack's proxy, milter and ops commands",
        ".SH SYNOPSIS",
        "\\fI/etc/replytrack/replytrack.toml\\fR",
        ".SH DESCRIPTION",
        ".PP",
        comment_lines(header),
        ".PP",
        "Every setting has an environment variable, named in each entry below, which"
        " overrides the file; command\\-line flags override both.",
    ]
    notes = dict(table_notes)
    for table in ["", *[t for t, _ in table_notes if t]]:
        in_table = [s for s in settings if s.table == table]
        if not in_table:
            continue
        parts.append(".SH " + (f'"[{escape(table)}] TABLE"' if table else '"TOP\\-LEVEL SETTINGS"'))
        if notes.get(table):
            parts.append(".PP\n" + comment_lines(notes[table]))
        first = True
        for setting in in_table:
            tag = f"\\fB{escape(setting.key)}\\fR = {escape(setting.value)}"
            env = ENV_PREFIX + flat_name(setting.table, setting.key).upper()
            # A key without a comment of its own shares the one of the key above it.
            if setting.comment or first:
                parts.append(f".TP\n{tag}")
            else:
                parts.append(f".TQ\n{tag}")
            if setting.comment:
                parts.append(comment_lines(setting.comment))
            parts.append(f".br\nEnvironment: \\fB{escape(env)}\\fR.")
            first = False
    missing = [
        f
        for f in dataclasses.fields(Config)
        if f.name not in documented and f.name not in INTERNAL_FIELDS
    ]
    if missing:
        log.warning("not in %s: %s", example, ", ".join(f.name for f in missing))
        parts += [".SH OTHER SETTINGS", "Not shown in the example file; their defaults:"]
        for f in missing:
            table = next((t for t in TABLES if f.name.startswith(t + "_")), "")
            key = f.name[len(table) + 1 :] if table else f.name
            default = f.default if f.default is not dataclasses.MISSING else "[]"
            where = f"[{table}] " if table else ""
            parts.append(
                f".TP\n{escape(where)}\\fB{escape(key)}\\fR = {escape(repr(default))}"
                f"\n.br\nEnvironment: \\fB{escape(ENV_PREFIX + f.name.upper())}\\fR."
            )
    parts += [
        ".SH FILES",
        "\\fI/usr/share/doc/replytrack/examples/replytrack.toml\\fR, the example as shipped.",
        ".SH SEE ALSO",
        "\\fBreplytrack\\fR(8)",
    ]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="make-man: %(message)s")
    parser = argparse.ArgumentParser(description="Write replytrack.8 and replytrack.toml.5.")
    parser.add_argument("--toml", type=Path, default=Path("postfix-example/replytrack.toml"))
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replytrack.8").write_text(command_page(), encoding="utf-8")
    (args.out / "replytrack.toml.5").write_text(config_page(args.toml), encoding="utf-8")
    log.info("wrote %s and %s", args.out / "replytrack.8", args.out / "replytrack.toml.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
