#!/usr/bin/env bash
# XDP drop cost: our sbc_xdp vs xdp-filter (Debian xdp-tools), same veth, same flood.
#
# Lab: netns hx-xbs-$$ (sender, 198.51.100.66 unlisted / 203.0.113.10 listed) ── veth ──
#      netns hx-xbr-$$ (r0, 192.0.2.1; the program under test attached in native mode).
# For each program: a bounded UDP flood (udp_flood example, --count/--seconds) from the
# unlisted source to 192.0.2.1:5060, measured with kernel.bpf_stats_enabled=1
# (bpftool prog show: run_time_ns / run_cnt), then BPF_PROG_TEST_RUN of the same frame
# (bpftool prog run, repeat N) as a noise-free cross-check.
#
# Configs compared, both "drop what is not allowed":
#   sbc_xdp:    protected 192.0.2.1:5060 udp+tcp (exact), allowlist 203.0.113.0/24 + filler
#               prefixes (ALLOW_PREFIXES, default 200), empty blocklist.
#   xdp-filter: policy deny (drop unmatched), allow src 203.0.113.10.
#
# Usage: sudo bench/xdp/run.sh   (env: COUNT=1000000 SECONDS_MAX=30 REPEAT=2000000 ALLOW_PREFIXES=200)
# Needs: root, bpftool, xdp-filter, cargo. Cleans up namespaces, processes (by PID), the
# bpf_stats sysctl and a bpffs mount it made, also on failure.
set -euo pipefail

COUNT=${COUNT:-1000000}
SECONDS_MAX=${SECONDS_MAX:-30}
REPEAT=${REPEAT:-2000000}
ALLOW_PREFIXES=${ALLOW_PREFIXES:-200}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
NS_S=hx-xbs-$$
NS_R=hx-xbr-$$
WORK=$(mktemp -d /tmp/hx-xdp-bench.XXXXXX)
HOLD_PID=""
MOUNTED_BPFFS=0
OLD_STATS=$(sysctl -n kernel.bpf_stats_enabled)

[[ $(id -u) == 0 ]] || { echo "bench-xdp: needs root" >&2; exit 1; }
for t in bpftool xdp-filter ip nsenter; do
  command -v "$t" >/dev/null || { echo "bench-xdp: $t not found (apt-get install bpftool xdp-tools iproute2)" >&2; exit 1; }
done

in_r() { nsenter --net="/var/run/netns/$NS_R" -- "$@"; }
in_s() { nsenter --net="/var/run/netns/$NS_S" -- "$@"; }

cleanup() {
  set +e
  if [[ -n $HOLD_PID ]] && kill -0 "$HOLD_PID" 2>/dev/null; then
    touch "$WORK/stop"
    for _ in $(seq 50); do kill -0 "$HOLD_PID" 2>/dev/null || break; sleep 0.1; done
    kill "$HOLD_PID" 2>/dev/null
  fi
  in_r xdp-filter unload r0 >/dev/null 2>&1
  ip netns del "$NS_S" 2>/dev/null
  ip netns del "$NS_R" 2>/dev/null
  sysctl -qw kernel.bpf_stats_enabled="$OLD_STATS"
  [[ $MOUNTED_BPFFS == 1 ]] && umount /sys/fs/bpf
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== building (release) sbc-xdp examples" >&2
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p sbc-xdp --examples)
HOLD=$TARGET_DIR/release/examples/xdp_hold
FLOOD=$TARGET_DIR/release/examples/udp_flood

# libxdp (xdp-filter) keeps its state in bpffs.
if ! mountpoint -q /sys/fs/bpf; then mount -t bpf bpf /sys/fs/bpf; MOUNTED_BPFFS=1; fi

ip netns add "$NS_S"
ip netns add "$NS_R"
ip link add s0 netns "$NS_S" type veth peer name r0 netns "$NS_R"
ip -n "$NS_S" link set s0 up
ip -n "$NS_R" link set r0 up
ip -n "$NS_R" addr add 192.0.2.1/24 dev r0
ip -n "$NS_S" addr add 198.51.100.66/24 dev s0
ip -n "$NS_S" addr add 203.0.113.10/24 dev s0
ip -n "$NS_S" route replace 192.0.2.0/24 dev s0
R_MAC=$(ip -n "$NS_R" -br link show r0 | awk '{print $3}')
S_MAC=$(ip -n "$NS_S" -br link show s0 | awk '{print $3}')
ip -n "$NS_S" neigh replace 192.0.2.1 lladdr "$R_MAC" dev s0 nud permanent
ip -n "$NS_R" neigh replace 198.51.100.66 lladdr "$S_MAC" dev r0 nud permanent
sysctl -qw kernel.bpf_stats_enabled=1

# The flood's frame, for BPF_PROG_TEST_RUN: Ethernet / IPv4 198.51.100.66 -> 192.0.2.1 /
# UDP 40000 -> 5060 / 200 bytes of 'f' (same size as the flood's datagrams).
hex2bin() { local h=$1 out=""; for ((i = 0; i < ${#h}; i += 2)); do out+="\\x${h:i:2}"; done; printf "%b" "$out"; }
{ hex2bin 0200000000020200000000010800450000e40001000040118d91c6336442c00002019c4013c400d00000
  printf 'f%.0s' $(seq 200); } > "$WORK/frame.bin"

prog_stats() { # id -> "run_time_ns run_cnt"
  bpftool prog show id "$1" | sed -n 's/.*run_time_ns \([0-9]*\) run_cnt \([0-9]*\).*/\1 \2/p' | grep . || echo "0 0"
}

measure() { # name prog_id -> one result line
  local name=$1 id=$2 t0 c0 t1 c1 flood pr
  read -r t0 c0 < <(prog_stats "$id")
  flood=$(in_s "$FLOOD" --src 198.51.100.66 --dst 192.0.2.1:5060 --count "$COUNT" --seconds "$SECONDS_MAX")
  read -r t1 c1 < <(prog_stats "$id")
  pr=$(bpftool prog run id "$id" data_in "$WORK/frame.bin" repeat "$REPEAT" 2>&1 | sed -n 's/.*Return value: \([0-9]*\), duration (average): \([0-9]*\)ns.*/ret=\1 \2/p')
  local secs sent runs=$((c1 - c0)) ns=$((t1 - t0))
  secs=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$flood")
  sent=$(sed -n 's/.*sent=\([0-9]*\).*/\1/p' <<<"$flood")
  awk -v n="$name" -v ns="$ns" -v runs="$runs" -v sent="$sent" -v secs="$secs" -v pr="$pr" 'BEGIN {
    printf "%s|%d|%d|%.1f|%.0f|%s\n", n, sent, runs, (runs ? ns / runs : 0), (secs ? runs / secs : 0), pr }'
}

echo "== sbc_xdp" >&2
ALLOW_ARGS=(--allow 203.0.113.0/24)
for ((i = 0; i < ALLOW_PREFIXES; i++)); do ALLOW_ARGS+=(--allow "198.18.$((i / 256)).$((i % 256))/32"); done
in_r "$HOLD" --iface r0 --mode native --protect 192.0.2.1:5060/udp --protect 192.0.2.1:5060/tcp \
  "${ALLOW_ARGS[@]}" --stop-file "$WORK/stop" --seconds $((SECONDS_MAX * 2 + 60)) > "$WORK/hold.out" 2>&1 &
HOLD_PID=$!
for _ in $(seq 100); do grep -q '^ready' "$WORK/hold.out" 2>/dev/null && break; sleep 0.1; done
OURS_ID=$(sed -n 's/^ready prog_id=\([0-9]*\).*/\1/p' "$WORK/hold.out")
[[ -n $OURS_ID ]] || { cat "$WORK/hold.out" >&2; exit 1; }
OURS=$(measure sbc_xdp "$OURS_ID")
touch "$WORK/stop"; wait "$HOLD_PID"; HOLD_PID=""
grep '^stats' "$WORK/hold.out" >&2

echo "== xdp-filter" >&2
in_r xdp-filter load r0 --mode native --policy deny >/dev/null
in_r xdp-filter ip 203.0.113.10 --mode src >/dev/null
XF_ID=$(in_r ip -d link show r0 | sed -n 's/.*prog\/xdp id \([0-9]*\).*/\1/p' | head -1)
XF=$(measure xdp-filter "$XF_ID")
in_r xdp-filter unload r0 >/dev/null

echo
echo "XDP drop of a bounded UDP flood from an unlisted source ($COUNT datagrams max, ${SECONDS_MAX}s max), $(uname -r), $(nproc) CPUs"
echo
echo "| program | datagrams sent | program runs | ns/packet (bpf_stats, live) | drops/s (sender-bound) | BPF_PROG_TEST_RUN ns (x$REPEAT) |"
echo "|---|---|---|---|---|---|"
for row in "$OURS" "$XF"; do
  IFS='|' read -r n sent runs nspp pps pr <<<"$row"
  echo "| $n | $sent | $runs | $nspp | $pps | ${pr#ret=? } |"
done
IFS='|' read -r _ _ _ ours_ns _ ours_pr <<<"$OURS"
IFS='|' read -r _ _ _ xf_ns _ xf_pr <<<"$XF"
awk -v a="$ours_ns" -v b="$xf_ns" -v c="${ours_pr##* }" -v d="${xf_pr##* }" 'BEGIN {
  printf "\nratio sbc_xdp / xdp-filter: live %.2f, test-run %.2f (below 1 = ours cheaper)\n", a / b, c / d }'
