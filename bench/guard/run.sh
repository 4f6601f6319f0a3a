#!/usr/bin/env bash
# Ban reaction benchmark: the SBC's own guard (decides in process, bans in XDP) vs fail2ban
# (Debian's, tailing the SBC's log with config/fail2ban/filter.d/sbc-auth.conf and banning
# with nftables in the SBC's namespace), the same attack on the same machine in one run.
# Appends a dated section to bench/RESULTS.md (and prints it).
#
#   cargo build --release -p sbc
#   sudo bench/guard/run.sh                # `just bench-guard` builds, installs fail2ban, runs
#
# Lab (three namespaces, two veth pairs):
#   gb-ga-PID  a0 203.0.113.66            the attacker: sipvicious's svcrack guessing user
#                                          1000's password (RANGE, zero-padded to 4)
#   gb-gs-PID  s0 203.0.113.1 (:5080/udp)  the SBC (release build); XDP attached on s0
#              i0 10.98.0.1                (its [trunk] protects :5060, which nobody uses here)
#   gb-gc-PID  c0 10.98.0.10:5070          Kamailio (tests/peers/kamailio-core.cfg -A WITH_AUTH:
#                                          challenges every REGISTER, no guess is right)
# Phases, each with a fresh SBC and fresh captures:
#   sbc        [guard] on with one jail, sip-auth (auth-failure + forbidden per source,
#              maxretry 5, findtime 600 s, bantime 600 s); scanner signatures and behaviour off
#              (svcrack says "friendly-scanner": with them it is banned on its first packet,
#              which is not the comparison) and the per-source rate limits off (so both phases
#              take the same unthrottled attack).
#   fail2ban   [guard] enabled = false (the SBC bans nothing; it still writes its sbc::auth
#              line per failure, to the file fail2ban tails); fail2ban-server in the SBC's
#              namespace, jail sbc-auth with the same maxretry/findtime/bantime, backend
#              pyinotify (its fastest: woken by each write, no polling interval), banaction
#              nftables-allports[blocktype=drop] with protocol = udp,tcp (the jail's default
#              protocol is tcp alone: a UDP attack would pass the ban untouched).
# Measured from captures (tcpdump on the attacker's a0 and the core's c0; one clock):
#   decision    the core's 401 to the 5th REGISTER carrying credentials (core capture: the
#               failure that crosses maxretry) → the ban's log line (ours: `sbc::guard: ban`;
#               fail2ban: `[sbc-auth] Ban`, millisecond resolution).
#   reaction    the same 401 → the first attacker request after it that was never answered
#               (attacker capture, requests and answers paired by Via branch): the first one
#               dropped. An upper bound: it includes the attacker's own gap between requests.
#   core_after  attacker REGISTERs that reached the core after that 401.
#   XDP drops   `sbc stats` xdp.drop_blocked delta (ours).
# Environment: RANGE [1-20000] SVCRACK_SECS [60] MAXTIME [3] (svcrack's --maximumtime)
#   RESULTS [bench/RESULTS.md] SBC [target/release/sbc] KEEP=1 keeps the logs and captures
# Needs root, fail2ban, python3-pyinotify, nft, kamailio, sipvicious, tcpdump, python3.
# Cleans up (also on failure) the namespaces (their nftables rules with them) and every
# process it started (by PID).
set -euo pipefail

RANGE=${RANGE:-1-20000}
SVCRACK_SECS=${SVCRACK_SECS:-60}
MAXTIME=${MAXTIME:-3}
MAXRETRY=5
root=$(cd "$(dirname "$0")/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
SBC=${SBC:-$target_dir/release/sbc}
RESULTS=${RESULTS:-$root/bench/RESULTS.md}

NS_A=gb-ga-$$ NS_S=gb-gs-$$ NS_C=gb-gc-$$
ATT=203.0.113.66 SBC_EXT=203.0.113.1 PORT=5080
SBC_INT=10.98.0.1 CORE=10.98.0.10 CORE_PORT=5070

# shellcheck source=../lib.sh
source "$root/bench/lib.sh"

[[ $(id -u) == 0 ]] || die "needs root (network namespaces, XDP, nftables)"
for t in fail2ban-server fail2ban-client nft kamailio svcrack tcpdump python3 nsenter pgrep; do
  command -v "$t" >/dev/null ||
    die "$t not found (apt-get install fail2ban python3-pyinotify nftables kamailio sipvicious tcpdump)"
done
/usr/bin/python3 -c 'import pyinotify' 2>/dev/null || die "python3-pyinotify missing (fail2ban's inotify backend)"
[[ -x $SBC ]] || die "$SBC not found: cargo build --release -p sbc (or set SBC=)"

work=$(mktemp -d /tmp/gb-guard-bench.XXXXXX)
ns_made=0
kam_pid=""
cleanup() {
  local rc=$?
  set +e
  # Kamailio's workers, by PID, before its main process goes (a worker that outlives a main
  # killed after the grace period is reparented and would stay behind).
  local kids=""
  [[ -n $kam_pid ]] && kids=$(pgrep -P "$kam_pid")
  stop_pids
  for p in $kids; do kill "$p" 2>/dev/null; done
  sleep 0.5
  for p in $kids; do kill -KILL "$p" 2>/dev/null; done
  if [[ $ns_made == 1 ]]; then
    ip netns del "$NS_A" 2>/dev/null
    ip netns del "$NS_S" 2>/dev/null
    ip netns del "$NS_C" 2>/dev/null
  fi
  if [[ ${KEEP:-0} == 1 || $rc != 0 ]]; then log "logs kept in $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_a() { nsenter --net="/var/run/netns/$NS_A" -- "$@"; }
in_s() { nsenter --net="/var/run/netns/$NS_S" -- "$@"; }
# Background processes are started with nsenter itself (not through these functions, which
# would put a subshell's PID in $!): nsenter execs the command, so $! is the process to stop.

# --- the lab -------------------------------------------------------------------------------
ns_made=1
for ns in "$NS_A" "$NS_S" "$NS_C"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
ip link add a0 netns "$NS_A" type veth peer name s0 netns "$NS_S"
ip link add i0 netns "$NS_S" type veth peer name c0 netns "$NS_C"
ip -n "$NS_A" addr add "$ATT/24" dev a0
ip -n "$NS_S" addr add "$SBC_EXT/24" dev s0
ip -n "$NS_S" addr add "$SBC_INT/24" dev i0
ip -n "$NS_C" addr add "$CORE/24" dev c0
ip -n "$NS_A" link set a0 up
ip -n "$NS_S" link set s0 up
ip -n "$NS_S" link set i0 up
ip -n "$NS_C" link set c0 up
printf '# sbc-allowlist v1\n203.0.113.20/32 IN 7 "Carrier" 1 ip\n' >"$work/allow.txt"

mkdir -p "$work/kamailio"
nsenter --net="/var/run/netns/$NS_C" -- kamailio -f "$root/tests/peers/kamailio-core.cfg" -DD -E -m 64 -M 8 -A WITH_AUTH \
  -l "udp:$CORE:$CORE_PORT" -P "$work/kamailio/kamailio.pid" -Y "$work/kamailio" >"$work/kamailio.log" 2>&1 &
kam_pid=$!
pids+=("$kam_pid")

# The [guard] of a phase.
guard_config() {
  if [[ $1 != sbc ]]; then
    printf '[guard]\nenabled = false\n'
    return
  fi
  cat <<END
[guard]
state_dir = ""
[guard.rate.register]
per_second = 0
[guard.rate.invite]
per_second = 0
[guard.rate.options]
per_second = 0
[guard.rate.other]
per_second = 0
[guard.scanner]
user_agents = []
from_names = []
from_hosts = []
max_targets = 0
max_out_of_dialog = 0
[[guard.jail]]
name = "sip-auth"
events = ["auth-failure", "forbidden"]
findtime_secs = 600
maxretry = $MAXRETRY
bantime_secs = 600
END
}

write_config() { # $1 = phase
  cat >"$work/sbc-$1.toml" <<END
[external]
udp = ["$SBC_EXT:5060", "$SBC_EXT:$PORT"]
[internal]
udp = ["$SBC_INT:5060"]
[[core]]
address = "$CORE:$CORE_PORT"
transport = "udp"
[log]
level = "info"
[admin]
socket = "$work/admin-$1/sbc.sock"
[trunk]
allowlist = "$work/allow.txt"
interface = "s0"
xdp_mode = "native"
protected = ["$SBC_EXT:5060/udp"]
$(guard_config "$1")
END
}

sbc_pid=""
start_sbc() { # $1 = phase
  write_config "$1"
  # nsenter execs the daemon, so $! is the SBC itself; its log (stderr) is what fail2ban reads.
  nsenter --net="/var/run/netns/$NS_S" -- "$SBC" run -c "$work/sbc-$1.toml" >>"$work/sbc-$1.log" 2>&1 &
  sbc_pid=$!
  pids+=("$sbc_pid")
  for _ in $(seq 100); do grep -q "sbc running" "$work/sbc-$1.log" && break; sleep 0.05; done
  grep -q "sbc running" "$work/sbc-$1.log" || die "the SBC did not start: $(tail -5 "$work/sbc-$1.log")"
  grep -q "XDP filter attached" "$work/sbc-$1.log" || die "XDP not attached: $(tail -5 "$work/sbc-$1.log")"
}

stat_of() { # $1 = stats text, $2 = name
  awk -v n="$2" '$1 == n { print $2; f = 1 } END { if (!f) print 0 }' <<<"$1"
}

f2b_pid=""
start_fail2ban() {
  local c=$work/f2b
  cp -r /etc/fail2ban "$c"
  rm -f "$c"/jail.d/*.conf "$c"/jail.d/*.local
  cp "$root/config/fail2ban/filter.d/sbc-auth.conf" "$c/filter.d/"
  printf '[Definition]\ndbfile = :memory:\nloglevel = INFO\n' >"$c/fail2ban.local"
  cat >"$c/jail.local" <<END
[DEFAULT]
ignoreip =
[sbc-auth]
enabled  = true
filter   = sbc-auth
logpath  = $work/sbc-fail2ban.log
backend  = pyinotify
maxretry = $MAXRETRY
findtime = 600
bantime  = 600
protocol = udp,tcp
banaction = nftables-allports[blocktype=drop]
END
  touch "$work/sbc-fail2ban.log"
  nsenter --net="/var/run/netns/$NS_S" -- fail2ban-server -f -x -c "$c" -s "$work/f2b.sock" -p "$work/f2b.pid" \
    --logtarget "$work/fail2ban.log" >"$work/fail2ban.out" 2>&1 &
  f2b_pid=$!
  pids+=("$f2b_pid")
  for _ in $(seq 100); do
    fail2ban-client -s "$work/f2b.sock" status sbc-auth >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "fail2ban did not start the jail: $(tail -5 "$work/fail2ban.log" "$work/fail2ban.out")"
}

# Stops the phase's SBC and fail2ban and removes fail2ban's rules (Kamailio stays).
stop_phase() {
  local p
  for p in $sbc_pid $f2b_pid; do
    kill "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    forget_pid "$p"
  done
  sbc_pid="" f2b_pid=""
  in_s nft flush ruleset 2>/dev/null || true
}

# --- one phase -----------------------------------------------------------------------------
declare -A R
run_phase() { # $1 = sbc | fail2ban
  local phase=$1 tc ta before after out k v ban_at
  log "phase $phase"
  [[ $phase == fail2ban ]] && start_fail2ban
  start_sbc "$phase"
  nsenter --net="/var/run/netns/$NS_C" -- tcpdump -i c0 -U -n -w "$work/core-$phase.pcap" udp >"$work/tcpdump-c-$phase.log" 2>&1 &
  tc=$!
  pids+=("$tc")
  nsenter --net="/var/run/netns/$NS_A" -- tcpdump -i a0 -U -n -w "$work/att-$phase.pcap" udp >"$work/tcpdump-a-$phase.log" 2>&1 &
  ta=$!
  pids+=("$ta")
  sleep 1
  before=$("$SBC" stats --socket "$work/admin-$phase/sbc.sock")
  # The attack, bounded in time; svcrack stops by itself MAXTIME s after its last answer.
  in_a timeout "$SVCRACK_SECS" svcrack -u 1000 -r "$RANGE" -z 4 -b "$ATT" -p "$PORT" --maximumtime "$MAXTIME" \
    "$SBC_EXT" >"$work/svcrack-$phase.log" 2>&1 || true
  sleep 1
  after=$("$SBC" stats --socket "$work/admin-$phase/sbc.sock")
  kill "$tc" "$ta"
  wait "$tc" "$ta" 2>/dev/null || true
  forget_pid "$tc"
  forget_pid "$ta"
  out=$(python3 "$root/bench/guard/analyse.py" "$work/core-$phase.pcap" "$work/att-$phase.pcap" "$ATT" "$CORE" \
    "$MAXRETRY") || die "$phase: analysis failed: $out"
  log "$phase: $(tr '\n' ' ' <<<"$out")"
  while IFS='=' read -r k v; do R[$phase.$k]=$v; done <<<"$out"
  # The ban's log line (both in UTC, the machine's clock).
  if [[ $phase == sbc ]]; then
    ban_at=$(grep -m1 "sbc::guard: ban prefix=$ATT/32" "$work/sbc-sbc.log" | awk '{print $1}' || true)
    [[ -n $ban_at ]] && ban_at=$(date -u -d "$ban_at" +%s.%N)
    R[$phase.xdp_drops]=$(($(stat_of "$after" xdp.drop_blocked) - $(stat_of "$before" xdp.drop_blocked)))
  else
    ban_at=$(grep -m1 "\[sbc-auth\] Ban $ATT" "$work/fail2ban.log" | awk '{print $1" "$2}' | tr , . || true)
    [[ -n $ban_at ]] && ban_at=$(date -d "$ban_at" +%s.%N)
    R[$phase.xdp_drops]=$(($(stat_of "$after" xdp.drop_blocked) - $(stat_of "$before" xdp.drop_blocked)))
    R[$phase.nft_rules]=$(in_s nft list ruleset | grep -c "saddr @addr-set-sbc-auth drop" || true)
  fi
  [[ -n $ban_at ]] || die "$phase: no ban logged"
  R[$phase.decision_ms]=$(python3 -c "print(f'{($ban_at - ${R[$phase.t_fail]}) * 1000:.3f}')")
  R[$phase.auth_lines]=$(grep -c "WARN sbc::auth: auth failure from $ATT port=" "$work/sbc-$phase.log" || true)
  stop_phase
}

run_phase sbc
run_phase fail2ban
for ph in sbc fail2ban; do
  [[ ${R[$ph.t_drop]} != none ]] || die "$ph: banned, but no attacker request went unanswered (is the ban enforced?)"
done

# --- report ------------------------------------------------------------------------------------
ratio() {
  python3 -c "a, b = '$1', '$2'
print(f'{float(b) / float(a):.0f}×' if 'none' not in (a, b) and float(a) > 0 else 'n/a')"
}
f2b_version=$(fail2ban-server -V 2>/dev/null | head -1)
section=$(
  cat <<END

## Ban reaction: SBC guard vs fail2ban ($(date -u +%F), \`just bench-guard\`)

svcrack (sipvicious) guessing user 1000's password against Kamailio (which challenges every
REGISTER) through the SBC's access port, one run, same machine; maxretry $MAXRETRY, findtime 600 s,
bantime 600 s in both. Ours: the SBC's guard (jail sip-auth) bans in XDP. fail2ban $f2b_version: the
SBC's guard off, fail2ban-server in the SBC's namespace tailing its log with
\`config/fail2ban/filter.d/sbc-auth.conf\` (backend pyinotify), banning with nftables-allports (drop).
"After it" = after the core's 401 to the 5th REGISTER carrying credentials (the failure that crosses
maxretry), from the core-side capture; drops from the attacker-side capture (requests never
answered); the ban from its log line; one clock.

| | ours (guard → XDP) | fail2ban → nftables | fail2ban / ours |
|---|---|---|---|
| ban decided after it (ms) | ${R[sbc.decision_ms]} | ${R[fail2ban.decision_ms]} | $(ratio "${R[sbc.decision_ms]}" "${R[fail2ban.decision_ms]}") |
| first attacker request dropped after it (ms; includes the attacker's gap) | ${R[sbc.reaction_ms]} | ${R[fail2ban.reaction_ms]} | $(ratio "${R[sbc.reaction_ms]}" "${R[fail2ban.reaction_ms]}") |
| attacker REGISTERs that reached the core after it | ${R[sbc.core_after]} | ${R[fail2ban.core_after]} | |
| attacker requests sent / answered after it | ${R[sbc.sent_after]} / ${R[sbc.answered_after]} | ${R[fail2ban.sent_after]} / ${R[fail2ban.answered_after]} | |
| REGISTERs with credentials that reached the core, in all | ${R[sbc.creds_total]} | ${R[fail2ban.creds_total]} | |
| \`sbc::auth\` lines the SBC wrote for the attacker | ${R[sbc.auth_lines]} | ${R[fail2ban.auth_lines]} | |
| attacker packets dropped in XDP | ${R[sbc.xdp_drops]} | ${R[fail2ban.xdp_drops]} (nftables drop rules: ${R[fail2ban.nft_rules]}) | |

\`\`\`
cargo build --release -p sbc && sudo bash bench/guard/run.sh   # RANGE=$RANGE MAXTIME=$MAXTIME
\`\`\`
END
)
echo "$section"
echo "$section" >>"$RESULTS"
