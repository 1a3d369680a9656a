#!/usr/bin/env bash
# Build the Debian package: replytrack_VERSION-1_ARCH.deb in dist/ (or --out DIR).
#
# The package carries its own virtual environment in /opt/replytrack/venv, built here with
# Debian's /usr/bin/python3 (as dh-virtualenv does): uvloop, pymilter, aiohttp and psycopg
# have C parts, Debian does not package every dependency at the versions replytrack needs,
# and a venv made from another interpreter (pyenv, /usr/local) would not run on a fresh
# machine. So the package is architecture- and Python-version-specific: it depends on the
# python3.X it was built with, and on libmilter1.0.1, which pymilter links against.
#
# The venv is made in a staging directory, then every path naming that directory is
# rewritten to /opt/replytrack/venv and the bytecode compiled for the final path, so the
# tree is what an installed one looks like. Needs dpkg-deb, gcc, libmilter-dev,
# python3-venv, python3-dev; as root it installs the missing ones with apt-get. Reads
# nothing from /etc/replytrack; writes only a temporary directory and the output one.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

OUT=$REPO/dist
REVISION=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$(realpath -m "$2"); shift 2 ;;
    --revision) REVISION=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb: unknown argument $1 (--out DIR, --revision N)" >&2; exit 2 ;;
  esac
done

PY=/usr/bin/python3
PKGS=(dpkg-dev gcc libc6-dev libmilter-dev python3-dev python3-venv)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "build-deb: install first: apt-get install ${missing[*]}" >&2; exit 1
  fi
  echo "build-deb: installing build dependencies: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || true
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/replytrack-deb-apt.log 2>&1 \
    || { tail -20 /tmp/replytrack-deb-apt.log >&2; exit 1; }
fi

VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# The upstream part only: any Debian revision of the same python3.X runs the venv.
PYFULL=$(dpkg-query -W -f='${Version}' "python$PYVER" | sed 's/-.*//')
ARCH=$(dpkg --print-architecture)
DEB=replytrack_${VERSION}-${REVISION}_${ARCH}.deb
DEST=/opt/replytrack/venv
# As dch does: DEBFULLNAME and DEBEMAIL name who built it.
MAINTAINER="${DEBFULLNAME:-replytrack maintainers} <${DEBEMAIL:-replytrack@example.org}>"

WORK=$(mktemp -d /tmp/replytrack-deb.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/root
VENV=$STAGE$DEST
started=$SECONDS

# A copy of the sources: building a wheel in the checkout would leave build/ behind.
mkdir -p "$WORK/src"
tar -c --exclude=__pycache__ pyproject.toml README.md replytrack | tar -x -C "$WORK/src"

echo "build-deb: virtual environment with $PY ($PYVER)"
# Pointing at python3.X, not python3: the venv must keep the interpreter it was built for
# when Debian's default python3 moves on.
"/usr/bin/python$PYVER" -m venv "$VENV"
# pip's own chatter (this machine's index settings) goes to a log, shown when it fails.
"$VENV/bin/pip" install -q --no-compile --no-cache-dir --use-pep517 "$WORK/src[postgresql]" \
  >"$WORK/pip.log" 2>&1 || { tail -30 "$WORK/pip.log" >&2; exit 1; }
# What the package runs is fixed at build time: pip would only let an admin drift from it.
"$VENV/bin/pip" uninstall -q -y pip setuptools
rm -f "$VENV"/bin/pip* "$VENV"/bin/activate.csh "$VENV"/bin/activate.fish "$VENV"/bin/Activate.ps1

# Shared objects as Debian ships them: not executable, stripped of debugging symbols, except
# those auditwheel patched (a RUNPATH to their bundled libraries), which strip can break.
find "$VENV" -name '*.so*' -type f -exec chmod 0644 {} +
find "$VENV" -name '*.so' -type f -print0 | while IFS= read -r -d '' so; do
  objdump -p "$so" | grep -qE 'RUNPATH|RPATH' || strip --strip-unneeded "$so"
done
find "$VENV" -name .gitignore -delete
# Every compiled module still loads.
"$VENV/bin/python" -c 'import aiohttp, frozenlist, milter, multidict, propcache, psycopg, regex, uvloop'

# Licences of what is bundled, for the copyright file.
"$VENV/bin/python" - >"$WORK/bundled" <<'PYEOF'
import importlib.metadata as md

for dist in sorted(md.distributions(), key=lambda d: d.metadata["Name"].lower()):
    meta = dist.metadata
    licence = meta.get("License-Expression") or ""
    if not licence:
        classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or []
                       if c.startswith("License ::")]
        licence = ", ".join(classifiers) or (meta.get("License") or "see its metadata").splitlines()[0]
    print(f" {meta['Name']} {meta['Version']}: {licence[:100]}")
PYEOF

echo "build-deb: man pages"
install -d "$STAGE/usr/share/man/man8" "$STAGE/usr/share/man/man5"
"$VENV/bin/python" scripts/make-man.py --toml postfix-example/replytrack.toml \
  --out "$WORK/man"
gzip -9n -c "$WORK/man/replytrack.8" >"$STAGE/usr/share/man/man8/replytrack.8.gz"
gzip -9n -c "$WORK/man/replytrack.toml.5" >"$STAGE/usr/share/man/man5/replytrack.toml.5.gz"

# Where replytrack was installed from (a directory since deleted) means nothing installed.
for info in "$VENV"/lib/python*/site-packages/replytrack-*.dist-info; do
  rm -f "$info/direct_url.json"; sed -i '/direct_url.json/d' "$info/RECORD"
done
# The staging path must not survive anywhere: shebangs, activate, pyvenv.cfg, RECORDs.
grep -rlI --null -F "$VENV" "$VENV" | xargs -0 -r sed -i "s|$VENV|$DEST|g"
if grep -rqI -F "$WORK" "$VENV"; then
  echo "build-deb: the staging path is still named in:" >&2
  grep -rlI -F "$WORK" "$VENV" >&2; exit 1
fi
# Bytecode for the installed path (ProtectSystem=strict: the daemons cannot write it).
"$VENV/bin/python" -m compileall -q -j 0 -s "$STAGE" -p / "$VENV/lib" >/dev/null

echo "build-deb: files"
install -d "$STAGE/usr/bin"
ln -s "$DEST/bin/replytrack" "$STAGE/usr/bin/replytrack"
install -d "$STAGE/lib/systemd/system/replytrack-milter.service.d"
for unit in replytrack-proxy.service replytrack-milter.service; do
  sed "1s|/etc/systemd/system/|/lib/systemd/system/|" "postfix-example/$unit" \
    >"$STAGE/lib/systemd/system/$unit"
done
install -m 0644 packaging/debian/replytrack-milter-chroot.conf \
  "$STAGE/lib/systemd/system/replytrack-milter.service.d/chroot-socket.conf"
# 0640 from the start: it may hold secrets; postinst gives it to group replytrack.
install -d -m 0755 "$STAGE/etc/replytrack"
install -m 0640 postfix-example/replytrack.toml "$STAGE/etc/replytrack/replytrack.toml"

DOC=$STAGE/usr/share/doc/replytrack
install -d "$DOC/examples"
install -m 0644 README.md packaging/debian/README.Debian "$DOC/"
install -d "$STAGE/usr/share/lintian/overrides"
install -m 0644 packaging/debian/lintian-overrides "$STAGE/usr/share/lintian/overrides/replytrack"
for f in README.md main.cf.inbound master.cf.reinject master.cf.content-filter \
         postgresql-roles.sql replytrack.toml replytrack-proxy.service replytrack-milter.service; do
  [ -f "postfix-example/$f" ] && install -m 0644 "postfix-example/$f" "$DOC/examples/"
done
{ cat packaging/debian/copyright.in
  printf '\nFiles: opt/replytrack/venv/*\nCopyright: the authors of each distribution below\n'
  printf 'License: various\n The bundled Python distributions and their declared licences:\n'
  cat "$WORK/bundled"; } >"$DOC/copyright"
DATE=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
printf 'replytrack (%s-%s) unstable; urgency=medium\n\n  * Built from the repository by scripts/build-deb.sh.\n\n -- %s  %s\n' \
  "$VERSION" "$REVISION" "$MAINTAINER" "$DATE" | gzip -9n >"$DOC/changelog.Debian.gz"

# Depends: the interpreter, and the packages holding every shared library the compiled
# extensions need that the venv does not bundle itself (manylinux wheels carry their own).
# init-system-helpers (deb-systemd-invoke) is Essential: never named.
declare -A deps=(["python$PYVER (>= $PYFULL)"]=1 [adduser]=1)
while read -r lib; do
  [ -n "$(find "$VENV" -name "$lib" -print -quit)" ] && continue
  # Whole pipelines read to the end: an early exit would SIGPIPE the writer (pipefail).
  libs=$(ldconfig -p)
  path=$(awk -v l="$lib" '$1 == l && /x86-64|64bit|aarch64/ && !p {print $NF; p=1}' <<<"$libs")
  [ -n "$path" ] || path=$(awk -v l="$lib" '$1 == l && !p {print $NF; p=1}' <<<"$libs")
  [ -n "$path" ] || { echo "build-deb: no package has $lib" >&2; exit 1; }
  owner=$(dpkg -S "$(realpath "$path")" 2>/dev/null || dpkg -S "$path")
  pkg=$(awk -F: 'NR == 1 {print $1}' <<<"$owner")
  deps[$pkg]=1
done < <(find "$VENV" -name '*.so*' -type f -exec objdump -p {} \; 2>/dev/null \
           | awk '/NEEDED/ {print $2}' | sort -u)
DEPENDS=$(printf '%s\n' "${!deps[@]}" | sort | paste -sd, | sed 's/,/, /g')

install -d "$STAGE/DEBIAN"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm \
  "$STAGE/DEBIAN/"
echo /etc/replytrack/replytrack.toml >"$STAGE/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat >"$STAGE/DEBIAN/control" <<EOF
Package: replytrack
Version: $VERSION-$REVISION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $SIZE
Depends: $DEPENDS
Suggests: postfix
Section: mail
Priority: optional
Description: reply tracking for outbound campaign mail
 An SMTP proxy stamps a signed Message-ID on every outbound mail and records
 it; a Postfix milter recognises replies (from any address), auto-replies and
 bounces, and stops the campaign for whoever replied. One SQLite store on one
 host, or one PostgreSQL database shared by several.
 .
 Python dependencies are bundled in /opt/replytrack/venv.
EOF

mkdir -p "$OUT"
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$OUT/$DEB" >/dev/null
echo "build-deb: $OUT/$DEB ($(du -k "$OUT/$DEB" | cut -f1) KiB, installed ${SIZE} KiB, $((SECONDS - started)) s)"
