#!/usr/bin/env bash
# XDP trunk filter benchmark: the SBC daemon's own XDP program vs xdp-filter (Debian's
# xdp-tools) on the same veth, the same bounded flood from an unlisted source, in one run.
# Appends a dated section to bench/RESULTS.md (and prints it).
#
#   cargo build --release -p sbc && cargo build --release -p sbc-xdp --example udp_flood
#   sudo bench/xdp/run.sh                       # `just bench-xdp` does all three
#
# Lab (two network namespaces, one veth pair, nothing else on the link):
#   hb-xs-PID: s0  198.51.100.66 (unlisted: the flood), 203.0.113.10 (the listed carrier)
#   hb-xr-PID: r0  192.0.2.1 — the SBC's external side (udp+tcp 192.0.2.1:5060); its internal
#              side and the (absent) core on the namespace's loopback. Static neighbours both
#              ways (no ARP on the link), IPv6 off (no ND/MLD noise in the counters).
# Phases, each with a fresh SBC (`sbc run`, release build) on r0:
#   sbc         [trunk] interface = "r0", xdp_mode = "native": the daemon attaches its XDP
#               program itself; protected = the external listen addresses (the default);
#               allowlist = 203.0.113.10/32 + ALLOW_PREFIXES filler /32s.
#   xdp-filter  the same SBC and allowlist, but [trunk] without `interface` (userspace list
#               only), and xdp-filter in native mode on r0 in front of it (configuration below).
#   floor       (FLOOR=1) the same SBC behind the smallest XDP program there is, two
#               instructions returning XDP_DROP (bench/xdp/xdp_drop_floor.py): what any XDP
#               program costs on this machine, so the figures above it can be read.
#   none        (BASELINE=1) no XDP at all: the SBC's userspace filter takes the flood. The
#               reference for "the SBC's CPU during the flood should be near zero".
# Each phase: a bounded flood (udp_flood example: one thread, COUNT datagrams or SECONDS_MAX
# seconds, whichever first, LEN-byte payload) from 198.51.100.66 to 192.0.2.1:5060/udp, and
#   - datagrams sent and the flood's duration (udp_flood's own report);
#   - drops: `sbc stats` xdp.drop_not_allowed delta (sbc), xdp-filter's XDP_DROP delta
#     (xdp-filter), userspace.dropped_not_listed delta (none); drop rate = drops / duration;
#   - ns/packet of the attached program: kernel.bpf_stats_enabled=1, `bpftool prog show`
#     run_time_ns/run_cnt deltas (these include bpf_stats' own two clock reads per run: see the
#     floor); plus BPF_PROG_TEST_RUN of the flood's frame (REPEAT times, bpf_stats off) as a
#     cross-check without the network stack or the clock reads;
#   - the SBC process's CPU (utime+stime, all threads, /proc/PID/stat; and the sum of its
#     threads' schedstat run time, ns) and its sip.requests_in delta over the flood (must be 0);
#   - afterwards, 5 SIP OPTIONS from the listed carrier must reach the SBC (the filter is not
#     just dropping everything on that port).
#
# What xdp-filter is configured with (it cannot match "port AND source", so the equivalent job
# is built from its deny policy): `xdp-filter load r0 --mode native --policy deny` (every
# feature: tcp,udp,ipv6,ipv4,ethernet — no smaller build of it has both IP and port matching),
# `xdp-filter ip 203.0.113.10 --mode src` (the carrier passes), and every destination port
# except 5060 allowed for UDP and TCP (65534 entries written into its pinned port map with
# `bpftool batch`, as `xdp-filter port P --mode dst --proto tcp,udp` would, in 1 s instead of
# 65534 invocations). Net effect: UDP/TCP to port 5060 is dropped unless it comes from
# 203.0.113.10; other UDP/TCP ports pass. It is broader than ours on two counts: the port rule
# holds for every destination address, not only 192.0.2.1, and it drops non-UDP/TCP IP traffic
# and ARP from unlisted sources (ours passes those). Per flood packet both parse to UDP, miss
# and drop: xdp-filter with four hash lookups (MAC dst/src in an empty map, IPv4 dst/src) and
# two port-array reads; ours with array reads (ports, config), one hash lookup (the exact
# protected address) and one LPM-trie lookup (the allowlist, 201 prefixes by default).
#
# A loaded blocklist (the default): BANS single-address bans (10.0.0.0/8, /32s, no end) written
# into our program's BLOCK_V4_HOST hash and PREFIX_BANS /24 bans (172.16.0.0/12, no end) into its
# BLOCK_V4 trie (bpftool batch, with their lengths in CONFIG: what `XdpFilter::block` writes)
# before the sbc phase; xdp-filter's own source-address map (filter_ipv4) gets the first of the
# same 10/8 addresses up to its capacity (10000 in Debian's build, read from the map; it has no
# prefix match at all), as pass rules of its deny policy: a miss for the flood either way.
# Our program looks the blocklist up only for a packet it would pass (see ebpf/xdp), so the
# unlisted flood to the protected port is dropped by the allowlist before any ban lookup; the
# cost of the ban lookups is measured where they are on the path:
#   listed      BPF_PROG_TEST_RUN only (no flood: it would pass into the SBC): a frame from the
#               listed carrier to the protected port, which both programs pass; ours after the
#               allowlist hit, a miss in the address hash and a miss in the prefix trie.
#   sbc-banned  the same SBC, 198.51.100.66 added to BLOCK_V4_HOST (BANS + 1 bans), the flood
#               sent to port BANNED_PORT (5080: not protected, like a subscriber-facing SIP
#               port, where bans are what drops): a hash hit, a clock read (the ban's end),
#               XDP_DROP (counter xdp.drop_blocked).
#   xf-banned   xdp-filter with the same bans in its blocklist: `--policy allow` (its entries
#               are then drop rules; with `--policy deny`, the allowlist setup above, its
#               entries are pass rules, so it cannot hold an allowlist and a blocklist at
#               once), `xdp-filter ip 198.51.100.66 --mode src`, and the first XF_BANS of the
#               same 10/8 addresses written to its pinned filter_ipv4 (value src, what
#               `xdp-filter ip A --mode src` writes). XF_BANS = min(BANS, its capacity - 1).
#
# Environment (defaults in brackets): COUNT [2000000] SECONDS_MAX [20] LEN [200]
#   REPEAT [1000000] ALLOW_PREFIXES [200] BANS [100000] PREFIX_BANS [1000] BANNED_PORT [5080]
#   RATE_PPS [1000; 0 skips the rate phases] FLOOR [1] BASELINE [1]
#   RESULTS [bench/RESULTS.md]
#   SBC [target/release/sbc] FLOOD [target/release/examples/udp_flood] KEEP=1 keeps the logs
# Needs root, bpftool, xdp-filter, nsenter, python3. Cleans up (also on failure): the
# namespaces, every process it started (by PID), xdp-filter, the private bpffs it mounted for
# libxdp (LIBXDP_BPFFS, so the host's /sys/fs/bpf is untouched), kernel.bpf_stats_enabled.
set -euo pipefail

COUNT=${COUNT:-2000000}
SECONDS_MAX=${SECONDS_MAX:-20}
LEN=${LEN:-200}
REPEAT=${REPEAT:-1000000}
ALLOW_PREFIXES=${ALLOW_PREFIXES:-200}
BANS=${BANS:-100000}
PREFIX_BANS=${PREFIX_BANS:-1000}
RATE_PPS=${RATE_PPS:-1000}
BANNED_PORT=${BANNED_PORT:-5080}
BASELINE=${BASELINE:-1}
FLOOR=${FLOOR:-1}
root=$(cd "$(dirname "$0")/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
SBC=${SBC:-$target_dir/release/sbc}
FLOOD=${FLOOD:-$target_dir/release/examples/udp_flood}
RESULTS=${RESULTS:-$root/bench/RESULTS.md}

NS_S=hb-xs-$$
NS_R=hb-xr-$$
R_IP=192.0.2.1 PORT=5060
BAD_IP=198.51.100.66 GOOD_IP=203.0.113.10

# shellcheck source=../lib.sh
source "$root/bench/lib.sh"

[[ $(id -u) == 0 ]] || die "needs root (network namespaces, XDP)"
for t in bpftool xdp-filter ip nsenter python3 awk sysctl mount; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install bpftool xdp-tools iproute2 util-linux python3)"
done
[[ -x $SBC ]] || die "$SBC not found: cargo build --release -p sbc (or set SBC=)"
[[ -x $FLOOD ]] || die "$FLOOD not found: cargo build --release -p sbc-xdp --example udp_flood (or set FLOOD=)"
[[ $BANS =~ ^[0-9]+$ && $BANS -le 262143 ]] || die "BANS must be 0..262143 (our BLOCK_V4_HOST holds 262144)"
[[ $PREFIX_BANS =~ ^[0-9]+$ && $PREFIX_BANS -le 65536 ]] || die "PREFIX_BANS must be 0..65536 (/24s in 172.16.0.0/12)"
[[ $RATE_PPS =~ ^[0-9]+$ && $RATE_PPS -le 1000000 ]] || die "RATE_PPS must be 0..1000000"
[[ $COUNT =~ ^[0-9]+$ && $SECONDS_MAX =~ ^[0-9]+$ && $COUNT -gt 0 && $SECONDS_MAX -gt 0 ]] ||
  die "COUNT and SECONDS_MAX must be positive integers (the flood is always bounded)"

work=$(mktemp -d /tmp/hb-xdp-bench.XXXXXX)
export LIBXDP_BPFFS=$work/bpffs
OLD_STATS=$(sysctl -n kernel.bpf_stats_enabled)
bpffs_mounted=0
ns_made=0

in_r() { nsenter --net="/var/run/netns/$NS_R" -- "$@"; }
in_s() { nsenter --net="/var/run/netns/$NS_S" -- "$@"; }

cleanup() {
  local rc=$?
  set +e
  stop_pids
  if [[ $ns_made == 1 ]]; then
    in_r xdp-filter unload r0 >/dev/null 2>&1
    ip netns del "$NS_S" 2>/dev/null
    ip netns del "$NS_R" 2>/dev/null
  fi
  sysctl -qw kernel.bpf_stats_enabled="$OLD_STATS"
  [[ $bpffs_mounted == 1 ]] && umount "$LIBXDP_BPFFS"
  if [[ ${KEEP:-0} == 1 || $rc != 0 ]]; then log "logs kept in $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the lab -------------------------------------------------------------------------------

mkdir -p "$LIBXDP_BPFFS"
mount -t bpf bpf "$LIBXDP_BPFFS"
bpffs_mounted=1

ns_made=1
ip netns add "$NS_S"
ip netns add "$NS_R"
for ns in "$NS_S" "$NS_R"; do
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip -n "$ns" link set lo up
done
ip link add s0 netns "$NS_S" type veth peer name r0 netns "$NS_R"
ip -n "$NS_S" link set s0 up
ip -n "$NS_R" link set r0 up
ip -n "$NS_R" addr add "$R_IP/24" dev r0
ip -n "$NS_S" addr add "$BAD_IP/24" dev s0
ip -n "$NS_S" addr add "$GOOD_IP/24" dev s0
ip -n "$NS_S" route replace 192.0.2.0/24 dev s0
ip -n "$NS_R" route replace 198.51.100.0/24 dev r0
ip -n "$NS_R" route replace 203.0.113.0/24 dev r0
R_MAC=$(ip -n "$NS_R" -br link show r0 | awk '{print $3}')
S_MAC=$(ip -n "$NS_S" -br link show s0 | awk '{print $3}')
ip -n "$NS_S" neigh replace "$R_IP" lladdr "$R_MAC" dev s0 nud permanent
ip -n "$NS_R" neigh replace "$BAD_IP" lladdr "$S_MAC" dev r0 nud permanent
ip -n "$NS_R" neigh replace "$GOOD_IP" lladdr "$S_MAC" dev r0 nud permanent

# The allowlist: the carrier, plus filler prefixes so the trie is not trivially small.
{
  echo "# sbc-allowlist v1"
  echo "# source: bench/xdp/run.sh"
  echo "$GOOD_IP/32 IN 7 \"Carrier\" 1 ip"
  for ((i = 0; i < ALLOW_PREFIXES; i++)); do
    echo "198.18.$((i / 256)).$((i % 256))/32 IN 9 \"Filler\" $((i + 2)) ip"
  done
} >"$work/allow.txt"

# sbc config: $1 = extra [trunk] lines
write_config() {
  cat >"$work/sbc.toml" <<EOF
[external]
udp = ["$R_IP:$PORT", "$R_IP:$BANNED_PORT"]
tcp = ["$R_IP:$PORT"]
[internal]
udp = ["127.0.0.2:5060"]
tcp = ["127.0.0.2:5060"]
[[core]]
address = "127.0.0.3:5080"
transport = "udp"
[probe]
interval_ms = 0
[log]
level = "info"
[admin]
socket = "$work/admin/sbc.sock"
[trunk]
allowlist = "$work/allow.txt"
protected = ["$R_IP:$PORT/udp", "$R_IP:$PORT/tcp"]
$1
EOF
}

sbc_pid=""
start_sbc() { # $1 = phase name, $2 = extra [trunk] lines
  write_config "$2"
  # nsenter execs the daemon (no fork for a net namespace), so $! is the SBC itself
  nsenter --net="/var/run/netns/$NS_R" -- "$SBC" run -c "$work/sbc.toml" >"$work/sbc-$1.log" 2>&1 &
  sbc_pid=$!
  pids+=("$sbc_pid")
  for _ in $(seq 100); do
    grep -q "sbc running" "$work/sbc-$1.log" 2>/dev/null && [[ -S $work/admin/sbc.sock ]] && break
    kill -0 "$sbc_pid" 2>/dev/null || break
    sleep 0.1
  done
  grep -q "sbc running" "$work/sbc-$1.log" || { tail -20 "$work/sbc-$1.log" >&2; die "the SBC did not start ($1)"; }
  [[ $(cat "/proc/$sbc_pid/comm") == sbc ]] || die "PID $sbc_pid is not the sbc process"
}

stop_sbc() {
  kill "$sbc_pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$sbc_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$sbc_pid" 2>/dev/null || true
  wait "$sbc_pid" 2>/dev/null || true
  forget_pid "$sbc_pid"
  sbc_pid=""
  rm -f "$work/admin/sbc.sock"
}

sbc_stats() { "$SBC" stats --socket "$work/admin/sbc.sock"; }
stat_of() { awk -v n="$2" '$1 == n {print $2; f = 1} END {if (!f) print 0}' <<<"$1"; }

# CPU of the SBC: "ticks ns" = utime+stime (clock ticks, whole process) and the sum of every
# thread's schedstat run time (ns).
sbc_cpu() {
  local ticks ns=0 t
  ticks=$(sed 's/^.*) //' "/proc/$sbc_pid/stat" | awk '{print $12 + $13}')
  for t in /proc/"$sbc_pid"/task/*/schedstat; do
    ns=$((ns + $(awk '{print $1}' "$t" 2>/dev/null || echo 0)))
  done
  echo "$ticks $ns"
}

xdp_prog_id() { in_r ip -d link show r0 | sed -n 's/.*prog\/xdp id \([0-9]*\).*/\1/p' | head -1; }

prog_stats() { # id -> "run_time_ns run_cnt"
  bpftool prog show id "$1" | sed -n 's/.*run_time_ns \([0-9]*\) run_cnt \([0-9]*\).*/\1 \2/p' | grep . || echo "0 0"
}

xf_drops() { # xdp-filter's own XDP_DROP counter (its xdp_stats_map, summed over CPUs)
  in_r xdp-filter status | awk '/^ *XDP_DROP/ && !n++ {print $2}'
}

# The flood's frame, for BPF_PROG_TEST_RUN: Ethernet / IPv4 198.51.100.66 -> 192.0.2.1 /
# UDP 40000 -> 5060 / 200 bytes of 'f' (what udp_flood sends).
hex2bin() { local h=$1 out=""; for ((i = 0; i < ${#h}; i += 2)); do out+="\\x${h:i:2}"; done; printf "%b" "$out"; }
frame() { # src IPv4 as 8 hex digits, dst port as 4 hex digits (checksums are not checked in XDP)
  hex2bin "0200000000020200000000010800450000e40001000040118d91${1}c00002019c40${2}00d00000"
  printf 'f%.0s' $(seq 200)
}
frame c6336442 13c4 >"$work/frame-$PORT.bin"                     # 198.51.100.66 -> :5060
frame c6336442 "$(printf %04x "$BANNED_PORT")" >"$work/frame-$BANNED_PORT.bin"
frame cb00710a 13c4 >"$work/frame-listed.bin"                   # 203.0.113.10 (listed) -> :5060
flood_port=$PORT
flood_src=$BAD_IP

test_run_ns() { # id frame -> average ns per run of the frame, REPEAT times, with bpf_stats off (its
  # two clock reads per run cost more than a small program on this kind of VM)
  sysctl -qw kernel.bpf_stats_enabled=0
  bpftool prog run id "$1" data_in "$2" repeat "$REPEAT" 2>&1 |
    sed -n 's/.*duration (average): \([0-9]*\)ns.*/\1/p' | head -1
  sysctl -qw kernel.bpf_stats_enabled=1
}

# 5 SIP OPTIONS from the listed carrier to the SBC (after the measured window).
send_listed() {
  in_s python3 -c '
import socket, sys
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
for i in range(5):
    m = ("OPTIONS sip:probe@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s:%d;branch=z9hG4bK-hb%d\r\n"
         "From: <sip:bench@%s>;tag=%d\r\nTo: <sip:probe@%s>\r\nCall-ID: hb-%d@%s\r\n"
         "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
         % (dst, src, s.getsockname()[1], i, src, i, dst, i, src))
    s.sendto(m.encode(), (dst, port))
' "$GOOD_IP" "$R_IP" "$PORT"
}

# The bans: BANS /32s in 10.0.0.0/8, as bytes "0xNN 0xNN 0xNN 0xNN" per line (first $1).
ban_keys() {
  awk -v n="$1" 'BEGIN { for (i = 0; i < n; i++)
    printf "0x0a 0x%02x 0x%02x 0x%02x\n", int(i / 65536) % 256, int(i / 256) % 256, i % 256 }'
}
ip_key() { awk -F. '{printf "0x%02x 0x%02x 0x%02x 0x%02x\n", $1, $2, $3, $4}' <<<"$1"; }
le32() { printf '0x%02x 0x%02x 0x%02x 0x%02x' $(($1 & 255)) $((($1 >> 8) & 255)) $((($1 >> 16) & 255)) $((($1 >> 24) & 255)); }
FOREVER="0xff 0xff 0xff 0xff 0xff 0xff 0xff 0xff"   # BAN_FOREVER, ebpf/common

# The id of the map named $2 among program $1's maps (the name alone is not unique on a
# machine where other SBCs run).
prog_map_id() {
  local m
  for m in $(bpftool prog show id "$1" | sed -n 's/.*map_ids \([0-9,]*\).*/\1/p' | tr , ' '); do
    # (not `| grep -q`: grep exiting first can fail bpftool with SIGPIPE, and pipefail the test)
    [[ $(bpftool map show id "$m") == *" name $2 "* ]] && { echo "$m"; return; }
  done
}

map_len() { bpftool -j map dump "$1" "$2" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))'; }

# --- one phase ------------------------------------------------------------------------------

declare -A sent secs pps drops runs nspp trns cpu_s cpu_ms req listed LISTED_TRNS
sysctl -qw kernel.bpf_stats_enabled=1

measure() { # $1 = phase; $2 = prog id ("" for none); drops come from drop_counter
  local ph=$1 id=$2 t0=0 c0=0 t1=0 c1=0 d0 d1 s0 s1 k0 n0 k1 n1 out hz r0 r1
  hz=$(getconf CLK_TCK)
  s0=$(sbc_stats)
  d0=$(drop_counter "$s0")
  [[ -n $id ]] && read -r t0 c0 < <(prog_stats "$id")
  read -r k0 n0 < <(sbc_cpu)
  log "$ph: flood $COUNT datagrams max, ${SECONDS_MAX}s max, $flood_src -> $R_IP:$flood_port"
  out=$(timeout $((SECONDS_MAX + 30)) nsenter --net="/var/run/netns/$NS_S" -- \
    "$FLOOD" --src "$flood_src" --dst "$R_IP:$flood_port" --count "$COUNT" --seconds "$SECONDS_MAX" --len "$LEN")
  sleep 0.5   # let the receiving side drain
  read -r k1 n1 < <(sbc_cpu)
  [[ -n $id ]] && read -r t1 c1 < <(prog_stats "$id")
  s1=$(sbc_stats)
  d1=$(drop_counter "$s1")
  log "$ph: $out"
  sent[$ph]=$(sed -n 's/.*sent=\([0-9]*\).*/\1/p' <<<"$out")
  secs[$ph]=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$out")
  pps[$ph]=$(sed -n 's/.*pps=\([0-9]*\).*/\1/p' <<<"$out")
  drops[$ph]=$((d1 - d0))
  runs[$ph]=$((c1 - c0))
  nspp[$ph]=$(awk -v t=$((t1 - t0)) -v c=$((c1 - c0)) 'BEGIN {if (c) printf "%.1f", t / c; else print "—"}')
  trns[$ph]="—"
  [[ -n $id ]] && trns[$ph]=$(test_run_ns "$id" "$work/frame-$flood_port.bin")
  cpu_s[$ph]=$(awk -v k=$((k1 - k0)) -v hz="$hz" 'BEGIN {printf "%.2f", k / hz}')
  cpu_ms[$ph]=$(awk -v n=$((n1 - n0)) 'BEGIN {printf "%.1f", n / 1e6}')
  r0=$(stat_of "$s0" sip.requests_in)
  r1=$(stat_of "$s1" sip.requests_in)
  req[$ph]=$((r1 - r0))
  # The listed carrier still gets through.
  send_listed
  sleep 0.5
  listed[$ph]="$(($(stat_of "$(sbc_stats)" sip.requests_in) - r1))/5"
  log "$ph: sent ${sent[$ph]} in ${secs[$ph]}s, dropped ${drops[$ph]}, runs ${runs[$ph]}, ${nspp[$ph]} ns/pkt (test run ${trns[$ph]} ns), SBC CPU ${cpu_s[$ph]} s (${cpu_ms[$ph]} ms schedstat), requests_in +${req[$ph]}, listed ${listed[$ph]}"
  echo "$s1" >"$work/stats-$ph.txt"
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# 1. Our program, attached by the daemon itself.
log "sbc: starting the SBC with its XDP program on r0 (native)"
start_sbc sbc "interface = \"r0\"
xdp_mode = \"native\""
grep -q "XDP filter attached" "$work/sbc-sbc.log" || { tail -20 "$work/sbc-sbc.log" >&2; die "the SBC did not attach XDP"; }
OURS_ID=$(xdp_prog_id)
[[ -n $OURS_ID ]] || die "no XDP program on r0"
OURS_NAME=$(bpftool prog show id "$OURS_ID" | sed -n 's/^[0-9]*: xdp *name \([^ ]*\).*/\1/p')
load_bans() { # prog id: the bans into its maps (what XdpFilter::block writes)
  if ((BANS > 0)); then
    HOST_MAP=$(prog_map_id "$1" BLOCK_V4_HOST)
    CONFIG_MAP=$(prog_map_id "$1" CONFIG)
    [[ -n $HOST_MAP && -n $CONFIG_MAP ]] || die "no BLOCK_V4_HOST / CONFIG map on program $1"
    log "sbc: $BANS bans into BLOCK_V4_HOST (map $HOST_MAP)"
    ban_keys "$BANS" | awk -v m="$HOST_MAP" -v v="$FOREVER" '{print "map update id " m " key " $0 " value " v}' >"$work/bans.batch"
    t_b0=$(date +%s.%N)
    bpftool batch file "$work/bans.batch" >/dev/null
    bpftool map update id "$CONFIG_MAP" key 2 0 0 0 value $(le32 "$BANS")   # config::BLOCK_V4_HOST_LEN
    BANS_LOAD_S=$(awk -v a="$t_b0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    loaded=$(map_len id "$HOST_MAP")
    [[ $loaded == "$BANS" ]] || die "BLOCK_V4_HOST holds $loaded entries, not $BANS"
  fi
  if ((PREFIX_BANS > 0)); then
    TRIE_MAP=$(prog_map_id "$1" BLOCK_V4)
    CONFIG_MAP=$(prog_map_id "$1" CONFIG)
    [[ -n $TRIE_MAP && -n $CONFIG_MAP ]] || die "no BLOCK_V4 / CONFIG map on program $1"
    log "sbc: $PREFIX_BANS /24 bans into BLOCK_V4 (map $TRIE_MAP)"
    # LPM key: prefix length (u32, little-endian) then the address; 172.16.0.0/24 onwards
    awk -v n="$PREFIX_BANS" -v m="$TRIE_MAP" -v v="$FOREVER" 'BEGIN { for (i = 0; i < n; i++)
      printf "map update id %s key 0x18 0 0 0 0xac 0x%02x 0x%02x 0 value %s\n", m, 16 + int(i / 256), i % 256, v }' \
      >"$work/prefix-bans.batch"
    bpftool batch file "$work/prefix-bans.batch" >/dev/null
    bpftool map update id "$CONFIG_MAP" key 0 0 0 0 value $(le32 "$PREFIX_BANS")   # config::BLOCK_V4_LEN
  fi
}
load_bans "$OURS_ID"
LISTED_TRNS[sbc]=$(test_run_ns "$OURS_ID" "$work/frame-listed.bin")
drop_counter() { stat_of "$1" xdp.drop_not_allowed; }
measure sbc "$OURS_ID"
if ((BANS > 0)); then
  log "sbc-banned: the flood's source $BAD_IP banned too ($((BANS + 1)) bans)"
  bpftool map update id "$HOST_MAP" key $(ip_key "$BAD_IP") value $FOREVER
  bpftool map update id "$CONFIG_MAP" key 2 0 0 0 value $(le32 $((BANS + 1)))
  drop_counter() { stat_of "$1" xdp.drop_blocked; }
  flood_port=$BANNED_PORT
  measure sbc-banned "$OURS_ID"
  flood_port=$PORT
fi
stop_sbc
if [[ -n $(xdp_prog_id) ]]; then
  log "warning: the SBC left its program on r0; detaching"
  in_r ip link set r0 xdp off
fi

# 1b. The same with the per-source rate limit on ([guard] xdp_rate_pps): the unlisted flood
# again (the allowlist drops it before the limit), test runs of the unlisted source's packet
# to the unprotected SIP port (bans missed, then its bucket: the unlisted limit) and of the
# listed carrier's (its bucket: the listed limit; REPEAT runs empty it, so this is the
# rate-limited drop), and a flood from the listed carrier's address (a spoofed provider):
# all but its burst and rate dropped in XDP.
if ((RATE_PPS > 0)); then
  log "sbc-rate: the SBC with xdp_rate_pps = $RATE_PPS (listed: 10x)"
  start_sbc sbc-rate "interface = \"r0\"
xdp_mode = \"native\"
[guard]
xdp_rate_pps = $RATE_PPS"
  grep -q "XDP per-source rate limit on" "$work/sbc-sbc-rate.log" || { tail -20 "$work/sbc-sbc-rate.log" >&2; die "no rate limit"; }
  RATE_ID=$(xdp_prog_id)
  [[ -n $RATE_ID ]] || die "no XDP program on r0 (rate phase)"
  load_bans "$RATE_ID"
  RATE_TRNS_LISTED=$(test_run_ns "$RATE_ID" "$work/frame-listed.bin")
  RATE_TRNS_ACCESS=$(test_run_ns "$RATE_ID" "$work/frame-$BANNED_PORT.bin")
  drop_counter() { stat_of "$1" xdp.drop_not_allowed; }
  measure sbc-rate "$RATE_ID"
  drop_counter() { stat_of "$1" xdp.drop_rate_limited_listed; }
  flood_src=$GOOD_IP
  measure sbc-rate-listed "$RATE_ID"
  flood_src=$BAD_IP
  stop_sbc
  [[ -z $(xdp_prog_id) ]] || in_r ip link set r0 xdp off
fi

# 2. xdp-filter in front of the same SBC (userspace list only), same veth.
log "xdp-filter: loading (native, deny policy) on r0"
in_r xdp-filter load r0 --mode native --policy deny >/dev/null
in_r xdp-filter ip "$GOOD_IP" --mode src >/dev/null
ports_map=$LIBXDP_BPFFS/xdp-filter/filter_ports
[[ -e $ports_map ]] || die "xdp-filter's port map is not at $ports_map"
# MAP_FLAG_DST|MAP_FLAG_TCP|MAP_FLAG_UDP = 0x0e, key = the port in network byte order
awk -v m="$ports_map" -v skip="$PORT" 'BEGIN {
  for (p = 1; p < 65536; p++) if (p != skip)
    printf "map update pinned %s key 0x%02x 0x%02x 0 0 value 0x0e 0 0 0 0 0 0 0\n", m, int(p / 256), p % 256 }' \
  >"$work/ports.batch"
bpftool batch file "$work/ports.batch" >/dev/null
ipv4_map=$LIBXDP_BPFFS/xdp-filter/filter_ipv4
[[ -e $ipv4_map ]] || die "xdp-filter's IPv4 map is not at $ipv4_map"
XF_CAP=$(bpftool map show pinned "$ipv4_map" | sed -n 's/.*max_entries \([0-9]*\).*/\1/p')
XF_BANS=$((BANS < XF_CAP - 1 ? BANS : XF_CAP - 1))
# MAP_FLAG_SRC = 0x01, a per-CPU u64 (bpftool copies the value to every CPU)
ban_keys "$XF_BANS" | awk -v m="$ipv4_map" '{print "map update pinned " m " key " $0 " value 0x01 0 0 0 0 0 0 0"}' >"$work/xf-bans.batch"
bpftool batch file "$work/xf-bans.batch" >/dev/null
XF_DENY_LOADED=$(map_len pinned "$ipv4_map")
XF_ID=$(xdp_prog_id)
[[ -n $XF_ID ]] || die "no XDP program on r0 after xdp-filter load"
XF_NAME=$(bpftool prog show id "$XF_ID" | sed -n 's/^[0-9]*: [a-z]* *name \([^ ]*\).*/\1/p')
XF_FEATURES=$(in_r xdp-filter status | awk '/r0 \(native mode\)/ && !n++ {print $NF}')
LISTED_TRNS[xdp-filter]=$(test_run_ns "$XF_ID" "$work/frame-listed.bin")
start_sbc xdp-filter ""
drop_counter() { xf_drops; }
measure xdp-filter "$XF_ID"
stop_sbc
in_r xdp-filter unload r0 >/dev/null

# 2b. xdp-filter with the same bans in its blocklist (allow policy), flood from a banned source.
if ((BANS > 0)); then
  log "xf-banned: xdp-filter (native, allow policy) with the bans on r0"
  in_r xdp-filter load r0 --mode native --policy allow >/dev/null
  in_r xdp-filter ip "$BAD_IP" --mode src >/dev/null
  bpftool batch file "$work/xf-bans.batch" >/dev/null
  XF_LOADED=$(map_len pinned "$ipv4_map")
  XFB_ID=$(xdp_prog_id)
  [[ -n $XFB_ID ]] || die "no XDP program on r0 after xdp-filter load (allow)"
  XFB_NAME=$(bpftool prog show id "$XFB_ID" | sed -n 's/^[0-9]*: [a-z]* *name \([^ ]*\).*/\1/p')
  start_sbc xf-banned ""
  drop_counter() { xf_drops; }
  flood_port=$BANNED_PORT
  measure xf-banned "$XFB_ID"
  flood_port=$PORT
  stop_sbc
  in_r xdp-filter unload r0 >/dev/null
fi

# 3. The floor: XDP_DROP and nothing else, same veth, same SBC behind it.
if [[ $FLOOR == 1 ]]; then
  log "floor: a two-instruction XDP_DROP program on r0 (native)"
  nsenter --net="/var/run/netns/$NS_R" -- python3 "$root/bench/xdp/xdp_drop_floor.py" --iface r0 \
    --stop-file "$work/floor.stop" --seconds $((SECONDS_MAX + 120)) >"$work/floor.out" 2>&1 &
  floor_pid=$!
  pids+=("$floor_pid")
  for _ in $(seq 100); do grep -q '^ready' "$work/floor.out" 2>/dev/null && break; sleep 0.1; done
  FLOOR_ID=$(sed -n 's/^ready prog_id=\([0-9]*\).*/\1/p' "$work/floor.out")
  [[ -n $FLOOR_ID && $(xdp_prog_id) == "$FLOOR_ID" ]] || { cat "$work/floor.out" >&2; die "the floor program did not attach"; }
  start_sbc floor ""
  drop_counter() { prog_stats "$FLOOR_ID" | awk '{print $2}'; }   # every run is a drop
  measure floor "$FLOOR_ID"
  stop_sbc
  touch "$work/floor.stop"
  wait "$floor_pid" || true
  forget_pid "$floor_pid"
  [[ -z $(xdp_prog_id) ]] || die "the floor program is still attached"
fi

# 4. Reference: no XDP, the SBC's userspace filter takes the flood.
if [[ $BASELINE == 1 ]]; then
  log "none: the SBC with its userspace filter only, no XDP on r0"
  start_sbc none ""
  drop_counter() { stat_of "$1" userspace.dropped_not_listed; }
  measure none ""
  stop_sbc
fi

# --- report ---------------------------------------------------------------------------------

ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    gsub(/[^0-9.-]/, "", a); gsub(/[^0-9.-]/, "", b)
    if (a == "" || b == "" || b + 0 == 0) print "—"; else printf "%.2f", a / b }'
}
rate() { awk -v d="$1" -v s="$2" 'BEGIN {if (s > 0) printf "%.0f", d / s; else print "—"}'; }
pct() { awk -v d="$1" -v n="$2" 'BEGIN {if (n > 0) printf "%.2f%%", d * 100 / n; else print "—"}'; }

cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
grep -qw hypervisor /proc/cpuinfo && cpu_model+=", a virtual machine"
rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
xf_ver=$(dpkg-query -W -f '${Version}' xdp-tools 2>/dev/null || echo unknown)
rate_sbc=$(rate "${drops[sbc]}" "${secs[sbc]}")
rate_xf=$(rate "${drops[xdp-filter]}" "${secs[xdp-filter]}")
cmd="COUNT=$COUNT SECONDS_MAX=$SECONDS_MAX LEN=$LEN REPEAT=$REPEAT ALLOW_PREFIXES=$ALLOW_PREFIXES BANS=$BANS PREFIX_BANS=$PREFIX_BANS BANNED_PORT=$BANNED_PORT RATE_PPS=$RATE_PPS FLOOR=$FLOOR BASELINE=$BASELINE bench/xdp/run.sh"
if [[ ! -s $RESULTS ]]; then
  printf '# Benchmark results\n\nSide-by-side runs, appended by the bench scripts (newest last).\n' >"$RESULTS"
fi
{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — XDP trunk filter: the SBC's program vs xdp-filter"
  echo
  echo "- machine: $(nproc) CPUs ($cpu_model), Linux $(uname -r); load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  echo "- peers: sbc @ $rev ($SBC), its XDP program \`$OURS_NAME\` attached natively to the veth by the daemon (\`[trunk] interface = \"r0\"\`, \`xdp_mode = \"native\"\`); xdp-filter from Debian's xdp-tools $xf_ver (program \`$XF_NAME\`, features $XF_FEATURES), native mode, same veth; $(bpftool version 2>/dev/null | head -1)"
  echo "- command: \`$cmd\` (\`just bench-xdp\` builds and runs it with the defaults)"
  echo "- flood: udp_flood (one thread) from the unlisted $BAD_IP to $R_IP:$PORT/udp, $LEN-byte payload, at most $COUNT datagrams and ${SECONDS_MAX} s, netns → veth → netns; sender and receiver share the same $(nproc) CPUs"
  echo "- SBC: external udp+tcp $R_IP:$PORT and udp $R_IP:$BANNED_PORT (an unprotected SIP port), protected = $R_IP:$PORT udp+tcp, allowlist $GOOD_IP/32 + $ALLOW_PREFIXES filler /32s, blocklist $BANS single-address bans in 10.0.0.0/8 (not the flood's source; BLOCK_V4_HOST, written with bpftool in ${BANS_LOAD_S:-0} s) and $PREFIX_BANS /24 bans from 172.16.0.0 (BLOCK_V4); with xdp-filter the same SBC runs without \`[trunk] interface\` (userspace list only) behind it"
  echo "- xdp-filter: \`xdp-filter load r0 --mode native --policy deny\`, \`xdp-filter ip $GOOD_IP --mode src\`, and UDP+TCP destination ports 1–65535 except $PORT allowed (65534 entries written to its pinned port map, value dst|tcp|udp, what \`xdp-filter port P --mode dst --proto tcp,udp\` writes): UDP/TCP to port $PORT dropped unless from $GOOD_IP, other ports pass; broader than ours (the port rule holds for every destination address; non-UDP/TCP IP and ARP from unlisted sources dropped); its filter_ipv4 loaded with ${XF_DENY_LOADED} entries (the carrier and the first $XF_BANS of our 10/8 bans; capacity $XF_CAP; it has no prefix match)"
  echo "- ns/packet: kernel.bpf_stats_enabled=1 during the run (restored to $OLD_STATS), \`bpftool prog show\` run_time_ns / run_cnt over the flood; includes bpf_stats' own timing of each run (see the floor); BPF_PROG_TEST_RUN: the flood's frame, repeat $REPEAT, bpf_stats off"
  echo
  echo "| | SBC (its XDP) | xdp-filter | SBC / xdp-filter |"
  echo "|---|---:|---:|---:|"
  echo "| datagrams sent (flood duration) | ${sent[sbc]} (${secs[sbc]} s) | ${sent[xdp-filter]} (${secs[xdp-filter]} s) | |"
  echo "| dropped in XDP (share of sent) | ${drops[sbc]} ($(pct "${drops[sbc]}" "${sent[sbc]}")) | ${drops[xdp-filter]} ($(pct "${drops[xdp-filter]}" "${sent[xdp-filter]}")) | |"
  echo "| drop rate, drops/s over the flood (higher is better; sender-bound) | $rate_sbc | $rate_xf | $(ratio "$rate_sbc" "$rate_xf") |"
  echo "| ns/packet in the program, live (bpf_stats; lower is better) | ${nspp[sbc]} | ${nspp[xdp-filter]} | $(ratio "${nspp[sbc]}" "${nspp[xdp-filter]}") |"
  echo "| ns/packet, BPF_PROG_TEST_RUN ×$REPEAT (lower is better) | ${trns[sbc]} | ${trns[xdp-filter]} | $(ratio "${trns[sbc]}" "${trns[xdp-filter]}") |"
  echo "| ns/packet, BPF_PROG_TEST_RUN, a packet of the listed $GOOD_IP (passed; ours: allowlist hit + both ban lookups) | ${LISTED_TRNS[sbc]} | ${LISTED_TRNS[xdp-filter]} | $(ratio "${LISTED_TRNS[sbc]}" "${LISTED_TRNS[xdp-filter]}") |"
  if [[ $FLOOR == 1 ]]; then
    above_sbc=$(awk -v a="${nspp[sbc]}" -v f="${nspp[floor]}" 'BEGIN {printf "%.1f", a - f}')
    above_xf=$(awk -v a="${nspp[xdp-filter]}" -v f="${nspp[floor]}" 'BEGIN {printf "%.1f", a - f}')
    echo "| ns/packet above the floor, live (the program's own work) | $above_sbc | $above_xf | $(ratio "$above_sbc" "$above_xf") |"
    above_sbc=$(awk -v a="${trns[sbc]}" -v f="${trns[floor]}" 'BEGIN {printf "%.0f", a - f}')
    above_xf=$(awk -v a="${trns[xdp-filter]}" -v f="${trns[floor]}" 'BEGIN {printf "%.0f", a - f}')
    echo "| ns/packet above the floor, BPF_PROG_TEST_RUN | $above_sbc | $above_xf | $(ratio "$above_sbc" "$above_xf") |"
  fi
  echo "| SBC process CPU s during the flood, utime+stime (schedstat ms) | ${cpu_s[sbc]} (${cpu_ms[sbc]} ms) | ${cpu_s[xdp-filter]} (${cpu_ms[xdp-filter]} ms) | |"
  echo "| SBC sip.requests_in delta during the flood | ${req[sbc]} | ${req[xdp-filter]} | |"
  echo "| then 5 OPTIONS from the listed $GOOD_IP reached the SBC | ${listed[sbc]} | ${listed[xdp-filter]} | |"
  echo
  if ((BANS > 0)); then
    echo
    echo "Flood from a banned source (198.51.100.66 added to the bans) to $R_IP:$BANNED_PORT/udp (not protected: bans decide there): ours with $((BANS + 1)) bans in its address hash and $PREFIX_BANS in its trie (plus the allowlist), xdp-filter (\`--policy allow\`, program \`$XFB_NAME\`) with $XF_LOADED bans in its filter_ipv4 (capacity $XF_CAP), the same flood:"
    echo
    echo "| | SBC (its XDP) | xdp-filter | SBC / xdp-filter |"
    echo "|---|---:|---:|---:|"
    echo "| bans loaded | $((BANS + 1)) | $XF_LOADED | |"
    echo "| datagrams sent (flood duration) | ${sent[sbc-banned]} (${secs[sbc-banned]} s) | ${sent[xf-banned]} (${secs[xf-banned]} s) | |"
    echo "| dropped in XDP (share of sent) | ${drops[sbc-banned]} ($(pct "${drops[sbc-banned]}" "${sent[sbc-banned]}")) | ${drops[xf-banned]} ($(pct "${drops[xf-banned]}" "${sent[xf-banned]}")) | |"
    echo "| ns/packet in the program, live (bpf_stats; lower is better) | ${nspp[sbc-banned]} | ${nspp[xf-banned]} | $(ratio "${nspp[sbc-banned]}" "${nspp[xf-banned]}") |"
    echo "| ns/packet, BPF_PROG_TEST_RUN ×$REPEAT (lower is better) | ${trns[sbc-banned]} | ${trns[xf-banned]} | $(ratio "${trns[sbc-banned]}" "${trns[xf-banned]}") |"
    echo "| SBC sip.requests_in delta during the flood | ${req[sbc-banned]} | ${req[xf-banned]} | |"
    echo "| then 5 OPTIONS from the listed $GOOD_IP reached the SBC | ${listed[sbc-banned]} | ${listed[xf-banned]} | |"
    echo
  fi
  if ((RATE_PPS > 0)); then
    rl_passed=$((${sent[sbc-rate-listed]} - ${drops[sbc-rate-listed]}))
    rl_bound=$(awk -v p="$RATE_PPS" -v s="${secs[sbc-rate-listed]}" 'BEGIN {printf "%.0f", 10 * p + 10 * p * s}')
    echo
    echo "The per-source rate limit on (\`[guard] xdp_rate_pps = $RATE_PPS\`, burst the same; allowlisted sources 10× both), the same bans loaded, a fresh SBC:"
    echo
    echo "| | SBC (its XDP), rate limit on | rate limit off (above) | xdp-filter (above) |"
    echo "|---|---:|---:|---:|"
    echo "| unlisted flood to $PORT: ns/packet live (dropped by the allowlist first) | ${nspp[sbc-rate]} | ${nspp[sbc]} | ${nspp[xdp-filter]} |"
    echo "| unlisted flood to $PORT: ns/packet, BPF_PROG_TEST_RUN | ${trns[sbc-rate]} | ${trns[sbc]} | ${trns[xdp-filter]} |"
    echo "| the listed $GOOD_IP's packet, BPF_PROG_TEST_RUN (on: its bucket empties, the rate-limited drop) | $RATE_TRNS_LISTED | ${LISTED_TRNS[sbc]} | ${LISTED_TRNS[xdp-filter]} |"
    echo "| an unlisted packet to the unprotected SIP port $BANNED_PORT, BPF_PROG_TEST_RUN (on: bans missed, its bucket) | $RATE_TRNS_ACCESS | | |"
    echo
    echo "- flood from the listed $GOOD_IP (a spoofed provider) to $R_IP:$PORT, rate limit on: ${sent[sbc-rate-listed]} sent in ${secs[sbc-rate-listed]} s, ${drops[sbc-rate-listed]} dropped in XDP as xdp.drop_rate_limited_listed ($(pct "${drops[sbc-rate-listed]}" "${sent[sbc-rate-listed]}")), $rl_passed passed to the SBC (burst + rate × duration = $rl_bound), ${nspp[sbc-rate-listed]} ns/packet live, ${trns[sbc-rate-listed]} ns test run (the unlisted frame); SBC CPU ${cpu_s[sbc-rate-listed]} s"
  fi
  if [[ $FLOOR == 1 ]]; then
    echo "- floor, the two-instruction XDP_DROP program (bench/xdp/xdp_drop_floor.py, native, same veth, same SBC behind it): ${sent[floor]} sent in ${secs[floor]} s, ${drops[floor]} dropped, $(rate "${drops[floor]}" "${secs[floor]}") drops/s, ${nspp[floor]} ns/packet live, ${trns[floor]} ns test run; SBC CPU ${cpu_s[floor]} s (${cpu_ms[floor]} ms), requests_in +${req[floor]}"
  fi
  if [[ $BASELINE == 1 ]]; then
    echo "- reference, no XDP (the SBC's userspace filter alone, same flood): ${sent[none]} sent in ${secs[none]} s, userspace.dropped_not_listed +${drops[none]} ($(pct "${drops[none]}" "${sent[none]}"); $((sent[none] - drops[none])) never read by the SBC), SBC CPU ${cpu_s[none]} s (${cpu_ms[none]} ms), requests_in +${req[none]}, listed ${listed[none]}"
  fi
} | tee -a "$RESULTS"
log "appended to $RESULTS"
