#!/usr/bin/env bash
# Media relay benchmark: the SBC's RTP relay vs rtpengine (Debian's rtpengine-daemon, userspace:
# no kernel module, --table=-1) in one run, with the same load generator, the same calls and the
# same CPU budget. Appends a dated section to bench/RESULTS.md (and prints it).
#
#   cargo build --release -p sbc --bin sbc --example rtp_load && sudo bench/media/run.sh
#   (`just bench-media` installs rtpengine-daemon if missing, builds and runs it)
#
# Lab: one network namespace of its own (hb-media-PID), everything on its loopback. The relay
# faces outside on 127.0.0.1 and (the SBC only) the core on 127.0.0.2; the generator's ends A
# (outside) on 127.0.0.5:20000+2i and B (core side) on 127.0.0.6:22000+2i.
# Calls: CALLS [50], each one m-line of PCMA.
#   sbc        `sbc run` (release), [media] ports 40000-40399, workers = 1, [guard] off (its default
#              INVITE limit, 5/s burst 20 per source, would refuse the set-up); the calls set up in
#              SIP through it by sipp (bench/media/uac-media.xml outside on 127.0.0.4, the core
#              uas-media.xml on 127.0.0.3:5080, SDP naming the generator's ends), held open;
#              a fresh SBC hands out ports in order: call i gets 40000+4i outside, 40002+4i inside.
#   rtpengine  `rtpengine -f --table=-1 --num-threads=1 -i 127.0.0.1 -n 127.0.0.1:2223`, ports
#              40000-40399; the calls set up by NG offer/answer (bench/media/ng.py).
# CPU budget: the relay under test pinned with taskset to CPU $SERVER_CPU (every thread), the
# generator to CPU $GEN_CPU, both at nice $NICE; nothing else of the bench runs meanwhile.
# Load: rtp_load (sbc/sbc/examples/rtp_load.rs): every end of every call sends 172-octet RTP to
# the relay, paced in 2 ms ticks, a ladder of total rates (both directions together) held
# STEP_SECS each, counted per step after DRAIN_MS; the ladder stops at the first step losing
# STOP_LOSS % or more. Figure: the highest received rate among steps with < 1% loss. Then
# overload and back: OVER_FACTOR x that rate for OVER_STEPS steps, then DOWN_RATE: how many calls
# still carry media both ways (each direction at least half of what was sent).
#
# Environment (defaults in brackets): CALLS [50] RATES [20000,40000,...,300000] STEP_SECS [3]
#   DRAIN_MS [300] STOP_LOSS [5] OVER_FACTOR [1.5] OVER_STEPS [2] DOWN_RATE [20000]
#   SERVER_CPU [0] GEN_CPU [1] NICE [-20] RESULTS [bench/RESULTS.md] SBC [target/release/sbc]
#   LOAD [target/release/examples/rtp_load] KEEP=1 keeps the logs
#   PERF=1: perf record each relay at PERF_RATE [40000]/s for 5 s after its ladder, top symbols on stderr
# Needs root, rtpengine, sipp, python3, taskset, nsenter. Cleans up: the namespace and every
# process it started (by PID).
set -euo pipefail

CALLS=${CALLS:-50}
RATES=${RATES:-20000,40000,60000,80000,100000,120000,140000,160000,180000,200000,240000,300000}
STEP_SECS=${STEP_SECS:-3}
DRAIN_MS=${DRAIN_MS:-300}
STOP_LOSS=${STOP_LOSS:-5}
OVER_FACTOR=${OVER_FACTOR:-1.5}
OVER_STEPS=${OVER_STEPS:-2}
DOWN_RATE=${DOWN_RATE:-20000}
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
NICE=${NICE:--20}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
SBC=${SBC:-$target_dir/release/sbc}
LOAD=${LOAD:-$target_dir/release/examples/rtp_load}
RESULTS=${RESULTS:-$root/bench/RESULTS.md}
NS=hb-media-$$

# shellcheck source=../lib.sh
source "$root/bench/lib.sh"

[[ $(id -u) == 0 ]] || die "needs root (a network namespace)"
for t in rtpengine sipp python3 taskset nsenter ip awk; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install rtpengine-daemon sip-tester util-linux iproute2)"
done
[[ -x $SBC ]] || die "$SBC not found: cargo build --release -p sbc (or set SBC=)"
[[ -x $LOAD ]] || die "$LOAD not found: cargo build --release -p sbc --example rtp_load (or set LOAD=)"
((CALLS >= 1 && CALLS <= 100)) || die "CALLS must be 1..100"
ncpu=$(nproc)
((SERVER_CPU < ncpu && GEN_CPU < ncpu)) || die "SERVER_CPU/GEN_CPU must be below $ncpu"

loopback_bench hb-media-bench
# Background processes are started with exec (nice, taskset and nsenter exec too), so that the
# PID recorded is the process itself: its CPU time is read and it is stopped by that PID.

# The generator's ends, and the sipp field files naming them (one line per call).
{ echo SEQUENTIAL; for ((i = 0; i < CALLS; i++)); do echo "$((20000 + 2 * i));127.0.0.5;"; done; } >"$work/a.csv"
{ echo SEQUENTIAL; for ((i = 0; i < CALLS; i++)); do echo "$((22000 + 2 * i));127.0.0.6;"; done; } >"$work/b.csv"

cat >"$work/sbc.toml" <<CFG
[external]
udp = ["127.0.0.1:5060"]
[internal]
udp = ["127.0.0.2:5060"]
[[core]]
address = "127.0.0.3:5080"
transport = "udp"
[probe]
interval_ms = 0
[media]
enabled = true
ports = "40000-40399"
workers = 1
[guard]
enabled = false
[log]
level = "warn"
[admin]
socket = "$work/sbc.sock"
CFG

exec_ns_pinned() { exec nice -n "$NICE" taskset -c "$SERVER_CPU" nsenter --net="/var/run/netns/$NS" -- "$@"; }

setup_sbc() {
  exec_ns_pinned "$SBC" run -c "$work/sbc.toml" >"$work/sbc.log" 2>&1 &
  pids+=($!)
  server_pid=$!
  for _ in $(seq 50); do [[ -S $work/sbc.sock ]] && break; sleep 0.1; done
  (cd "$work" && exec nsenter --net="/var/run/netns/$NS" -- sipp -sf "$here/uas-media.xml" -inf "$work/b.csv" -i 127.0.0.3 -p 5080 -m "$CALLS" \
    -nostdin -timeout 3600s >"$work/sipp-uas.log" 2>&1) &
  pids+=($!)
  sleep 0.3
  (cd "$work" && exec nsenter --net="/var/run/netns/$NS" -- sipp -sf "$here/uac-media.xml" -inf "$work/a.csv" -i 127.0.0.4 -p 5062 127.0.0.1:5060 \
    -m "$CALLS" -r 20 -d 3500000 -nostdin -timeout 3600s >"$work/sipp-uac.log" 2>&1) &
  pids+=($!)
  local n=0
  for _ in $(seq 100); do
    n=$("$SBC" stats --socket "$work/sbc.sock" 2>/dev/null | awk '$1 == "media.port_pairs_in_use" {print $2}')
    [[ ${n:-0} == $((2 * CALLS)) ]] && break
    sleep 0.1
  done
  [[ ${n:-0} == $((2 * CALLS)) ]] || die "sbc: $n port pairs in use after the calls, wanted $((2 * CALLS))"
  for ((i = 0; i < CALLS; i++)); do
    echo "127.0.0.5:$((20000 + 2 * i)) 127.0.0.1:$((40000 + 4 * i)) 127.0.0.6:$((22000 + 2 * i)) 127.0.0.2:$((40002 + 4 * i))"
  done >"$work/calls-sbc.txt"
}

setup_rtpengine() {
  exec_ns_pinned rtpengine --config-file=none -f -E -L 4 --table=-1 --num-threads=1 -i 127.0.0.1 -n 127.0.0.1:2223 \
    -m 40000 -M 40399 >"$work/rtpengine.log" 2>&1 &
  pids+=($!)
  server_pid=$!
  local ok=0
  for _ in $(seq 50); do
    if in_ns python3 "$here/ng.py" 127.0.0.1:2223 0 127.0.0.5 20000 127.0.0.6 22000 2>/dev/null; then ok=1; break; fi
    sleep 0.1
  done
  [[ $ok == 1 ]] || die "rtpengine did not start: $(tail -5 "$work/rtpengine.log")"
  sleep 0.5
  in_ns python3 "$here/ng.py" 127.0.0.1:2223 "$CALLS" 127.0.0.5 20000 127.0.0.6 22000 >"$work/calls-rtpengine.txt" ||
    die "rtpengine: NG setup failed: $(tail -5 "$work/rtpengine.log")"
}

cpu_ticks() { sed 's/^.*) //' "/proc/$server_pid/stat" | awk '{print $12 + $13}'; }

declare -A best ladder over cpu
measure() { # $1 = sbc | rtpengine
  local peer=$1 out hz t0 t1 s0 o
  hz=$(getconf CLK_TCK)
  "setup_$peer"
  t0=$(cpu_ticks)
  s0=$SECONDS
  out=$(nice -n "$NICE" taskset -c "$GEN_CPU" nsenter --net="/var/run/netns/$NS" -- timeout 300 "$LOAD" \
    --calls "$work/calls-$peer.txt" --rates "$RATES" --secs "$STEP_SECS" --drain-ms "$DRAIN_MS" --stop-loss "$STOP_LOSS")
  echo "$out" >"$work/ladder-$peer.txt"
  log "$peer ladder:"$'\n'"$out"
  best[$peer]=$(awk '/^best/ {split($2, a, "="); print a[2]}' <<<"$out")
  ladder[$peer]=$(awk '/^step/ {for (i = 2; i <= NF; i++) {split($i, a, "="); v[a[1]] = a[2]}
      printf "%s%d/s: achieved %d/s, received %d/s, loss %.2f%%", (n++ ? "; " : ""), v["rate"], v["achieved"], v["received_rate"], v["loss"]}' <<<"$out")
  if [[ ${PERF:-0} == 1 ]]; then
    nice -n "$NICE" taskset -c "$GEN_CPU" nsenter --net="/var/run/netns/$NS" -- "$LOAD" --calls "$work/calls-$peer.txt" \
      --rates "${PERF_RATE:-40000}" --secs 6 --stop-loss 101 >"$work/perf-load-$peer.txt" &
    local gen=$!
    pids+=("$gen")
    sleep 0.5
    perf record -q -g -p "$server_pid" -o "$work/perf-$peer.data" -- sleep 5 >/dev/null 2>&1 || true
    wait "$gen" || true
    perf report -q -i "$work/perf-$peer.data" --no-children --sort sym -g none --stdio 2>/dev/null | grep '%' | head -30 >&2 || true
  fi
  local orate rates
  orate=$(awk -v b="${best[$peer]}" -v f="$OVER_FACTOR" 'BEGIN {printf "%d", b * f}')
  rates=$(for ((k = 0; k < OVER_STEPS; k++)); do printf '%s,' "$orate"; done)$DOWN_RATE
  o=$(nice -n "$NICE" taskset -c "$GEN_CPU" nsenter --net="/var/run/netns/$NS" -- timeout 120 "$LOAD" \
    --calls "$work/calls-$peer.txt" --rates "$rates" --secs "$STEP_SECS" --drain-ms "$DRAIN_MS" --stop-loss 101)
  t1=$(cpu_ticks)
  echo "$o" >"$work/over-$peer.txt"
  log "$peer overload and back:"$'\n'"$o"
  over[$peer]=$(awk '/^step/ {for (i = 2; i <= NF; i++) {split($i, a, "="); v[a[1]] = a[2]}
      printf "%s%d/s: achieved %d/s, received %d/s, loss %.2f%%, calls with media both ways %s", (n++ ? "; " : ""), v["rate"], v["achieved"], v["received_rate"], v["loss"], v["calls_alive"]}' <<<"$o")
  cpu[$peer]=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v w=$((SECONDS - s0)) 'BEGIN {printf "%.1f s CPU in %d s", t / hz, w}')
  alive_after[$peer]=$(awk '/^step/ {last = $NF} END {split(last, a, "="); print a[2]}' <<<"$o")
  stop_pids
}
declare -A alive_after

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for peer in sbc rtpengine; do measure "$peer"; done

ratio=$(awk -v a="${best[sbc]}" -v b="${best[rtpengine]}" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "—"}')
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
grep -qw hypervisor /proc/cpuinfo && cpu_model+=", a virtual machine"
rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
rtpe_ver=$(dpkg-query -W -f '${Version}' rtpengine-daemon 2>/dev/null || echo unknown)
cmd="CALLS=$CALLS RATES=$RATES STEP_SECS=$STEP_SECS DRAIN_MS=$DRAIN_MS STOP_LOSS=$STOP_LOSS OVER_FACTOR=$OVER_FACTOR OVER_STEPS=$OVER_STEPS DOWN_RATE=$DOWN_RATE SERVER_CPU=$SERVER_CPU GEN_CPU=$GEN_CPU NICE=$NICE bench/media/run.sh"
{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — RTP relay: the SBC vs rtpengine (userspace)"
  echo
  echo "- machine: $ncpu CPUs ($cpu_model), Linux $(uname -r); load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  echo "- peers: sbc @ $rev ($SBC), \`[media]\` workers = 1 (epoll, recvmmsg/sendmmsg, the sessions locked once per round), calls set up in SIP by sipp; rtpengine $rtpe_ver from Debian, \`--table=-1 --num-threads=1\` (userspace, no kernel module), calls set up over NG"
  echo "- CPU budget: each relay pinned with taskset to CPU $SERVER_CPU (all its threads), the generator to CPU $GEN_CPU, both at nice $NICE; one network namespace, loopback"
  echo "- command: \`$cmd\` (\`just bench-media\` builds and runs it with the defaults)"
  echo "- load: rtp_load, $CALLS calls, both ends of each sending 172-octet RTP to the relay; rates are totals of both directions, $STEP_SECS s per step, received counted after ${DRAIN_MS} ms; ladder stopped at the first step losing ≥ $STOP_LOSS %; then $OVER_STEPS steps at $OVER_FACTOR× the relay's own best and one at $DOWN_RATE/s"
  echo
  echo "| | SBC | rtpengine | SBC / rtpengine |"
  echo "|---|---:|---:|---:|"
  echo "| RTP packets relayed per second, highest step with < 1% loss (higher is better) | ${best[sbc]} | ${best[rtpengine]} | $ratio |"
  echo "| calls carrying media both ways at $DOWN_RATE/s after the overload (of $CALLS) | ${alive_after[sbc]} | ${alive_after[rtpengine]} | |"
  echo
  for peer in sbc rtpengine; do
    echo "- $peer (${cpu[$peer]}): ladder ${ladder[$peer]}"
    echo "- $peer overload and back: ${over[$peer]}"
  done
} | tee -a "$RESULTS"
log "appended to $RESULTS"
