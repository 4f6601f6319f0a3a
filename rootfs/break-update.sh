#!/usr/bin/env bash
# rootfs/break-update.sh IN OUT: a deliberately broken release made from a good update file, for
# the rollback test. OUT is IN with a newer build id (so its boot entry sorts first) and a
# drop-in that replaces the daemon by a process that never answers: the slot boots, the health
# gate gets no SIP or STUN answer, and the boot must be rolled back from. Offline (debugfs).
set -euo pipefail
in=$1 out=$2
cp --sparse=always "$in" "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
build=$(debugfs -R "cat /etc/sbc/build" "$out" 2>/dev/null | sed -n 's/^SBC_BUILD=//p')
[ -n "$build" ] || { echo "break-update: $in has no /etc/sbc/build" >&2; exit 1; }
broken="${build%-*}-$(date -u +%Y%m%d%H%M%S)"
printf 'SBC_BUILD=%s\nSBC_BROKEN=1\n' "$broken" >"$tmp/build"
printf '[Service]\nExecStartPre=\nExecStart=\nExecStart=/bin/sleep infinity\n' >"$tmp/broken.conf"
chmod 0644 "$tmp/build" "$tmp/broken.conf"
debugfs -w -f - "$out" >/dev/null 2>&1 <<CMDS
rm /etc/sbc/build
write $tmp/build /etc/sbc/build
mkdir /etc/systemd/system/sbc.service.d
write $tmp/broken.conf /etc/systemd/system/sbc.service.d/broken.conf
CMDS
got=$(debugfs -R "cat /etc/systemd/system/sbc.service.d/broken.conf" "$out" 2>/dev/null)
[ "$got" = "$(cat "$tmp/broken.conf")" ] || { echo "break-update: writing into $out failed" >&2; exit 1; }
echo "break-update: $out is build $broken (broken: sbc.service never answers)"
