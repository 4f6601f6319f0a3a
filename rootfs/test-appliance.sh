#!/usr/bin/env bash
# Boots the appliance image in qemu (TCG only: KVM hangs on the machines this runs on) with
# user-mode networking and the guest's SIP port 5060 (UDP and TCP) forwarded to a host port.
# Three runs, each on a fresh copy of the image:
#
#   1. boot: from the host through the forwarded port, a 200 to a SIP OPTIONS naming the SBC and
#      a STUN Binding success response (rootfs/overlay/usr/lib/sbc/health-check); from inside,
#      what sbc-selfcheck.service reports: the daemon's user and capabilities (/proc/PID/status),
#      no_new_privs, seccomp, bpffs, the nftables ruleset, the read-only root.
#   2. good update: `sbc-update` in the guest writes root.img into slot B and reboots; B is
#      tried once, its health gate passes and systemd-bless-boot marks it good; it answers.
#   3. broken update (rootfs/break-update.sh: the daemon never answers): B is tried once, the
#      gate fails and reboots, systemd-boot falls back to A by itself, and A answers again; the
#      second `sbc-update` of the same build is refused.
#
# The update is handed to the guest as a second disk (/dev/vdb) and `sbc-update` is started by
# `systemd.wants=sbc-update@dev-vdb.service` on slot A's kernel command line in the copy, whose
# entry also forwards the journal to the serial console (OUT/test/*.console.log); the checks read
# that console (selfcheck, health gate and sbc-update write to it on every slot).
#
# The boot run also starts a MariaDB on the host's loopback (reachable from the guest as
# 10.0.2.2, qemu user networking) holding providers/providers_ips with one IN/OUT row for
# 10.0.2.2, and names it in the copy's data partition (/var/lib/sbc/allowlist-export.env): the
# guest's sbc-allowlist.timer exports it, the daemon swaps it into XDP on eth0, and the trunk port
# 5080 (forwarded) then answers the host; /metrics (guest 9090, forwarded) is scraped and read by
# the prometheus_client parser.
#
# Usage: rootfs/test-appliance.sh   (after rootfs/build.sh; the copies are removed after a pass)
# Environment: OUT (target/image), BOOT_DEADLINE (s, 600 per phase), ONLY (boot|update|rollback)
set -euo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-target/image}
image=$out/sbc.img
deadline=${BOOT_DEADLINE:-600}
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd
ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
check=rootfs/overlay/usr/lib/sbc/health-check
t0=$SECONDS
say() { printf '[appliance %4ds] %s\n' "$((SECONDS - t0))" "$*"; }
die() {
  say "FAIL: $*"
  if [ -n "${console:-}" ] && [ -f "$console" ]; then
    say "the guest's serial console (its journal), last 150 lines; all of it in $console:"
    tail -n 150 "$console" | tr -d '\r' | sed 's/^/  console: /'
  fi
  exit 1
}

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing: apt-get install qemu-system-x86 ovmf (just image does)"
[ -f "$ovmf_code" ] || die "$ovmf_code missing (package ovmf)"
[ -f "$image" ] || die "$image missing: run just image"
work=$out/test
rm -rf "$work"
mkdir -p "$work"

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

qemu_pid="" db_pid=""
stop_qemu() {
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
  qemu_pid=""
}
stop_db() {
  if [ -n "$db_pid" ] && kill -0 "$db_pid" 2>/dev/null; then
    kill "$db_pid" 2>/dev/null || true
    wait "$db_pid" 2>/dev/null || true
  fi
  db_pid=""
}
trap 'stop_qemu; stop_db' EXIT

# The operator's MariaDB on the host's loopback, port $db_port: providers + providers_ips (the
# schema's columns the export reads) with one IN/OUT row for 10.0.2.2, the host as the guest sees it.
start_db() {
  local dir=$PWD/$work/mariadb
  local sock=$dir/mysqld.sock
  command -v mariadb-install-db >/dev/null || die "mariadb-install-db missing (package mariadb-server, .ci/install-deps)"
  mkdir -p "$dir"
  mariadb-install-db --no-defaults --datadir="$dir/data" --auth-root-authentication-method=normal \
    --user=root --skip-test-db >"$dir/install.log" 2>&1 || die "mariadb-install-db failed: $(tail -5 "$dir/install.log")"
  db_port=$(free_port) || die "no free port for MariaDB"
  /usr/sbin/mariadbd --no-defaults --datadir="$dir/data" --socket="$sock" --pid-file="$dir/mysqld.pid" \
    --log-error="$dir/mysqld.err" --bind-address=127.0.0.1 --port="$db_port" --user=root \
    --innodb-buffer-pool-size=32M --skip-name-resolve >"$dir/mariadbd.log" 2>&1 &
  db_pid=$!
  local end=$((SECONDS + 60))
  until mariadb --no-defaults --socket="$sock" -uroot -e 'SELECT 1' >/dev/null 2>&1; do
    kill -0 "$db_pid" 2>/dev/null || die "mariadbd exited: $(tail -5 "$dir/mysqld.err")"
    [ "$SECONDS" -lt "$end" ] || die "mariadbd not up within 60 s"
    sleep 1
  done
  mariadb --no-defaults --socket="$sock" -uroot <<'SQL' || die "loading the providers tables failed"
CREATE DATABASE voip CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
USE voip;
CREATE TABLE providers (id INT(11) UNSIGNED NOT NULL AUTO_INCREMENT, providername VARCHAR(50) NOT NULL, PRIMARY KEY (id));
CREATE TABLE providers_ips (
  id INT(11) UNSIGNED NOT NULL AUTO_INCREMENT,
  provider_id INT(11) UNSIGNED NOT NULL DEFAULT '0',
  ipaddress INT(11) UNSIGNED NOT NULL DEFAULT '2130706433',
  domainname VARCHAR(50) NULL DEFAULT NULL,
  direction ENUM('IN','OUT','IN/OUT') NOT NULL DEFAULT 'IN',
  proto ENUM('SIP','IAX2','H323') NOT NULL DEFAULT 'SIP',
  PRIMARY KEY (id));
INSERT INTO providers VALUES (1, 'QemuHost');
INSERT INTO providers_ips VALUES (1, 1, INET_ATON('10.0.2.2'), NULL, 'IN/OUT', 'SIP');
CREATE USER 'sbc'@'127.0.0.1' IDENTIFIED BY 'appliance-test';
GRANT SELECT ON voip.* TO 'sbc'@'127.0.0.1';
SQL
  say "MariaDB on 127.0.0.1:$db_port (the guest's 10.0.2.2:$db_port): providers_ips lists 10.0.2.2 IN/OUT"
}

# Writes the database's address into the data partition of the copy (as the operator would):
# /data/sbc/allowlist-export.env, the guest's /var/lib/sbc/allowlist-export.env.
configure_export() {
  local start size part=$work/data-part.img env=$work/allowlist-export.env
  read -r start size < <(sfdisk -d "$disk" | awk -F'[=,]' '/name="sbc-data"/ {gsub(/ /, ""); print $2, $4}')
  [ -n "$start" ] && [ -n "$size" ] || die "no sbc-data partition in $disk"
  printf 'SBC_ALLOWLIST_DB=mysql://sbc@10.0.2.2:%s/voip\nMYSQL_PWD=appliance-test\n' "$db_port" >"$env"
  chmod 0600 "$env"
  dd if="$disk" of="$part" bs=512 skip="$start" count="$size" status=none
  debugfs -w -R "write $env sbc/allowlist-export.env" "$part" >/dev/null 2>&1
  debugfs -R "cat sbc/allowlist-export.env" "$part" 2>/dev/null | grep -q "10.0.2.2:$db_port" ||
    die "writing allowlist-export.env into the data partition failed"
  dd if="$part" of="$disk" bs=512 seek="$start" conv=notrunc status=none
  rm -f "$part"
}

# A fresh copy of the image for run $1; $2: extra kernel arguments for slot A's entry.
prepare() {
  local name=$1 extra=$2
  disk=$work/$name.img
  console=$work/$name.console.log
  cp --sparse=always "$image" "$disk"
  cp "$ovmf_vars" "$work/$name.vars.fd"
  mcopy -i "$disk@@1M" ::loader/entries/sbc-a.conf "$work/entry.conf"
  sed -i "/^options / s|\$| systemd.journald.forward_to_console=1 $extra|" "$work/entry.conf"
  mcopy -o -i "$disk@@1M" "$work/entry.conf" ::loader/entries/sbc-a.conf
}

# Boot the prepared copy; $1: an update file attached as the second disk (or "").
boot() {
  local update=$1 extra_disk=()
  [ -n "$update" ] && extra_disk=(-drive "file=$update,format=raw,if=virtio,readonly=on")
  port=$(free_port) || die "no free host port"
  trunk_port=$(free_port) || die "no free host port"
  mgmt_port=$(free_port) || die "no free host port"
  : >"$console"
  qemu-system-x86_64 -accel tcg -machine q35 -cpu max -smp 2 -m 1024 \
    -drive if=pflash,format=raw,unit=0,readonly=on,file="$ovmf_code" \
    -drive if=pflash,format=raw,unit=1,file="${disk%.img}.vars.fd" \
    -drive file="$disk",format=raw,if=virtio "${extra_disk[@]}" \
    -netdev user,id=n0,hostfwd=udp:127.0.0.1:"$port"-:5060,hostfwd=tcp:127.0.0.1:"$port"-:5060,hostfwd=udp:127.0.0.1:"$trunk_port"-:5080,hostfwd=tcp:127.0.0.1:"$mgmt_port"-:9090 \
    -device virtio-net-pci,netdev=n0 \
    -display none -serial file:"$console" -monitor none \
    </dev/null >"${disk%.img}.qemu.log" 2>&1 &
  qemu_pid=$!
  boot_t0=$SECONDS
  say "qemu (TCG) booting ${disk##*/}${update:+ with update ${update##*/} as /dev/vdb}; guest 5060 on 127.0.0.1:$port, 5080 on :$trunk_port, 9090 on :$mgmt_port"
}

# Wait until the console has at least $2 lines matching $1 (extended regexp), within $3 s.
wait_console() {
  local pattern=$1 count=$2 limit=$3 end=$((SECONDS + $3))
  while [ "$(grep -a -c -E "$pattern" "$console" || true)" -lt "$count" ]; do
    kill -0 "$qemu_pid" 2>/dev/null || die "qemu exited while waiting for /$pattern/"
    [ "$SECONDS" -lt "$end" ] || die "no /$pattern/ (x$count) on the console within ${limit}s"
    sleep 1
  done
}

answers() { # from the host, through the forwarded port
  "$check" --host 127.0.0.1 --port "$port" --uri sbc.invalid:5060 --deadline "$1" --quiet ||
    die "no answer to SIP OPTIONS and STUN Binding within $1 s"
}

# The last selfcheck report on the console (sbc-selfcheck.service, each boot).
selfcheck() {
  grep -a -o 'selfcheck: .*' "$console" | tr -d '\r' | sort -u
}

# Wait until, after the last line matching $1, a line matching $2 is on the console, within $3 s.
wait_after() {
  local first=$1 then=$2 end=$((SECONDS + $3))
  until awk -v a="$first" -v b="$then" '$0 ~ a {f=1; g=0} f && $0 ~ b {g=1} END {exit !g}' "$console"; do
    kill -0 "$qemu_pid" 2>/dev/null || die "qemu exited while waiting for /$then/ after /$first/"
    [ "$SECONDS" -lt "$end" ] || die "no /$then/ after /$first/ on the console within $3 s"
    sleep 1
  done
}

# Wait until the ESP of the running copy lists entry $1, within $2 s (the guest renames it).
wait_entry() {
  local end=$((SECONDS + $2))
  until mdir -b -i "$disk@@1M" ::loader/entries/ 2>/dev/null | grep -q "/$1\$"; do
    [ "$SECONDS" -lt "$end" ] || die "no ESP entry $1 within $2 s"
    sleep 2
  done
}

good_build=$(debugfs -R "cat /etc/sbc/build" "$out/root.img" 2>/dev/null | sed -n 's/^SBC_BUILD=//p')
[ -n "$good_build" ] || die "$out/root.img has no build id"

run_boot() {
  say "== 1. boot: answers from outside, the daemon's privileges from inside"
  start_db
  prepare boot ""
  configure_export
  boot ""
  answers "$deadline"
  boot_to_service=$((SECONDS - boot_t0))
  say "SIP OPTIONS 200 and STUN Binding success through the forwarded port: ${boot_to_service}s after qemu started"
  wait_console 'selfcheck: root' 1 120
  wait_console 'selfcheck: allowlist [0-9]+ entries' 1 240
  # Started with CAP_NET_BIND_SERVICE(10) CAP_NET_ADMIN(12) CAP_PERFMON(38) CAP_BPF(39) (the
  # bounding set keeps them); after set-up only CAP_BPF(39) is left: what map updates need.
  local report start_caps=000000c000001400 kept=0000008000000000 none=0000000000000000
  report=$(selfcheck)
  printf '%s\n' "$report" | sed 's/^/  /'
  expect() { printf '%s\n' "$report" | grep -qE "$1" || die "selfcheck: expected /$1/"; }
  expect "^selfcheck: sbc pid=[0-9]+ user=sbc$"
  for set in CapEff CapPrm; do expect "^selfcheck: sbc $set: $kept$"; done
  expect "^selfcheck: sbc CapAmb: $none$"
  expect "^selfcheck: sbc CapBnd: $start_caps$"
  expect "^selfcheck: xdp on eth0: (native|generic) prog/xdp id [0-9]+ "
  expect "^selfcheck: allowlist export result=success status=0$"
  expect "^selfcheck: allowlist 1 entries, # source: mysql://sbc@10.0.2.2:$db_port/voip$"
  expect "^selfcheck: sbc NoNewPrivs: 1$"
  expect "^selfcheck: sbc Seccomp: 2$"
  expect "^selfcheck: bpffs mounted on /sys/fs/bpf$"
  expect "^selfcheck: nftables inet filter loaded$"
  expect "^selfcheck: slot a build $good_build$"
  expect "^selfcheck: root ro, data /dev/vda4$"
  xdp_mode=$(printf '%s\n' "$report" | sed -n 's/^selfcheck: xdp on eth0: \([a-z]*\) .*/\1/p')
  # The trunk port answers the host (10.0.2.2) now that the exported list names it: XDP passed it.
  "$check" --host 127.0.0.1 --port "$trunk_port" --uri sbc.invalid:5080 --deadline 60 --quiet ||
    die "the trunk port 5080 did not answer 10.0.2.2, which the exported allowlist lists"
  say "trunk port 5080 answers the allowlisted host"
  scrape_metrics
  stop_qemu
  stop_db
  say "PASS boot: boot to service ${boot_to_service}s; user sbc keeping only CAP_BPF; XDP $xdp_mode on eth0; allowlist exported by the timer; /metrics scraped"
}

# GET /metrics through the forwarded management port: parsed by prometheus_client, and the
# figures that prove the chain (engine up, the allowlist of 1, XDP passing the trunk's packets).
scrape_metrics() {
  local page=$work/metrics.txt
  local end=$((SECONDS + 60))
  until curl -sf --max-time 10 "http://127.0.0.1:$mgmt_port/metrics" -o "$page"; do
    [ "$SECONDS" -lt "$end" ] || die "no /metrics on the forwarded port within 60 s"
    sleep 2
  done
  curl -sf --max-time 10 "http://127.0.0.1:$mgmt_port/health" | grep -q '^ok: ' || die "/health is not ok"
  /usr/bin/python3 - "$page" <<'PY' || die "/metrics: $(head -c 2000 "$page")"
import sys
from prometheus_client.parser import text_string_to_metric_families
samples = {}
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
def get(name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))
checks = {
    "sbc_engine_up == 1": get("sbc_engine_up") == 1,
    "sbc_allowlist_entries == 1": get("sbc_allowlist_entries") == 1,
    "sbc_xdp_attached{interface=eth0} == 1": get("sbc_xdp_attached", interface="eth0") == 1,
    "sbc_xdp_packets_total{verdict=pass_allowed} > 0": (get("sbc_xdp_packets_total", verdict="pass_allowed") or 0) > 0,
    "sbc_sip_local_replies_total > 0": (get("sbc_sip_local_replies_total") or 0) > 0,
    "process_resident_memory_bytes > 0": (get("process_resident_memory_bytes") or 0) > 0,
}
print("  /metrics: %d samples; " % len(samples) + ", ".join(
    "%s=%s" % (k, v) for k, v in [
        ("xdp pass_allowed", get("sbc_xdp_packets_total", verdict="pass_allowed")),
        ("xdp pass_not_protected", get("sbc_xdp_packets_total", verdict="pass_not_protected")),
        ("allowlist age s", get("sbc_allowlist_age_seconds")),
        ("rss bytes", get("process_resident_memory_bytes")),
        ("cpu s", get("process_cpu_seconds_total")),
    ]))
bad = [k for k, ok in checks.items() if not ok]
if bad:
    print("  /metrics failed: " + "; ".join(bad))
    sys.exit(1)
PY
  say "/metrics scraped from the host and parsed (prometheus_client): engine up, allowlist 1, XDP passing the trunk"
}

# The boot entries on the stopped disk's ESP (systemd-boot's boot counting renames them), one line.
esp_entries() {
  mdir -b -i "$disk@@1M" ::loader/entries/ | sed 's|.*/||' | sort | tr '\n' ' '
}

run_update() {
  say "== 2. good update: sbc-update writes slot B, B is tried once, passes the gate, is blessed"
  prepare update "systemd.wants=sbc-update@dev-vdb.service"
  boot "$out/root.img"
  wait_console "sbc-update: slot b holds build $good_build" 1 "$deadline"
  say "sbc-update wrote slot B ($((SECONDS - boot_t0))s); rebooting into it"
  wait_console "selfcheck: slot b build $good_build" 1 "$deadline"
  wait_console "health-check: STUN Binding via" 1 "$deadline"
  say "slot B booted and its health gate passed ($((SECONDS - boot_t0))s)"
  wait_entry sbc-b.conf 120
  answers 60
  update_time=$((SECONDS - boot_t0))
  stop_qemu
  local entries
  entries=$(esp_entries)
  say "ESP entries after: $entries"
  case " $entries" in *" sbc-b.conf "*) ;; *) die "slot B's entry was not blessed (no sbc-b.conf)" ;; esac
  say "PASS update: slot B booted, passed the gate, blessed, answers: ${update_time}s from qemu's start"
}

run_rollback() {
  say "== 3. broken update: B is tried once, fails the gate, and the appliance falls back to A by itself"
  bash rootfs/break-update.sh "$out/root.img" "$work/broken.img"
  local broken
  broken=$(debugfs -R "cat /etc/sbc/build" "$work/broken.img" 2>/dev/null | sed -n 's/^SBC_BUILD=//p')
  prepare rollback "systemd.wants=sbc-update@dev-vdb.service"
  boot "$work/broken.img"
  wait_console "sbc-update: slot b holds build $broken" 1 "$deadline"
  local t_update=$((SECONDS - boot_t0))
  say "sbc-update wrote the broken build $broken into slot B (${t_update}s); rebooting into it"
  wait_console "selfcheck: slot b build $broken" 1 "$deadline"
  say "slot B booted ($((SECONDS - boot_t0))s); its health gate must fail"
  wait_after "selfcheck: slot b build $broken" "selfcheck: slot a build $good_build" "$deadline"
  answers 120
  rollback_time=$((SECONDS - boot_t0 - t_update))
  grep -a -q "already failed its trial" "$console" || die "the second sbc-update of the broken build was not refused"
  stop_qemu
  local entries
  entries=$(esp_entries)
  say "ESP entries after: $entries"
  case " $entries" in *" sbc-b+0-1.conf "*) ;; *) die "slot B's entry is not marked bad (sbc-b+0-1.conf)" ;; esac
  say "PASS rollback: back on slot A, answering, ${rollback_time}s from the reboot into B (the broken update refused when offered again)"
}

case "${ONLY:-all}" in
  boot) run_boot ;;
  update) run_update ;;
  rollback) run_rollback ;;
  all) run_boot; run_update; run_rollback ;;
  *) die "ONLY=boot|update|rollback" ;;
esac
# The disk copies are 2 GiB (sparse) each: kept when a run fails, removed when all passed.
rm -rf "$work"/*.img "$work"/*.vars.fd "$work/mariadb"
say "PASS (${ONLY:-all}) in $((SECONDS - t0))s"
