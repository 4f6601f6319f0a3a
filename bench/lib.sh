# Shared by the bench/*/run.sh scripts (sourced, not run): logging, and the processes a bench
# started, tracked by PID so that cleanup stops exactly those (never by name).
#   pids+=("$!")          after starting a background process
#   forget_pid PID        once the bench stopped it itself
#   stop_pids             TERM every tracked PID, KILL what is left after 5 s, forget them all
#                         (the EXIT trap; a bench between its phases)

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

pids=()

forget_pid() {
  local p keep=()
  for p in "${pids[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  pids=("${keep[@]}")
}

stop_pids() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
}

# A bench in one network namespace of its own, on its loopback ($NS, named by the caller):
# `loopback_bench PREFIX` makes the scratch directory $work (/tmp/PREFIX.XXXXXX; kept on failure
# or with KEEP=1) and the namespace with lo up, and arms the EXIT trap that stops every tracked
# PID and deletes both. `in_ns CMD...` runs a command inside.
loopback_bench() {
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  ns_made=0
  trap loopback_cleanup EXIT
  trap 'exit 130' INT TERM
  ns_made=1
  ip netns add "$NS"
  ip -n "$NS" link set lo up
}

loopback_cleanup() {
  local rc=$?
  set +e
  stop_pids
  [[ $ns_made == 1 ]] && ip netns del "$NS" 2>/dev/null
  if [[ ${KEEP:-0} == 1 || $rc != 0 ]]; then log "logs kept in $work"; else rm -rf "$work"; fi
  exit "$rc"
}

in_ns() { nsenter --net="/var/run/netns/$NS" -- "$@"; }
