# Shell functions shared by scripts/demo.sh and scripts/multihost-demo.sh; sourced, not run.
# The sourcing script sets, before calling them:
#   DEMO  its name, for messages          ROOT   the checkout        RUN    its run directory
#   STATE the file listing what it started (one "pid PID NAME", "postfix ETC SPOOL" or
#         "pg BINDIR DATADIR" a line)     RT     the replytrack command
#   KEPT  what stays in $RUN after the run, for the closing message
#   PGUSER_OS  the user PostgreSQL runs as (only when it starts PostgreSQL)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
die() { printf '\n%s: FAILED: %s\n' "$DEMO" "$*" >&2; exit 1; }

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
  # script(1) would read the rest of the state file from stdin: give it none.
  script -qec "postfix -c $etc stop" /dev/null </dev/null >/dev/null 2>&1 || true
  for i in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
  [ -d "/proc/$pid" ] && die "Postfix master $pid did not stop"
  say "stopped Postfix (master pid $pid)"
}

stop_pg() {  # stop_pg BINDIR DATADIR: only our private server, by its data directory
  local bindir=$1 data=$2
  [ -f "$data/postmaster.pid" ] || return 0
  runuser -u "$PGUSER_OS" -- "$bindir/pg_ctl" -D "$data" -m fast -w stop </dev/null >/dev/null 2>&1 \
    || true
  say "stopped PostgreSQL ($data)"
}

stop_all() {
  [ -f "$STATE" ] || return 0
  local kind a b
  while read -r kind a b; do
    case "$kind" in
      pid) stop_pid "$a" "$b";;
      postfix) stop_postfix "$a" "$b";;
      pg) stop_pg "$a" "$b";;
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
    printf '\n%s: OK. %s are in %s\n' "$DEMO" "$KEPT" "${RUN#"$ROOT"/}"
  else
    printf '\n%s: failed (exit %s). Logs are in %s\n' "$DEMO" "$rc" "${RUN#"$ROOT"/}" >&2
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

delivered() {  # delivered MX_BASE SUBJECT: path of the delivered message with that Subject
  local i f
  for i in $(seq 150); do
    f=$(grep -lsx "Subject: $2" "$1"/mail/maildir/new/* 2>/dev/null | head -1 || true)
    [ -n "$f" ] && { echo "$f"; return 0; }
    sleep 0.2
  done
  tail -15 "$1/log/maillog" >&2
  die "'$2' was not delivered in $1"
}

header() {  # header NAME FILE: the first value of that header (unfolded), empty when absent
  awk -v name="$1" 'BEGIN { IGNORECASE = 1 }
    found && /^[ \t]/ { sub(/^[ \t]+/, " "); value = value $0; next }
    found { exit }
    /^$/ { exit }
    tolower($0) ~ "^" tolower(name) ":" { found = 1; value = substr($0, length(name) + 2) }
    END { sub(/^[ \t]+/, "", value); gsub(/\r/, "", value); print value }' "$2"
}

start_daemon() {  # start_daemon NAME PORT ARGS...: `replytrack ARGS...` in the background
  local name=$1 port=$2 log=$RUN/$1.log
  shift 2
  "$RT" "$@" >"$log" 2>&1 &
  local pid=$!
  echo "pid $pid $name" >>"$STATE"
  wait_port "$port" "replytrack $name" "$pid" "$log"
  say "replytrack $name listening on 127.0.0.1:$port (pid $pid, log ${log#"$ROOT"/})"
}
