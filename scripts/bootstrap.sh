#!/usr/bin/env bash
# Install what replytrack needs on a fresh Debian machine: Debian packages
# (Postfix and PostgreSQL for the tests, libmilter-dev to build pymilter, swaks)
# and a virtual environment in .venv with the project and its test tools.
# Idempotent: a second run only checks. Never configures or starts the
# system Postfix ("No configuration" is preseeded) or the system PostgreSQL
# cluster (policy-rc.d blocks starts while the packages install).
set -euo pipefail
cd "$(dirname "$0")/.."

# postgresql: the tests start a private server of their own from its binaries; the
# system cluster that Debian creates is never started (policy-rc.d, below).
# lintian: tests/test_package.py checks the .deb with it (and must not skip under CI).
PKGS=(postfix swaks libmilter-dev sqlite3 postgresql iproute2 gcc libc6-dev python3-dev python3-venv
      lintian)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# python3-dev / python3-venv are only needed when the interpreter lacks headers / venv.
PY=${PYTHON:-python3}
if "$PY" -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"]+"/Python.h"))' 2>/dev/null; then
  missing=("${missing[@]/python3-dev}")
fi
if "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  missing=("${missing[@]/python3-venv}")
fi
want=()
for p in "${missing[@]}"; do [ -n "$p" ] && want+=("$p"); done
if [ ${#want[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "bootstrap: installing Debian packages: ${want[*]}"
  printf '%s\n' 'postfix postfix/main_mailer_type select No configuration' \
                'postfix postfix/mailname string replytrack.invalid' | $SUDO debconf-set-selections
  created=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d; created=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >/dev/null || true
  $SUDO apt-get install -y -q --no-install-recommends "${want[@]}" >/tmp/replytrack-apt.log 2>&1 \
    || { tail -20 /tmp/replytrack-apt.log >&2; [ "$created" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d; exit 1; }
  [ "$created" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.replytrack-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing replytrack and test tools into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi
