"""Allow ``python -m replytrack``."""

from __future__ import annotations

from replytrack.cli import main

main()
