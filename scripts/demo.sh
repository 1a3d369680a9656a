#!/usr/bin/env bash
# The main job, end to end, on this machine: a private Postfix built from postfix-example/
# (mode a: main.cf.inbound + master.cf.reinject), `replytrack proxy` and `replytrack milter`,
# all on loopback, with the embedded default store (a SQLite file under ./run/demo/).
#
#   1. a campaign mail goes out through the proxy and is delivered with our Message-ID,
#   2. the prospect's reply comes in through Postfix and the milter flags it,
#   3. the campaign is stopped for the prospect (events, enrollments),
#   4. the next step of the campaign is refused (550 5.7.1).
#
# Then everything is stopped again (also on failure or Ctrl-C); nothing stays running.
# Logs, the store and the delivered mail stay in ./run/demo/ to look at. Safe to run again:
# each run starts from a fresh ./run/demo/. Run as root (Postfix's master runs as root).
# The system Postfix is never configured, started or touched.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

RUN=$ROOT/run/demo
STATE=$ROOT/run/demo.state
RT=$ROOT/.venv/bin/replytrack
DOMAIN=example.test
ID_DOMAIN=track.example.test
CAMPAIGN=spring-demo

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
die() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: Postfix's master must start as root (it drops to user postfix)"

# --- stopping: used at exit and for leftovers of an interrupted earlier run ---------------

stop_pid() {  # stop_pid PID NAME: TERM, wait up to 20 s, then KILL; only our replytrack
  local pid=$1 name=$2 i
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 0
  grep -qa replytrack "/proc/$pid/cmdline" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
  if [ -d "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
  say "stopped $name (pid $pid)"
}

stop_postfix() {  # stop_postfix ETC_DIR SPOOL_DIR
  local etc=$1 spool=$2 pid i
  [ -f "$spool/pid/master.pid" ] || return 0
  pid=$(tr -dc '0-9' <"$spool/pid/master.pid")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q master "/proc/$pid/comm" 2>/dev/null || return 0
  script -qec "postfix -c $etc stop" /dev/null >/dev/null 2>&1 || true
  for i in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
  [ -d "/proc/$pid" ] && die "Postfix master $pid did not stop"
  say "stopped Postfix (master pid $pid)"
}

stop_all() {
  [ -f "$STATE" ] || return 0
  local kind a b
  while read -r kind a b; do
    case "$kind" in
      pid) stop_pid "$a" "$b";;
      postfix) stop_postfix "$a" "$b";;
    esac
  done < <(tac "$STATE")
  rm -f "$STATE"
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  step "Stopping everything"
  stop_all
  if [ "$rc" = 0 ]; then
    printf '\ndemo: OK. Logs, store and delivered mail are in %s\n' "${RUN#"$ROOT"/}"
  else
    printf '\ndemo: failed (exit %s). Logs are in %s\n' "$rc" "${RUN#"$ROOT"/}" >&2
  fi
  exit "$rc"
}

# --- helpers -------------------------------------------------------------------------------

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() {  # pick_port DEFAULT: the default when free, else any free loopback port
  if ! port_open "$1"; then echo "$1"; return; fi
  "$ROOT/.venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {  # wait_port PORT NAME PID LOG
  local i
  for i in $(seq 150); do
    port_open "$1" && return 0
    [ -d "/proc/$3" ] || { tail -20 "$4" >&2; die "$2 exited at start (log: $4)"; }
    sleep 0.2
  done
  tail -20 "$4" >&2; die "$2 not listening on 127.0.0.1:$1"
}

delivered() {  # delivered SUBJECT: path of the delivered message with that Subject (waits)
  local i f
  for i in $(seq 150); do
    f=$(grep -lsx "Subject: $1" "$PFBASE"/mail/maildir/new/* 2>/dev/null | head -1 || true)
    [ -n "$f" ] && { echo "$f"; return 0; }
    sleep 0.2
  done
  tail -15 "$PFBASE/log/maillog" >&2
  die "'$1' was not delivered"
}

header() {  # header NAME FILE: the first value of that header (unfolded), empty when absent
  awk -v name="$1" 'BEGIN { IGNORECASE = 1 }
    found && /^[ \t]/ { sub(/^[ \t]+/, " "); value = value $0; next }
    found { exit }
    /^$/ { exit }
    tolower($0) ~ "^" tolower(name) ":" { found = 1; value = substr($0, length(name) + 2) }
    END { sub(/^[ \t]+/, "", value); gsub(/\r/, "", value); print value }' "$2"
}

start_daemon() {  # start_daemon NAME PORT ARGS...: replytrack in the background
  local name=$1 port=$2 log=$RUN/$1.log
  shift 2
  "$RT" --db "$RUN/replytrack.db" --domain "$ID_DOMAIN" "$@" >"$log" 2>&1 &
  local pid=$!
  echo "pid $pid $name" >>"$STATE"
  wait_port "$port" "replytrack $name" "$pid" "$log"
  say "replytrack $name listening on 127.0.0.1:$port (pid $pid, log ${log#"$ROOT"/})"
}

# --- 0. set up -----------------------------------------------------------------------------

step "Installing what is missing (scripts/bootstrap.sh)"
scripts/bootstrap.sh
say "Debian packages and .venv ready"

mkdir -p "$ROOT/run"
if [ -f "$STATE" ]; then
  step "Stopping leftovers of an earlier run"
  stop_all
fi
trap on_exit EXIT
trap 'exit 130' INT TERM

rm -rf "$RUN"
mkdir -p "$RUN"
# Only this demo's settings: no config file (an installed /etc/replytrack/replytrack.toml
# would lend it its ports, internal domains and key) and no REPLYTRACK_* from the shell.
for var in $(compgen -e); do
  case $var in REPLYTRACK_*) unset "$var" ;; esac
done
export REPLYTRACK_CONFIG=none
# The milter's journals stay in this run's directory, not the deployment's /var/spool.
export REPLYTRACK_MILTER_JOURNAL="$RUN/journal/journal"
export REPLYTRACK_MILTER_JOURNAL_FALLBACK="$RUN/journal-fallback/journal"
mkdir -p "$RUN/journal" "$RUN/journal-fallback"
chmod 755 "$ROOT/run" "$RUN"
# Postfix's daemons run as user postfix and must reach their queue directory; a checkout
# under a private home directory would not let them, so fall back to /tmp then.
PFBASE=$RUN/postfix
if ! runuser -u postfix -- test -x "$RUN" 2>/dev/null; then
  PFBASE=$(mktemp -d /tmp/replytrack-demo-postfix.XXXXXX)
  chmod 755 "$PFBASE"
  ln -sfn "$PFBASE" "$RUN/postfix"
fi
echo "postfix $PFBASE/etc $PFBASE/spool" >"$STATE"

SMTP=$(pick_port 2525)
PROXY=$(pick_port 10025)
REINJECT=$(pick_port 10026)
MILTER=$(pick_port 8894)
SUBMIT=$(pick_port 10027)

step "Store and key (replytrack init)"
"$RT" --db "$RUN/replytrack.db" --domain "$ID_DOMAIN" init | sed 's/^/   /'

step "Private Postfix from postfix-example/ (main.cf.inbound + master.cf.reinject)"
"$ROOT/.venv/bin/python" - "$PFBASE" "$SMTP" "$PROXY" "$REINJECT" "$MILTER" "$SUBMIT" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, ".")
from tests.support.postfix import PostfixError, PostfixLab, render_example  # noqa: E402

base = sys.argv[1]
smtp, proxy, reinject, milter, submit = (int(a) for a in sys.argv[2:])
ports = {"proxy": proxy, "reinject": reinject, "milter": milter, "submit": submit}
example = Path("postfix-example")
lab = PostfixLab(
    base,
    port=smtp,
    main_cf=render_example((example / "main.cf.inbound").read_text(), ports),
    master_cf=render_example((example / "master.cf.reinject").read_text(), ports),
)
try:
    lab.start()
except PostfixError as exc:
    sys.exit(f"demo: Postfix did not start: {exc}")
print(f"   Postfix: inbound smtpd 127.0.0.1:{smtp} (replytrack milter last, default_action=accept)")
print(f"            reinjection 127.0.0.1:{reinject} (no milter, loopback only)")
print(f"            mail for *@example.test lands in {lab.mail_dir}/maildir/new/")
print(f"   smtpd_milters = {lab.postconf('-h', 'smtpd_milters').strip()}")
EOF

step "replytrack proxy and milter"
start_daemon milter "$MILTER" milter --socket "inet:$MILTER@127.0.0.1"
start_daemon proxy "$PROXY" proxy --listen "127.0.0.1:$PROXY" --upstream "127.0.0.1:$REINJECT"

SWAKS=(swaks --server 127.0.0.1 --helo demo.client.test --suppress-data --hide-informational)

# --- 1. campaign mail out ------------------------------------------------------------------

step "1. The campaign engine sends step 1 through the proxy (127.0.0.1:$PROXY)"
"${SWAKS[@]}" --port "$PROXY" --from "sales@$DOMAIN" --to "prospect@$DOMAIN" \
  --header "Subject: Spring offer, step 1" \
  --header "X-ReplyTrack-Campaign: $CAMPAIGN" --header "X-ReplyTrack-Step: 1" \
  --body "Hello, a spring offer for you." >"$RUN/swaks-step1.log" 2>&1 \
  || { cat "$RUN/swaks-step1.log" >&2; die "step 1 was not accepted by the proxy"; }
grep -E '^ *<- +250 ' "$RUN/swaks-step1.log" | tail -1 | sed -E 's/^ *<- +/   proxy said: /'
STEP1=$(delivered "Spring offer, step 1")
MID=$(header Message-ID "$STEP1")
say "delivered to prospect@$DOMAIN: ${STEP1#"$ROOT"/}"
say "  Message-ID:            $MID"
say "  X-Original-Message-ID: $(header X-Original-Message-ID "$STEP1")"
[[ "$MID" == *"@$ID_DOMAIN>" ]] || die "the delivered mail does not carry our Message-ID ($MID)"
! grep -qi '^X-ReplyTrack-' "$STEP1" || die "X-ReplyTrack-* headers leaked to the recipient"
say "  X-ReplyTrack-Campaign / -Step: removed before relaying"
"$RT" --db "$RUN/replytrack.db" messages | sed 's/^/   /'

# --- 2. the prospect replies ---------------------------------------------------------------

step "2. The prospect replies; the mail arrives at Postfix (127.0.0.1:$SMTP)"
"${SWAKS[@]}" --port "$SMTP" --from "prospect@$DOMAIN" --to "sales@$DOMAIN" \
  --header "Subject: Re: Spring offer, step 1" \
  --header "In-Reply-To: $MID" --header "References: $MID" \
  --body "Sounds good, call me tomorrow." >"$RUN/swaks-reply.log" 2>&1 \
  || { cat "$RUN/swaks-reply.log" >&2; die "Postfix did not accept the reply"; }
REPLY=$(delivered "Re: Spring offer, step 1")
FLAG=$(header X-ReplyTrack "$REPLY")
say "delivered to sales@$DOMAIN: ${REPLY#"$ROOT"/}"
say "  X-ReplyTrack: $FLAG"
[[ "$FLAG" == reply* ]] || die "the milter did not flag the reply (see $RUN/milter.log)"

# --- 3. the campaign is stopped ------------------------------------------------------------

step "3. What replytrack recorded"
say "replytrack events:"
"$RT" --db "$RUN/replytrack.db" events | sed 's/^/   /'
say "replytrack enrollments:"
"$RT" --db "$RUN/replytrack.db" enrollments | sed 's/^/   /'
STATUS=$("$RT" --db "$RUN/replytrack.db" enrollments --json | "$ROOT/.venv/bin/python" -c '
import json, sys
rows = [r for r in json.load(sys.stdin) if r["recipient"] == sys.argv[1]]
print(rows[0]["status"] if rows else "none")' "prospect@$DOMAIN")
[ "$STATUS" = stopped ] || die "the enrollment of prospect@$DOMAIN is '$STATUS', not stopped"

# --- 4. the next step is refused -----------------------------------------------------------

step "4. The campaign engine sends step 2 through the proxy"
if "${SWAKS[@]}" --port "$PROXY" --from "sales@$DOMAIN" --to "prospect@$DOMAIN" \
  --header "Subject: Spring offer, step 2" \
  --header "X-ReplyTrack-Campaign: $CAMPAIGN" --header "X-ReplyTrack-Step: 2" \
  --body "Following up on my offer." >"$RUN/swaks-step2.log" 2>&1; then
  cat "$RUN/swaks-step2.log" >&2
  die "step 2 was accepted although the prospect replied"
fi
REFUSAL=$(grep -E '^ *<\*\* +550' "$RUN/swaks-step2.log" | tail -1 | sed 's/^ *<\*\* *//')
[[ "$REFUSAL" == "550 5.7.1"* ]] || { cat "$RUN/swaks-step2.log" >&2; die "expected 550 5.7.1"; }
say "proxy said: $REFUSAL"
sleep 1
if grep -lsx "Subject: Spring offer, step 2" "$PFBASE"/mail/maildir/new/* >/dev/null; then
  die "step 2 reached the prospect"
fi
say "nothing reached Postfix or the prospect"
