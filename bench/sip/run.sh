#!/usr/bin/env bash
# SIP proxying benchmark: the SBC and Kamailio (stateful proxy + topoh, the closest thing to
# what the SBC does) side by side, in one run, between the same sipp UAC and sipp UAS, all on
# loopback (UDP). For each peer it measures
#   (a) CPU seconds (utime+stime, all of the peer's processes) per 1000 calls at a fixed rate;
#   (b) the highest call rate with < 1% failed calls (stepping the rate up).
# and appends a dated section with both and their ratio to bench/RESULTS.md.
#
#   cargo build --release -p sbc && bench/sip/run.sh      # `just bench-sip` does both
#   PEERS=kamailio bench/sip/run.sh                       # one peer only (no ratio)
#
# Layout (UDP):
#   sipp UAC 127.0.0.1:6000 -> SBC external 127.0.0.1:5060 | SBC internal 127.0.0.2:5060 -> sipp UAS 127.0.0.3:5080
#   sipp UAC 127.0.0.1:6000 -> Kamailio 127.0.0.4:5060 ----------------------------------> sipp UAS 127.0.0.3:5080
#
# Environment (defaults in brackets):
#   SBC [target/release/sbc]  PEERS ["sbc kamailio"]  CALL_MS [1000] call length (sipp -d)
#   WORKERS [0] the SBC's [engine] workers (0: one per core)
#   CPU_RATE [200] CPU_SECS [15]               phase (a)
#   STEPS ["200 400 800 1200 1600 2000 2400 3200 4000 4800"] STEP_SECS [10]   phase (b)
#   KAM_CHILDREN [4] Kamailio UDP workers      KAM_MEM [fm] Kamailio memory manager (-x)
#   KAM_SHM [1024] Kamailio shared memory, MB (at 256 MB it ran out of transactions near 1600/s)
#   RESULTS [bench/RESULTS.md]                 KEEP=1 keeps the logs
#   addresses: UAC_IP UAC_PORT SBC_EXT_IP SBC_INT_IP SBC_PORT UAS_IP UAS_PORT KAM_IP KAM_PORT
#   (defaults as in the layout above; the script stops if one is already in use)
# Kamailio runs with -x fm: Debian's build defaults to qm with memory debugging compiled in,
# which costs about 3x the CPU per call here; fm (or tlsf) is what a production setup uses.
# Every process this script starts is killed by PID when it exits; every sipp run is bounded
# by -m, -timeout and `timeout`.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
SBC="${SBC:-$root/target/release/sbc}"
PEERS="${PEERS:-sbc kamailio}"
CALL_MS="${CALL_MS:-1000}"
CPU_RATE="${CPU_RATE:-200}"
CPU_SECS="${CPU_SECS:-15}"
STEPS="${STEPS:-200 400 800 1200 1600 2000 2400 3200 4000 4800}"
STEP_SECS="${STEP_SECS:-10}"
KAM_CHILDREN="${KAM_CHILDREN:-4}"
KAM_MEM="${KAM_MEM:-fm}"
KAM_SHM="${KAM_SHM:-1024}"
RESULTS="${RESULTS:-$root/bench/RESULTS.md}"
scen="$root/tests/peers/scenarios"
kam_cfg="$root/bench/kamailio/kamailio-topoh.cfg"

UAC_IP="${UAC_IP:-127.0.0.1}" UAC_PORT="${UAC_PORT:-6000}"
SBC_EXT_IP="${SBC_EXT_IP:-127.0.0.1}" SBC_INT_IP="${SBC_INT_IP:-127.0.0.2}" SBC_PORT="${SBC_PORT:-5060}"
UAS_IP="${UAS_IP:-127.0.0.3}" UAS_PORT="${UAS_PORT:-5080}"
KAM_IP="${KAM_IP:-127.0.0.4}" KAM_PORT="${KAM_PORT:-5060}"
BUF=$((4 * 1024 * 1024))

work="$(mktemp -d /tmp/hp-bench-sip.XXXXXX)"
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"

cleanup() {
    stop_pids
    if [[ "${KEEP:-0}" == 1 ]]; then log "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}

for tool in sipp kamailio ss awk timeout; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install sip-tester kamailio iproute2)"
done
for p in $PEERS; do
    case "$p" in
        sbc) [[ -x "$SBC" ]] || die "$SBC not found: cargo build --release -p sbc (or set SBC=)" ;;
        kamailio) ;;
        *) die "unknown peer $p (PEERS takes sbc and/or kamailio)" ;;
    esac
done

# Wait until every ip:port given is bound (UDP), at most 10 s.
wait_udp() {
    local i addr missing
    for i in $(seq 100); do
        missing=0
        for addr in "$@"; do
            ss -Hlun src "$addr" 2>/dev/null | grep -q . || missing=1
        done
        [[ $missing == 0 ]] && return 0
        sleep 0.1
    done
    return 1
}

udp_free() {
    local addr
    for addr in "$@"; do
        if ss -Hlun src "$addr" 2>/dev/null | grep -q .; then die "$addr (udp) is already in use"; fi
    done
}

# Sum of utime+stime, in clock ticks, of the given PIDs (all threads of each).
cpu_ticks() {
    local p total=0 t
    for p in "$@"; do
        [[ -r /proc/$p/stat ]] || continue
        # fields after "pid (comm) ": state is $1, utime $12, stime $13
        t=$(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')
        total=$((total + t))
    done
    echo "$total"
}

# Milliseconds the given PIDs' threads spent runnable but waiting for a CPU (schedstat's
# run_delay): a peer that drops while this is high was starved by the load generators or other
# tenants, not idle. Threads that exit during a step take their share with them.
cpu_wait_ms() {
    local p f total=0
    for p in "$@"; do
        for f in /proc/"$p"/task/*/schedstat; do
            [[ -r $f ]] || continue
            total=$((total + $(awk '{print int($2 / 1000000)}' "$f")))
        done
    done
    echo "$total"
}

# Where datagrams were lost during a step (so a loss with CPU to spare has a name):
# the kernel's UDP receive-buffer drops, machine-wide (/proc/net/snmp RcvbufErrors: every
# socket, the load generators' too), and those of the SBC's own sockets (ss skmem d: drops
# since the socket was made), and the sipp UAS's (started afresh for each step).
udp_rcvbuf_errors() { awk '/^Udp:/ && $2 ~ /^[0-9]+$/ {print $6}' /proc/net/snmp; }
socket_drops() { # the drops of the UDP sockets bound to the given ip:port
    ss -Huamn 2>/dev/null | awk -v want_list="$*" '
        BEGIN { n = split(want_list, w, " "); for (i = 1; i <= n; i++) want_addr[w[i]] = 1 }
        ($4 in want_addr) { want = 1; next }
        want && match($0, /,d[0-9]+\)/) { d += substr($0, RSTART + 2, RLENGTH - 3); want = 0 }
        END { print d + 0 }'
}
sbc_socket_drops() { socket_drops "$SBC_EXT_IP:$SBC_PORT" "$SBC_INT_IP:$SBC_PORT"; }
# The SBC's own view after a step: state sizes, retransmissions, shard queue drops.
sbc_counters() {
    "$SBC" stats --socket "$work/sbc/admin.sock" 2>/dev/null | awk '
        /^(state\.(server_transactions|client_transactions|dialogs)|sip\.(retransmissions_sent|retransmissions_absorbed|shard_queue_full|shard_largest_batch|workers)) / {
            sub(/^(state|sip)\./, ""); printf "%s=%s ", $1, $2 }'
}

# --- peers -------------------------------------------------------------------------------

peer_main=""   # the PID started (and stopped) for the peer under test

# The processes whose CPU is counted: the peer and its children (Kamailio's workers are all
# children of the process started here, as -DD keeps it from forking a daemon).
peer_pids() { echo "$peer_main"; pgrep -P "$peer_main" || true; }

start_sbc() {
    local dir="$work/sbc"
    mkdir -p "$dir"
    cat >"$dir/sbc.toml" <<EOF
[external]
udp = ["$SBC_EXT_IP:$SBC_PORT"]
tcp = ["$SBC_EXT_IP:$SBC_PORT"]
[internal]
udp = ["$SBC_INT_IP:$SBC_PORT"]
tcp = ["$SBC_INT_IP:$SBC_PORT"]
[[core]]
address = "$UAS_IP:$UAS_PORT"
transport = "udp"
[probe]
interval_ms = 0   # 0 disables OPTIONS probing (the sipp UAS doesn't answer OPTIONS)
[engine]
workers = ${WORKERS:-0}
[admin]
socket = "$dir/admin.sock"
[guard]
enabled = false   # one sipp source at thousands of calls/s: the per-source limits would refuse it (Kamailio has none here)
[log]
level = "warn"
EOF
    udp_free "$SBC_EXT_IP:$SBC_PORT" "$SBC_INT_IP:$SBC_PORT"
    "$SBC" run -c "$dir/sbc.toml" >"$dir/sbc.log" 2>&1 &
    peer_main=$!
    pids+=("$peer_main")
    wait_udp "$SBC_EXT_IP:$SBC_PORT" "$SBC_INT_IP:$SBC_PORT" ||
        { tail -20 "$dir/sbc.log" >&2; die "the SBC did not bind its UDP sockets"; }
    kill -0 "$peer_main" 2>/dev/null || { tail -20 "$dir/sbc.log" >&2; die "the SBC exited"; }
    target="$SBC_EXT_IP:$SBC_PORT"
}

start_kamailio() {
    local dir="$work/kamailio" i
    mkdir -p "$dir"
    udp_free "$KAM_IP:$KAM_PORT"
    kamailio -f "$kam_cfg" -DD -E -x "$KAM_MEM" -m "$KAM_SHM" -M 16 -l "udp:$KAM_IP:$KAM_PORT" \
        -A "UAS_URI=\"sip:$UAS_IP:$UAS_PORT\"" -A "CHILDREN=$KAM_CHILDREN" \
        -P "$dir/kamailio.pid" -Y "$dir" >"$dir/kamailio.log" 2>&1 &
    peer_main=$!
    pids+=("$peer_main")
    wait_udp "$KAM_IP:$KAM_PORT" ||
        { tail -20 "$dir/kamailio.log" >&2; die "Kamailio did not bind $KAM_IP:$KAM_PORT"; }
    target="$KAM_IP:$KAM_PORT"
}

stop_peer() {
    stop_pid "$peer_main"
    peer_main=""
}

# --- sipp ----------------------------------------------------------------------------------

uas_pid=""
start_uas() { # a fresh UAS for every run, so no call left over from a failed run lingers
    [[ -z "$uas_pid" ]] || stop_pid "$uas_pid"
    udp_free "$UAS_IP:$UAS_PORT"
    # linger_ms: keep each call 4 s after its last 200, to answer a retransmitted BYE again
    timeout 900 sipp -sf "$scen/uas-nosdp.xml" -t u1 -i "$UAS_IP" -p "$UAS_PORT" -mp 17000 \
        -set linger_ms 4000 -buff_size "$BUF" -nostdin -timeout 890s >>"$work/uas.log" 2>&1 &
    uas_pid=$!
    pids+=("$uas_pid")
    wait_udp "$UAS_IP:$UAS_PORT" || die "the sipp UAS did not start"
}

# run_uac NAME RATE CALLS: sets ok failed created elapsed (seconds, wall clock)
run_uac() {
    local name="$1" rate="$2" calls="$3" csv="$work/$1.csv" t0 t1 limit
    limit=$((calls / rate + CALL_MS / 1000 + 20))
    rm -f "$csv"
    t0=$(date +%s.%N)
    timeout $((limit + 10)) sipp -sf "$scen/uac.xml" -t u1 -i "$UAC_IP" -p "$UAC_PORT" -mp 16000 \
        "$target" -r "$rate" -m "$calls" -d "$CALL_MS" -l $((rate * (CALL_MS / 1000 + 5))) \
        -buff_size "$BUF" -nostdin -timeout "${limit}s" \
        -trace_stat -stf "$csv" -fd 1 >"$work/$name.log" 2>&1 || true
    t1=$(date +%s.%N)
    elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
    read -r ok failed created < <(awk -F';' '
        NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        { s = $col["SuccessfulCall(C)"]; f = $col["FailedCall(C)"]; c = $col["TotalCallCreated"] }
        END { print s + 0, f + 0, c + 0 }' "$csv" 2>/dev/null || echo "0 0 0")
}

# --- the two phases ------------------------------------------------------------------------

declare -A cpu_per_1000 cpu_failed max_rate steps_log

measure_peer() {
    local peer="$1" before after ticks hz calls rate fail_pct max=0 line="" reached budget procs busy
    hz=$(getconf CLK_TCK)
    log "$peer: starting"
    "start_$peer"
    start_uas
    run_uac "$peer-warmup" "$CPU_RATE" "$CPU_RATE"   # 1 s of calls, not counted

    # (a) CPU per 1000 calls at a fixed rate
    start_uas
    calls=$((CPU_RATE * CPU_SECS))
    mapfile -t procs < <(peer_pids)
    before=$(cpu_ticks "${procs[@]}")
    run_uac "$peer-cpu" "$CPU_RATE" "$calls"
    after=$(cpu_ticks "${procs[@]}")
    ticks=$((after - before))
    if ((ok > 0)); then
        cpu_per_1000[$peer]=$(awk -v t="$ticks" -v hz="$hz" -v ok="$ok" \
            'BEGIN {printf "%.3f", t / hz / ok * 1000}')
    else
        cpu_per_1000[$peer]="n/a"
    fi
    cpu_failed[$peer]="$((calls - ok))/$calls"
    log "$peer: (a) $ok/$calls calls ok at $CPU_RATE/s, ${#procs[@]} processes, $ticks ticks -> ${cpu_per_1000[$peer]} CPU s per 1000 calls"

    # (b) highest rate with < 1% failed calls
    for rate in $STEPS; do
        start_uas
        sleep 1
        calls=$((rate * STEP_SECS))
        mapfile -t procs < <(peer_pids)
        before=$(cpu_ticks "${procs[@]}")
        wait_before=$(cpu_wait_ms "${procs[@]}")
        rcvbuf_before=$(udp_rcvbuf_errors) sock_before=$(sbc_socket_drops)
        run_uac "$peer-step-$rate" "$rate" "$calls"
        after=$(cpu_ticks "${procs[@]}")
        wait_after=$(cpu_wait_ms "${procs[@]}")
        drops="UDP receive-buffer drops: machine $(($(udp_rcvbuf_errors) - rcvbuf_before)), sipp UAS $(socket_drops "$UAS_IP:$UAS_PORT")"
        if [[ $peer == sbc ]]; then
            drops+=", SBC sockets $(($(sbc_socket_drops) - sock_before)); SBC: $(sbc_counters)"
        fi
        busy=$(awk -v t="$((after - before))" -v hz="$hz" -v e="$elapsed" \
            'BEGIN {printf "%.0f", t / hz / e * 100}')
        starved=$(awk -v w="$((wait_after - wait_before))" -v e="$elapsed" 'BEGIN {printf "%.0f", w / 10 / e}')
        fail_pct=$(awk -v ok="$ok" -v n="$calls" 'BEGIN {printf "%.2f", (n - ok) * 100 / n}')
        # the rate counts as reached if the calls were over within the step + call length + 2 s
        budget=$(awk -v s="$STEP_SECS" -v d="$CALL_MS" 'BEGIN {printf "%.2f", s * 1.05 + d / 1000 + 2}')
        reached=$(awk -v e="$elapsed" -v b="$budget" 'BEGIN {print (e <= b) ? "yes" : "no"}')
        log "$peer: (b) $rate/s: $ok/$calls ok ($fail_pct% failed), ${elapsed}s (budget ${budget}s), peer CPU ${busy}%, waiting for a CPU ${starved}%; $drops"
        line+="$rate/s: ${fail_pct}% failed, ${elapsed} s, peer CPU ${busy}%, waiting for a CPU ${starved}%; "
        if [[ $reached == yes ]] && awk -v f="$fail_pct" 'BEGIN {exit !(f < 1)}'; then
            max=$rate
        else
            break
        fi
    done
    max_rate[$peer]=$max
    [[ "$max" == "${STEPS##* }" ]] && max_rate[$peer]="≥ $max"
    steps_log[$peer]="${line%; }"
    stop_pid "$uas_pid"
    uas_pid=""
    stop_peer
}

udp_free "$UAC_IP:$UAC_PORT"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for peer in $PEERS; do
    measure_peer "$peer"
done

# --- report --------------------------------------------------------------------------------

val() { local -n a="$1"; echo "${a[$2]:-—}"; }
ratio() { # ratio of two numbers, or — when either is missing
    awk -v a="$1" -v b="$2" 'BEGIN {
        gsub(/[^0-9.]/, "", a); gsub(/[^0-9.]/, "", b)
        if (a == "" || b == "" || b + 0 == 0) print "—"; else printf "%.2f", a / b }'
}

# (c) the engine's instructions per call under callgrind: deterministic (no sockets, a virtual
# clock, the same bytes each run), so it tracks the SBC's own cost across noisy machines.
# sbc/proto/examples/engine_calls.rs drives INVITE/100/180/200/ACK/BYE/200 through the sans-IO
# engine; only the engine's entry points are counted (--toggle-collect), and the difference of
# two runs (SMALL and LARGE calls) divided by their difference cancels the set-up.
ENGINE_CALLS="${ENGINE_CALLS:-$root/target/release/examples/engine_calls}"
instr_per_call="—"
if [[ " $PEERS " == *" sbc "* ]] && command -v valgrind >/dev/null && [[ -x "$ENGINE_CALLS" ]]; then
    ir_of() {
        valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.$1" \
            --toggle-collect='*Engine*handle_datagram*' --toggle-collect='*Engine*poll_output*' \
            --toggle-collect='*Engine*handle_timeout*' "$ENGINE_CALLS" "$1" 2>&1 |
            awk '/Collected :/ {print $NF}'
    }
    small=$(ir_of 200) large=$(ir_of 1200)
    if [[ -n "$small" && -n "$large" ]]; then
        instr_per_call=$(( (large - small) / 1000 ))
        log "sbc: (c) $instr_per_call engine instructions per call (callgrind, engine_calls 1200 - 200)"
    fi
else
    log "sbc: (c) skipped: needs valgrind and $ENGINE_CALLS (cargo build --release -p sbc-proto --example engine_calls)"
fi

cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
cmd="bench/sip/run.sh"
if [[ ! -s "$RESULTS" ]]; then
    printf '# Benchmark results\n\nSide-by-side runs, appended by the bench scripts (newest last).\n' >"$RESULTS"
fi
env_used="PEERS=\"$PEERS\" WORKERS=${WORKERS:-0} CPU_RATE=$CPU_RATE CPU_SECS=$CPU_SECS CALL_MS=$CALL_MS STEP_SECS=$STEP_SECS STEPS=\"$STEPS\" KAM_CHILDREN=$KAM_CHILDREN KAM_MEM=$KAM_MEM KAM_SHM=$KAM_SHM"
{
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — SIP proxy: SBC vs Kamailio (topoh)"
    echo
    echo "- machine: $(nproc) CPUs ($cpu_model), Linux $(uname -r); load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
    echo "- peers: sbc @ $rev ($SBC); $(kamailio -v 2>/dev/null | head -1 | sed 's/^version: //; s/ *$//') with bench/kamailio/kamailio-topoh.cfg, $KAM_CHILDREN UDP workers, -x $KAM_MEM -m $KAM_SHM; $(sipp -v 2>/dev/null | awk 'NF {print; exit}' | sed 's/^ *//')"
    echo "- command: \`$env_used $cmd\`"
    echo "- flow: sipp tests/peers/scenarios/uac.xml ($UAC_IP:$UAC_PORT, UDP) → peer → sipp uas-nosdp.xml ($UAS_IP:$UAS_PORT); INVITE/100/180/200/ACK, ${CALL_MS} ms, BYE/200; all on loopback, load generators on the same $(nproc) CPUs"
    echo
    echo "| | SBC | Kamailio | SBC / Kamailio |"
    echo "|---|---:|---:|---:|"
    echo "| CPU s per 1000 calls at $CPU_RATE calls/s for $CPU_SECS s (lower is better) | $(val cpu_per_1000 sbc) | $(val cpu_per_1000 kamailio) | $(ratio "$(val cpu_per_1000 sbc)" "$(val cpu_per_1000 kamailio)") |"
    echo "| calls not completed in that run | $(val cpu_failed sbc) | $(val cpu_failed kamailio) | |"
    echo "| max calls/s with < 1% failed, ${STEP_SECS} s steps (higher is better) | $(val max_rate sbc) | $(val max_rate kamailio) | $(ratio "$(val max_rate sbc)" "$(val max_rate kamailio)") |"
    echo "| engine instructions per call (callgrind, fixed scenario; lower is better) | $instr_per_call | | |"
    echo
    for peer in $PEERS; do
        echo "- steps, $peer: $(val steps_log "$peer")"
    done
} | tee -a "$RESULTS"
log "appended to $RESULTS"
