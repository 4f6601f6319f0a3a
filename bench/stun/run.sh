#!/usr/bin/env bash
# STUN Binding benchmark: the SBC's dedicated STUN UDP port vs coturn (Debian, --stun-only), in
# one run, with the same load generator and the same CPU budget. Appends a dated section to
# bench/RESULTS.md (and prints it).
#
#   cargo build --release -p sbc --bin sbc --example stun_load && sudo bench/stun/run.sh
#   (`just bench-stun` installs coturn if missing, builds and runs it with the defaults)
#
# Lab: one network namespace of its own (hb-stun-PID), everything on its loopback 127.0.0.1,
# each server in turn on 127.0.0.1:3478/udp.
# CPU budget: the server under test is pinned to CPU $SERVER_CPU (taskset, every thread), the
# generator to CPU $GEN_CPU; nothing else of the bench runs during a measurement. Both run at
# nice $NICE (default -20), so that other tenants' processes on a shared machine take as little
# of those CPUs as the scheduler allows: without it the servers got a third to a half of their
# CPU here and dropped for that reason alone. On loopback
# the kernel's receive work for a datagram runs on the sender's CPU, so each side pays for the
# delivery of what it sends; the same for both servers.
#   sbc     `sbc run` (release) with [stun] udp = ["127.0.0.1:3478"], workers = 1 (one
#           SO_REUSEPORT socket, recvmmsg/sendmmsg batches of 64), the per-source rate limit on
#           but far above the load (rate_per_sec = burst = 100000000: its lookup is paid, it
#           never drops), plus its SIP sockets (idle).
#   coturn  `turnserver -n --stun-only -L 127.0.0.1 -p 3478 -m 1 --no-tcp --no-tls --no-dtls
#           --no-cli --no-software-attribute --no-rfc5780 --no-stun-backward-compatibility
#           --response-origin-only-with-rfc5780 --fingerprint` (one relay thread: one UDP
#           socket; answers XOR-MAPPED-ADDRESS + FINGERPRINT like ours; no MAPPED-ADDRESS,
#           SOFTWARE or RESPONSE-ORIGIN), log to a file.
# Load: stun_load (sbc/sbc/examples/stun_load.rs): one socket, a ladder of fixed rates each held
# STEP_SECS, paced sendmmsg batches, a receiver thread with recvmmsg counting each transaction
# id once; a step's loss = 1 - distinct answers / sent, after DRAIN_MS; the ladder stops at the
# first step losing STOP_LOSS % or more. 28-octet Binding requests (header + FINGERPRINT).
# Figure: the highest answered rate (answers/s over the step) among steps with < 1% loss. When
# the generator could not send at the rate asked ("achieved" below the rate), that step is
# bounded by the generator, not the server: read the achieved column.
# ROUNDS rounds, alternating which server goes first; the best of each is compared.
#
# Environment (defaults in brackets): RATES [40000,60000,...,200000,240000,280000,320000]
#   STEP_SECS [3] DRAIN_MS [300] STOP_LOSS [5] ROUNDS [2]
#   SERVER_CPU [0] GEN_CPU [1] NICE [-20] PERF [0] (1: perf record the SBC at PERF_RATE [200000]/s for 5 s
#   and print its top symbols) RESULTS [bench/RESULTS.md] SBC [target/release/sbc]
#   LOAD [target/release/examples/stun_load] KEEP=1 keeps the logs
# Needs root, coturn, taskset, nsenter. Cleans up: the namespace and every process it started
# (by PID).
set -euo pipefail

RATES=${RATES:-40000,60000,80000,100000,120000,140000,160000,180000,200000,240000,280000,320000}
STEP_SECS=${STEP_SECS:-3}
DRAIN_MS=${DRAIN_MS:-300}
STOP_LOSS=${STOP_LOSS:-5}
ROUNDS=${ROUNDS:-2}
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
PERF=${PERF:-0}
PERF_RATE=${PERF_RATE:-200000}
NICE=${NICE:--20}
root=$(cd "$(dirname "$0")/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
SBC=${SBC:-$target_dir/release/sbc}
LOAD=${LOAD:-$target_dir/release/examples/stun_load}
RESULTS=${RESULTS:-$root/bench/RESULTS.md}
NS=hb-stun-$$
ADDR=127.0.0.1 PORT=3478

# shellcheck source=../lib.sh
source "$root/bench/lib.sh"

[[ $(id -u) == 0 ]] || die "needs root (a network namespace)"
for t in turnserver taskset nsenter ip awk; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install coturn util-linux iproute2)"
done
[[ -x $SBC ]] || die "$SBC not found: cargo build --release -p sbc (or set SBC=)"
[[ -x $LOAD ]] || die "$LOAD not found: cargo build --release -p sbc --example stun_load (or set LOAD=)"
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $ROUNDS -le 5 ]] || die "ROUNDS must be 1..5"
ncpu=$(nproc)
((SERVER_CPU < ncpu && GEN_CPU < ncpu)) || die "SERVER_CPU/GEN_CPU must be below $ncpu"

loopback_bench hb-stun-bench

cat >"$work/sbc.toml" <<EOF
[external]
udp = ["127.0.0.1:5060"]
[internal]
udp = ["127.0.0.2:5060"]
[[core]]
address = "127.0.0.3:5080"
[probe]
interval_ms = 0
[stun]
on_sip_udp = false
udp = ["$ADDR:$PORT"]
workers = 1
rate_per_sec = 100000000
rate_burst = 100000000
[log]
level = "warn"
[admin]
socket = "$work/admin/sbc.sock"
EOF

server_pid=""
start_server() { # $1 = sbc | coturn
  case $1 in
    sbc)
      nice -n "$NICE" taskset -c "$SERVER_CPU" nsenter --net="/var/run/netns/$NS" -- "$SBC" run -c "$work/sbc.toml" \
        >"$work/sbc.log" 2>&1 &
      ;;
    coturn)
      nice -n "$NICE" taskset -c "$SERVER_CPU" nsenter --net="/var/run/netns/$NS" -- turnserver -n --stun-only \
        -L "$ADDR" -p "$PORT" -m 1 --no-tcp --no-tls --no-dtls --no-cli --no-software-attribute \
        --no-rfc5780 --no-stun-backward-compatibility --response-origin-only-with-rfc5780 \
        --fingerprint --pidfile "$work/turnserver.pid" --userdb "$work/turndb" \
        --log-file "$work/coturn.log" --simple-log >"$work/coturn.out" 2>&1 &
      ;;
  esac
  server_pid=$!
  pids+=("$server_pid")
  # Ready when a short, slow probe is answered (bounded: 50 tries).
  local ok=0
  for _ in $(seq 50); do
    kill -0 "$server_pid" 2>/dev/null || break
    if in_ns "$LOAD" --dst "$ADDR:$PORT" --rates 200 --secs 0.1 --drain-ms 100 --stop-loss 101 2>/dev/null |
      awk '/^step/ {for (i = 1; i <= NF; i++) if ($i ~ /^answered=/) {split($i, a, "="); if (a[2] > 0) f = 1}} END {exit !f}'; then
      ok=1
      break
    fi
    sleep 0.2
  done
  [[ $ok == 1 ]] || { tail -20 "$work/$1.log" "$work/$1.out" 2>/dev/null >&2; die "$1 does not answer STUN on $ADDR:$PORT"; }
  [[ $(taskset -pc "$server_pid" | awk '{print $NF}') == "$SERVER_CPU" ]] || die "$1 is not pinned to CPU $SERVER_CPU"
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  forget_pid "$server_pid"
  server_pid=""
}

cpu_ticks() { # utime+stime of every thread of the server
  sed 's/^.*) //' "/proc/$server_pid/stat" | awk '{print $12 + $13}'
}

# Datagrams the namespace's UDP sockets dropped for a full receive buffer (all sockets).
rcvbuf_errors() { in_ns awk '/^Udp:/ && ++n == 2 {print $6}' /proc/net/snmp; }
# Of those, the ones the server's sockets (local port $PORT) dropped.
server_drops() {
  in_ns awk -v p="$(printf ':%04X' "$PORT")" 'NR > 1 && substr($2, length($2) - 4) == p {d += $NF} END {print d + 0}' /proc/net/udp
}

declare -A best steps_of cpu_of drops_of rcvbuf_of
measure() { # $1 = peer, $2 = round
  local peer=$1 r=$2 out t0 t1 hz b e0 e1 sd
  hz=$(getconf CLK_TCK)
  start_server "$peer"
  rcvbuf_of[$peer]=$(in_ns ss -uamn "sport = :$PORT" | sed -n 's/.*skmem:([^)]*rb\([0-9]*\).*/\1/p' | head -1)
  t0=$(cpu_ticks)
  e0=$(rcvbuf_errors)
  local s0=$SECONDS
  out=$(nice -n "$NICE" taskset -c "$GEN_CPU" nsenter --net="/var/run/netns/$NS" -- timeout 300 "$LOAD" --dst "$ADDR:$PORT" \
    --rates "$RATES" --secs "$STEP_SECS" --drain-ms "$DRAIN_MS" --stop-loss "$STOP_LOSS" --max-secs 240)
  t1=$(cpu_ticks)
  e1=$(rcvbuf_errors)
  sd=$(server_drops)
  drops_of[$peer-$r]="receive-buffer drops: server's socket $sd, generator's $((e1 - e0 - sd))"
  local wall=$((SECONDS - s0))
  stop_server
  echo "$out" >"$work/load-$peer-$r.txt"
  log "$peer round $r:"$'\n'"$out"
  b=$(awk '/^best/ {split($2, a, "="); print a[2]}' <<<"$out")
  steps_of[$peer-$r]=$(awk '/^step/ {
      for (i = 2; i <= NF; i++) {split($i, a, "="); v[a[1]] = a[2]}
      printf "%s%d/s: sent %d, achieved %d/s, answered %d, loss %.2f%%", (n++ ? "; " : ""), v["rate"], v["sent"], v["achieved"], v["answered"], v["loss"]
    }' <<<"$out")
  cpu_of[$peer-$r]=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v w="$wall" 'BEGIN {printf "%.1f s CPU in %d s", t / hz, w}')
  if [[ -z ${best[$peer]:-} ]] || awk -v a="$b" -v b="${best[$peer]}" 'BEGIN {exit !(a > b)}'; then
    best[$peer]=$b
  fi
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then order="sbc coturn"; else order="coturn sbc"; fi
  for peer in $order; do measure "$peer" "$r"; done
done

perf_note=""
if [[ $PERF == 1 ]]; then
  command -v perf >/dev/null || die "perf not found (apt-get install linux-perf)"
  start_server sbc
  nice -n "$NICE" taskset -c "$GEN_CPU" nsenter --net="/var/run/netns/$NS" -- "$LOAD" --dst "$ADDR:$PORT" --rates "$PERF_RATE" \
    --secs 6 --stop-loss 101 >"$work/perf-load.txt" &
  gen=$!
  pids+=("$gen")
  sleep 0.5
  perf record -q -g -p "$server_pid" -o "$work/perf.data" -- sleep 5 >/dev/null 2>&1 || true
  wait "$gen" || true
  forget_pid "$gen"
  stop_server
  perf report -q -i "$work/perf.data" --no-children --sort sym -g none --stdio 2>/dev/null | grep '%' | head -25 >"$work/perf.txt" || true
  perf report -q -i "$work/perf.data" --no-children --sort dso -g none --stdio 2>/dev/null | grep '%' | head -5 >"$work/perf-dso.txt" || true
  log "perf, the SBC at $PERF_RATE/s:"$'\n'"$(cat "$work/perf-dso.txt" "$work/perf.txt")"
  perf_note="by object: $(awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1}' "$work/perf-dso.txt"); top symbols: $(awk 'NR <= 10 {printf "%s%s %s", (NR > 1 ? ", " : ""), $3, $1}' "$work/perf.txt")"
fi

ratio=$(awk -v a="${best[sbc]}" -v b="${best[coturn]}" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "—"}')
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
grep -qw hypervisor /proc/cpuinfo && cpu_model+=", a virtual machine"
rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
coturn_ver=$(dpkg-query -W -f '${Version}' coturn 2>/dev/null || echo unknown)
cmd="RATES=$RATES STEP_SECS=$STEP_SECS DRAIN_MS=$DRAIN_MS STOP_LOSS=$STOP_LOSS ROUNDS=$ROUNDS SERVER_CPU=$SERVER_CPU GEN_CPU=$GEN_CPU NICE=$NICE PERF=$PERF bench/stun/run.sh"
if [[ ! -s $RESULTS ]]; then
  printf '# Benchmark results\n\nSide-by-side runs, appended by the bench scripts (newest last).\n' >"$RESULTS"
fi
{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — STUN Binding: the SBC vs coturn"
  echo
  echo "- machine: $ncpu CPUs ($cpu_model), Linux $(uname -r); load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  echo "- peers: sbc @ $rev ($SBC), \`[stun] udp\` with workers = 1 (SO_REUSEPORT socket, recvmmsg/sendmmsg, 64 per batch), the per-source rate limit on at 10^8/s (looked up, never reached); coturn $coturn_ver from Debian, \`turnserver -n --stun-only -m 1\`, no TCP/TLS/DTLS/CLI, no SOFTWARE, RFC 5780 and backward compatibility off, \`--fingerprint\`"
  echo "- server socket receive buffers (ss rb): sbc ${rcvbuf_of[sbc]:-?} octets (it asks 4 MiB), coturn ${rcvbuf_of[coturn]:-?} octets (its own setting); net.core.rmem_max $(sysctl -n net.core.rmem_max)"
  echo "- CPU budget: each server pinned with taskset to CPU $SERVER_CPU (all its threads), the generator to CPU $GEN_CPU, all at nice $NICE; one network namespace, loopback, 127.0.0.1:$PORT"
  echo "- command: \`$cmd\` (\`just bench-stun\` builds and runs it with the defaults)"
  echo "- load: stun_load, 28-octet Binding requests (FINGERPRINT), rate ladder $RATES per second, $STEP_SECS s per step, answers counted once per transaction id after ${DRAIN_MS} ms, ladder stopped at the first step losing ≥ $STOP_LOSS %; $ROUNDS rounds, alternating which server goes first, best of each"
  echo
  echo "| | SBC | coturn | SBC / coturn |"
  echo "|---|---:|---:|---:|"
  echo "| Binding requests answered per second, highest step with < 1% loss (higher is better) | ${best[sbc]} | ${best[coturn]} | $ratio |"
  echo
  for ((r = 1; r <= ROUNDS; r++)); do
    for peer in sbc coturn; do
      echo "- round $r, $peer (${cpu_of[$peer-$r]}; ${drops_of[$peer-$r]}): ${steps_of[$peer-$r]}"
    done
  done
  if [[ -n $perf_note ]]; then
    echo "- perf record -g of the SBC at $PERF_RATE requests/s, top symbols (self): $perf_note"
  fi
} | tee -a "$RESULTS"
log "appended to $RESULTS"
