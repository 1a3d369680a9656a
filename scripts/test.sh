#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs what is missing (Debian packages,
# .venv), then runs ruff and pytest. The end-to-end tests start private Postfix instances
# on loopback (needs root, as Postfix's master does). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check replytrack tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
