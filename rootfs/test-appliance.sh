#!/usr/bin/env bash
# Boots the appliance image in qemu (TCG only: KVM hangs on the machines this runs on) with
# user-mode networking, the guest's SIP port 5060 (UDP and TCP) forwarded to a host port, and
# requires, from the host through that port, a 200 to a SIP OPTIONS naming the SBC and a STUN
# Binding success response (rootfs/overlay/usr/lib/sbc/health-check). Prints the time from
# qemu's start to the first answer. The serial console goes to OUT/test/console.log.
#
# Usage: rootfs/test-appliance.sh   (after rootfs/build.sh)
# Environment: OUT (target/image), PORT (host port, default: a free one), BOOT_DEADLINE (600 s)
set -euo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-target/image}
image=$out/sbc.img
deadline=${BOOT_DEADLINE:-600}
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd
ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
t0=$SECONDS
say() { printf '[appliance %4ds] %s\n' "$((SECONDS - t0))" "$*"; }
die() { say "FAIL: $*"; exit 1; }

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing: run .ci/install-deps"
[ -f "$ovmf_code" ] || die "$ovmf_code missing (package ovmf)"
[ -f "$image" ] || die "$image missing: run just image"

work=$out/test
rm -rf "$work"
mkdir -p "$work"
# A copy: the boot counter and the data partition change as the guest runs.
cp --sparse=always "$image" "$work/disk.img"
cp "$ovmf_vars" "$work/vars.fd"
# The journal is forwarded to the serial console of this copy (its boot entry's command line),
# so console.log holds the daemon's log when something fails.
entry=::loader/entries/sbc-a.conf
mcopy -i "$work/disk.img@@1M" "$entry" "$work/entry.conf"
sed -i '/^options / s/$/ systemd.journald.forward_to_console=1/' "$work/entry.conf"
mcopy -o -i "$work/disk.img@@1M" "$work/entry.conf" "$entry"

free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    if ! ss -Huln "sport = :$p" | grep -q . && ! ss -Htln "sport = :$p" | grep -q .; then
      echo "$p"
      return
    fi
  done
  return 1
}
port=${PORT:-$(free_port)}

qemu_pid=""
cleanup() {
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

say "booting $image in qemu (TCG), guest 5060 (udp, tcp) on 127.0.0.1:$port"
qemu-system-x86_64 -accel tcg -machine q35 -cpu max -smp 2 -m 1024 \
  -drive if=pflash,format=raw,unit=0,readonly=on,file="$ovmf_code" \
  -drive if=pflash,format=raw,unit=1,file="$work/vars.fd" \
  -drive file="$work/disk.img",format=raw,if=virtio \
  -netdev user,id=n0,hostfwd=udp:127.0.0.1:"$port"-:5060,hostfwd=tcp:127.0.0.1:"$port"-:5060 \
  -device virtio-net-pci,netdev=n0 \
  -display none -serial file:"$work/console.log" -monitor none \
  </dev/null >"$work/qemu.log" 2>&1 &
qemu_pid=$!

# Wait for the service: the health check retries once a second until the deadline.
check=rootfs/overlay/usr/lib/sbc/health-check
if ! "$check" --host 127.0.0.1 --port "$port" --uri sbc.invalid:5060 --deadline "$deadline" --quiet; then
  kill -0 "$qemu_pid" 2>/dev/null || say "qemu exited: $(cat "$work/qemu.log")"
  tail -n 40 "$work/console.log" | sed 's/^/  console: /'
  die "no answer to SIP OPTIONS and STUN Binding within ${deadline}s"
fi
boot_to_service=$((SECONDS - t0))
"$check" --host 127.0.0.1 --port "$port" --uri sbc.invalid:5060 --deadline 10
grep -q "Started sbc.service\|Started.*SBC, the SIP Session Border Controller" "$work/console.log" ||
  say "note: the console shows no 'Started sbc.service' line"
say "the appliance answers SIP OPTIONS and STUN Binding through the forwarded port"

# What the image promises about the daemon, reported by sbc-selfcheck.service into the journal
# (forwarded to the console): user, capabilities, no_new_privs, seccomp, bpffs, nftables.
caps=000000c000001400   # CAP_NET_BIND_SERVICE(10) CAP_NET_ADMIN(12) CAP_PERFMON(38) CAP_BPF(39)
for _ in $(seq 120); do grep -aq 'selfcheck: root' "$work/console.log" && break; sleep 1; done
report=$(grep -a -o 'selfcheck: .*' "$work/console.log" | tr -d '\r')
printf '%s\n' "$report" | sed 's/^/  /'
expect() { printf '%s\n' "$report" | grep -qE "$1" || die "selfcheck: expected /$1/"; }
expect "^selfcheck: sbc pid=[0-9]+ user=sbc$"
expect "^selfcheck: sbc CapEff: $caps$"
expect "^selfcheck: sbc CapPrm: $caps$"
expect "^selfcheck: sbc CapBnd: $caps$"
expect "^selfcheck: sbc CapAmb: $caps$"
expect "^selfcheck: sbc NoNewPrivs: 1$"
expect "^selfcheck: sbc Seccomp: 2$"
expect "^selfcheck: bpffs mounted on /sys/fs/bpf$"
expect "^selfcheck: nftables inet filter loaded$"
expect "^selfcheck: root ro, data /dev/vda4$"
say "PASS: answers through the forwarded port; the daemon runs as sbc with exactly its 4 capabilities"
say "boot to service: ${boot_to_service} s (qemu start to the first answer, TCG)"
