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

DEMO=demo
KEPT="Logs, store and delivered mail"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

[ "$(id -u)" = 0 ] || die "run as root: Postfix's master must start as root (it drops to user postfix)"

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
start_daemon milter "$MILTER" --db "$RUN/replytrack.db" --domain "$ID_DOMAIN" milter --socket "inet:$MILTER@127.0.0.1"
start_daemon proxy "$PROXY" --db "$RUN/replytrack.db" --domain "$ID_DOMAIN" proxy --listen "127.0.0.1:$PROXY" --upstream "127.0.0.1:$REINJECT"

SWAKS=(swaks --server 127.0.0.1 --helo demo.client.test --suppress-data --hide-informational)

# --- 1. campaign mail out ------------------------------------------------------------------

step "1. The campaign engine sends step 1 through the proxy (127.0.0.1:$PROXY)"
"${SWAKS[@]}" --port "$PROXY" --from "sales@$DOMAIN" --to "prospect@$DOMAIN" \
  --header "Subject: Spring offer, step 1" \
  --header "X-ReplyTrack-Campaign: $CAMPAIGN" --header "X-ReplyTrack-Step: 1" \
  --body "Hello, a spring offer for you." >"$RUN/swaks-step1.log" 2>&1 \
  || { cat "$RUN/swaks-step1.log" >&2; die "step 1 was not accepted by the proxy"; }
grep -E '^ *<- +250 ' "$RUN/swaks-step1.log" | tail -1 | sed -E 's/^ *<- +/   proxy said: /'
STEP1=$(delivered "$PFBASE" "Spring offer, step 1")
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
REPLY=$(delivered "$PFBASE" "Re: Spring offer, step 1")
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
