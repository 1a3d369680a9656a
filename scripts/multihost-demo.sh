#!/usr/bin/env bash
# Several hosts, one store, on this machine: a private PostgreSQL, two private Postfix MX
# instances built from postfix-example/ (main.cf.inbound + master.cf.reinject), each with
# its own `replytrack milter`, and one `replytrack proxy` (the relay host's), all on
# loopback, all sharing one key file and one PostgreSQL database.
#
#   1. a campaign mail goes out through the proxy (relayed by MX A's reinjection port),
#   2. the prospect's reply arrives at MX B; MX B's milter flags it and stops the campaign,
#   3. the proxy refuses the next step (550 5.7.1): the stop made on one host holds on all,
#   4. PostgreSQL stops: a second prospect's reply at MX A is still delivered at once and
#      journaled by MX A's milter; the proxy answers 451 4.3.0 (the client retries later),
#   5. PostgreSQL starts again: the milter replays its journal by itself, the second
#      prospect is stopped too, nothing is lost.
#
# Then everything is stopped again (also on failure or Ctrl-C); nothing stays running.
# Logs, the journals and the delivered mail stay in ./run/multihost/ to look at. Safe to
# run again. Run as root (Postfix's master runs as root; PostgreSQL runs as user nobody).
# The system Postfix and PostgreSQL are never configured, started or touched, and no
# /etc/replytrack file is read: every replytrack command uses ./run/multihost/replytrack.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

RUN=$ROOT/run/multihost
STATE=$ROOT/run/multihost.state
RT=$ROOT/.venv/bin/replytrack
PY=$ROOT/.venv/bin/python
DOMAIN=example.test
ID_DOMAIN=track.example.test
CAMPAIGN=spring-multihost
PGUSER_OS=nobody
PGDB=replytrack

DEMO=multihost-demo
KEPT="Logs, journals and delivered mail"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

[ "$(id -u)" = 0 ] || die "run as root: Postfix's master must start as root (it drops to user postfix)"

pg() {  # pg TOOL ARGS...: a PostgreSQL server binary, as the unprivileged user
  runuser -u "$PGUSER_OS" -- "$PGBIN/$1" "${@:2}"
}

start_milter() {  # start_milter NAME PORT: a milter with journals of its own
  local name=$1 port=$2
  mkdir -p "$RUN/$name/journal" "$RUN/$name/journal-fallback"
  REPLYTRACK_MILTER_JOURNAL="$RUN/$name/journal/journal" \
  REPLYTRACK_MILTER_JOURNAL_FALLBACK="$RUN/$name/journal-fallback/journal" \
    start_daemon "$name-milter" "$port" milter --socket "inet:$port@127.0.0.1"
}

status_of() {  # status_of RECIPIENT: the enrollment status in the campaign (or "none")
  "$RT" enrollments --json | "$PY" -c '
import json, sys
rows = [r for r in json.load(sys.stdin) if r["recipient"] == sys.argv[1] and r["campaign"] == sys.argv[2]]
print(rows[0]["status"] if rows else "none")' "$1" "$CAMPAIGN"
}

SWAKS=(swaks --server 127.0.0.1 --helo demo.client.test --suppress-data --hide-informational)

campaign() {  # campaign RECIPIENT STEP SUBJECT LOG: submit one step to the proxy
  "${SWAKS[@]}" --port "$PROXY" --from "sales@$DOMAIN" --to "$1" \
    --header "Subject: $3" \
    --header "X-ReplyTrack-Campaign: $CAMPAIGN" --header "X-ReplyTrack-Step: $2" \
    --body "Hello, a spring offer for you." >"$4" 2>&1
}

last_reply() {  # last_reply LOG: the reply that decided the mail in a swaks transcript
  # The answer to the end of DATA, or else the first refusal (MAIL, RCPT, DATA).
  awk '/lines sent/ { sent = 1; next }
    sent && /^ *(<-|<\*\*) +[0-9][0-9][0-9]/ { line = $0; exit }
    !refusal && /^ *<\*\* +[0-9][0-9][0-9]/ { refusal = $0 }
    END { if (line == "") line = refusal; sub(/^ *(<-|<\*\*) +/, "", line); print line }' "$1"
}

reply() {  # reply PORT FROM SUBJECT IN_REPLY_TO LOG: the prospect answers, at an MX
  "${SWAKS[@]}" --port "$1" --from "$2" --to "sales@$DOMAIN" \
    --header "Subject: $3" --header "In-Reply-To: $4" --header "References: $4" \
    --body "Sounds good, call me tomorrow." >"$5" 2>&1
}

# --- 0. set up -----------------------------------------------------------------------------

step "Installing what is missing (scripts/bootstrap.sh: Postfix, PostgreSQL, swaks, .venv)"
scripts/bootstrap.sh
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
"$PY" -c 'import psycopg, psycopg_pool' 2>/dev/null \
  || die "psycopg is not installed in .venv (pip install -e '.[postgresql]')"
say "Debian packages and .venv ready (PostgreSQL binaries: $PGBIN)"

mkdir -p "$ROOT/run"
if [ -f "$STATE" ]; then
  step "Stopping leftovers of an earlier run"
  stop_all
fi
trap on_exit EXIT
trap 'exit 130' INT TERM

rm -rf "$RUN"
mkdir -p "$RUN"
chmod 755 "$ROOT/run" "$RUN"
: >"$STATE"

# Postfix's daemons (user postfix) and PostgreSQL (user nobody) must reach their
# directories; a checkout under a private home directory would not let them, so they live
# in /tmp then, linked from ./run/multihost/.
private_dir() {  # private_dir NAME USER: a directory USER can reach, linked as $RUN/NAME
  local name=$1 user=$2 dir
  if runuser -u "$user" -- test -x "$RUN" 2>/dev/null; then
    dir=$RUN/$name; mkdir -p "$dir"
  else
    dir=$(mktemp -d "/tmp/replytrack-multihost-$name.XXXXXX")
    ln -sfn "$dir" "$RUN/$name"
  fi
  chmod 755 "$dir"
  echo "$dir"
}

PGPORT=$(pick_port 55432)
PROXY=$(pick_port 10025)
SMTP_A=$(pick_port 2525); REINJECT_A=$(pick_port 10026); MILTER_A=$(pick_port 8894)
SMTP_B=$(pick_port 2526); REINJECT_B=$(pick_port 10036); MILTER_B=$(pick_port 8895)

# --- 1. PostgreSQL -------------------------------------------------------------------------

step "Private PostgreSQL on 127.0.0.1:$PGPORT (as user $PGUSER_OS, its own data directory)"
PGBASE=$(private_dir pg "$PGUSER_OS")
chown "$PGUSER_OS" "$PGBASE"
PGDATA=$PGBASE/data
echo "pg $PGBIN $PGDATA" >>"$STATE"
(cd "$PGBASE" && pg initdb -D "$PGDATA" -U replytrack --auth=trust -E UTF8 --locale=C \
  --no-sync >"$RUN/initdb.log" 2>&1) || { cat "$RUN/initdb.log" >&2; die "initdb failed"; }
cat >>"$PGDATA/postgresql.conf" <<EOF
# replytrack multihost demo: loopback only, a socket in its own directory
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGBASE'
EOF
(cd "$PGBASE" && pg pg_ctl -D "$PGDATA" -l "$PGBASE/server.log" -w -t 60 start >/dev/null) \
  || { tail -20 "$PGBASE/server.log" >&2; die "PostgreSQL did not start"; }
(cd "$PGBASE" && pg psql -h 127.0.0.1 -p "$PGPORT" -U replytrack -d postgres -qc "CREATE DATABASE $PGDB") \
  || die "CREATE DATABASE failed"
DB_URL="postgresql://replytrack@127.0.0.1:$PGPORT/$PGDB"
say "store: $DB_URL"

# --- 2. replytrack config, key and schema --------------------------------------------------

step "One config and one key file for every host (replytrack init creates the schema)"
CONFIG=$RUN/replytrack.toml
cat >"$CONFIG" <<EOF
# The demo's own config: every host of a real site has one like it, with the same db,
# domain and key file (see postfix-example/README.md, "Several hosts").
db = "$DB_URL"
domain = "$ID_DOMAIN"
secret_file = "$RUN/replytrack.secret"
EOF
export REPLYTRACK_CONFIG=$CONFIG
"$RT" init | sed 's/^/   /'
say "key file: $(stat -c '%a %U' "$RUN/replytrack.secret") ${RUN#"$ROOT"/}/replytrack.secret (shared by proxy and both milters)"

# --- 3. two MX hosts and the relay host's proxy --------------------------------------------

step "Two private Postfix MX instances from postfix-example/, a milter each"
start_milter mx-a "$MILTER_A"
start_milter mx-b "$MILTER_B"
MX_A=$(private_dir mx-a-postfix postfix)
MX_B=$(private_dir mx-b-postfix postfix)
echo "postfix $MX_A/etc $MX_A/spool" >>"$STATE"
echo "postfix $MX_B/etc $MX_B/spool" >>"$STATE"
"$PY" - "$MX_A" "$SMTP_A" "$REINJECT_A" "$MILTER_A" "$MX_B" "$SMTP_B" "$REINJECT_B" "$MILTER_B" \
  "$PROXY" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, ".")
from tests.support.net import free_port  # noqa: E402
from tests.support.postfix import PostfixError, PostfixLab, render_example  # noqa: E402

args = sys.argv[1:]
proxy = int(args[8])
example = Path("postfix-example")
for name, (base, smtp, reinject, milter) in zip("AB", (args[0:4], args[4:8])):
    ports = {"proxy": proxy, "reinject": int(reinject), "milter": int(milter),
             "submit": free_port()}
    lab = PostfixLab(
        base,
        port=int(smtp),
        main_cf=render_example((example / "main.cf.inbound").read_text(), ports),
        master_cf=render_example((example / "master.cf.reinject").read_text(), ports),
    )
    try:
        lab.start()
    except PostfixError as exc:
        sys.exit(f"multihost-demo: Postfix MX {name} did not start: {exc}")
    print(f"   MX {name}: inbound smtpd 127.0.0.1:{smtp} -> replytrack milter 127.0.0.1:{milter};"
          f" reinjection 127.0.0.1:{reinject}")
EOF
step "The relay host's proxy (upstream: MX A's reinjection port, standing in for the relay MTA)"
start_daemon proxy "$PROXY" proxy --listen "127.0.0.1:$PROXY" --upstream "127.0.0.1:$REINJECT_A" \
  --workers 1

# --- 4. the flow ---------------------------------------------------------------------------

step "1. Step 1 of the campaign to two prospects, through the proxy"
for who in ann ben; do
  campaign "$who@$DOMAIN" 1 "Spring offer for $who" "$RUN/swaks-step1-$who.log" \
    || { cat "$RUN/swaks-step1-$who.log" >&2; die "step 1 to $who was not accepted"; }
  say "to $who@$DOMAIN: proxy said $(last_reply "$RUN/swaks-step1-$who.log")"
done
ANN_MID=$(header Message-ID "$(delivered "$MX_A" "Spring offer for ann")")
BEN_MID=$(header Message-ID "$(delivered "$MX_A" "Spring offer for ben")")
[[ "$ANN_MID" == *"@$ID_DOMAIN>" ]] || die "the delivered mail does not carry our Message-ID ($ANN_MID)"
say "delivered with our Message-IDs: $ANN_MID, $BEN_MID"

step "2. ann replies; the reply arrives at MX B (127.0.0.1:$SMTP_B)"
reply "$SMTP_B" "ann@$DOMAIN" "Re: Spring offer for ann" "$ANN_MID" "$RUN/swaks-reply-ann.log" \
  || { cat "$RUN/swaks-reply-ann.log" >&2; die "MX B did not accept the reply"; }
FLAG=$(header X-ReplyTrack "$(delivered "$MX_B" "Re: Spring offer for ann")")
say "delivered at MX B with X-ReplyTrack: $FLAG"
[[ "$FLAG" == reply* ]] || die "MX B's milter did not flag the reply (see $RUN/mx-b-milter.log)"
say "ann's enrollment: $(status_of "ann@$DOMAIN")"
[ "$(status_of "ann@$DOMAIN")" = stopped ] || die "ann's enrollment is not stopped"

step "3. Step 2 to ann through the proxy on the relay host"
if campaign "ann@$DOMAIN" 2 "Spring offer for ann, step 2" "$RUN/swaks-step2-ann.log"; then
  die "step 2 was accepted although ann replied at MX B"
fi
REFUSAL=$(last_reply "$RUN/swaks-step2-ann.log")
[[ "$REFUSAL" == "550 5.7.1"* ]] || { cat "$RUN/swaks-step2-ann.log" >&2; die "expected 550 5.7.1"; }
say "proxy said: $REFUSAL"

step "4. PostgreSQL stops"
(cd "$PGBASE" && pg pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null)
say "stopped; ben replies at MX A (127.0.0.1:$SMTP_A)"
T0=$(date +%s.%N)
reply "$SMTP_A" "ben@$DOMAIN" "Re: Spring offer for ben" "$BEN_MID" "$RUN/swaks-reply-ben.log" \
  || { cat "$RUN/swaks-reply-ben.log" >&2; die "MX A did not accept the reply"; }
BEN_REPLY=$(delivered "$MX_A" "Re: Spring offer for ben")
say "delivered at MX A after $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s (X-ReplyTrack: '$(header X-ReplyTrack "$BEN_REPLY")': the match needs the store)"
JOURNAL=$RUN/mx-a/journal/journal
[ -s "$JOURNAL" ] || die "MX A's milter did not journal the reply"
say "MX A's milter journaled it: $(grep -c . "$JOURNAL") entry in ${JOURNAL#"$ROOT"/}"
if campaign "cat@$DOMAIN" 1 "Spring offer for cat" "$RUN/swaks-step1-cat.log"; then
  die "the proxy accepted campaign mail without its store"
fi
TEMPFAIL=$(last_reply "$RUN/swaks-step1-cat.log")
[[ "$TEMPFAIL" == "451 4.3.0"* ]] || { cat "$RUN/swaks-step1-cat.log" >&2; die "expected 451 4.3.0"; }
say "proxy said to new campaign mail: $TEMPFAIL (fails closed: the engine retries later)"

step "5. PostgreSQL starts again"
(cd "$PGBASE" && pg pg_ctl -D "$PGDATA" -l "$PGBASE/server.log" -w -t 60 start >/dev/null) \
  || die "PostgreSQL did not start again"
say "started; waiting for MX A's milter to replay its journal by itself (at most 60 s)"
for i in $(seq 300); do
  [ "$(status_of "ben@$DOMAIN" 2>/dev/null || echo none)" = stopped ] && break
  sleep 0.2
done
[ "$(status_of "ben@$DOMAIN")" = stopped ] || die "the journaled reply was not replayed (see $RUN/mx-a-milter.log)"
grep -h "journal: replayed" "$RUN/mx-a-milter.log" | sed 's/^/   mx-a-milter: /' | cut -c1-160
campaign "cat@$DOMAIN" 1 "Spring offer for cat" "$RUN/swaks-step1-cat-retry.log" \
  || { cat "$RUN/swaks-step1-cat-retry.log" >&2; die "the retried mail was not accepted"; }
say "the engine's retry of cat's mail: $(last_reply "$RUN/swaks-step1-cat-retry.log")"

step "What the shared store holds"
say "replytrack events:"
"$RT" events | sed 's/^/   /'
say "replytrack enrollments:"
"$RT" enrollments | sed 's/^/   /'
REPLIES=$("$RT" events --json | "$PY" -c '
import json, sys
print(sum(1 for e in json.load(sys.stdin) if e["kind"] == "reply"))')
[ "$REPLIES" = 2 ] || die "expected 2 reply events (ann, ben), found $REPLIES"
say "two replies, each recorded once; ann stopped by MX B, ben by MX A's journal replay"
