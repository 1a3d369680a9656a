"""The ops CLI: ``replytrack --help``.

Each subcommand lives in its own module under ``replytrack.cli`` and registers itself on
the ``cli`` group when imported; ``COMMAND_MODULES`` lists them.
"""

from __future__ import annotations

import importlib
import sys

from replytrack.cli.common import cli

COMMAND_MODULES = [
    "replytrack.cli.messages",
    "replytrack.cli.init_cmd",
    "replytrack.cli.listing",
    "replytrack.cli.control",
    "replytrack.cli.monitor_cmd",
    "replytrack.cli.doctor",
    "replytrack.cli.backfill",
    "replytrack.cli.maintenance",
    "replytrack.cli.notify_cmd",
    "replytrack.cli.milter_cmd",
    "replytrack.cli.journal_cmd",
    "replytrack.cli.proxy_cmd",
    "replytrack.cli.suppress_cmd",
    "replytrack.cli.web_cmd",
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name)


def main() -> None:
    """Console entry point."""
    cli(prog_name="replytrack", auto_envvar_prefix=None)
    sys.exit(0)
