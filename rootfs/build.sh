#!/usr/bin/env bash
# Builds the appliance image from Debian packages only (rootfs/README.md explains the layout):
#
#   OUT/sbc.img   a GPT disk: ESP (systemd-boot, a kernel and initrd per slot), root slots A and B,
#                 the persistent data partition; slot A holds this build, slot B is empty
#   OUT/root.img  this build's root filesystem alone: the update that `sbc-update` writes into
#                 the inactive slot
#
# Usage: rootfs/build.sh   (as root: mmdebstrap in root mode and chroot; no loop device, no mount)
# Environment: OUT (target/image), SBC_BIN (target/release/sbc), SUITE (this machine's Debian
# release), KERNEL (linux-image-cloud-amd64), SLOT_MB (768), ESP_MB (256), DATA_MB (256).
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD

out=${OUT:-target/image}
sbc_bin=${SBC_BIN:-target/release/sbc}
suite=${SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}
kernel=${KERNEL:-linux-image-cloud-amd64}
slot_mb=${SLOT_MB:-768}
esp_mb=${ESP_MB:-256}
data_mb=${DATA_MB:-256}
steps=8
step_n=0
t0=$SECONDS
step() {
  step_n=$((step_n + 1))
  printf '[image %d/%d, %4ds] %s\n' "$step_n" "$steps" "$((SECONDS - t0))" "$*"
}
die() { echo "image: $*" >&2; exit 1; }

step "checking tools and the sbc binary ($sbc_bin)"
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap --mode=root, chroot); CI does"
for tool in mmdebstrap mkfs.ext4 mkfs.vfat mcopy sfdisk strip; do
  command -v "$tool" >/dev/null || die "$tool missing: run just image (it installs mmdebstrap, dosfstools, mtools, fdisk, qemu, ovmf)"
done
[ -x "$sbc_bin" ] || die "$sbc_bin missing: cargo build --release -p sbc"
"$sbc_bin" check-config -c rootfs/overlay/etc/sbc/sbc.toml >/dev/null || die "the appliance config is invalid"
# The apt sources of this machine (no mirror is named in the repository).
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -s "$f" ] && grep -qE '^[^#]*(deb |URIs:)' "$f" && sources+=("$f")
done
[ "${#sources[@]}" -gt 0 ] || die "no apt sources on this machine"

work=$out/work
rm -rf "$work"
mkdir -p "$work" "$out"
root=$work/root

step "mmdebstrap $suite minbase + $kernel, systemd, nftables (Debian packages only)"
packages=systemd,systemd-sysv,udev,netbase,"$kernel",initramfs-tools,zstd,kmod,nftables,iproute2,procps,systemd-boot
mmdebstrap --mode=root --variant=minbase --format=directory --quiet \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --essential-hook="mkdir -p \"\$1/etc/initramfs-tools/conf.d\" && cp $here/rootfs/overlay/etc/initramfs-tools/conf.d/sbc.conf \"\$1/etc/initramfs-tools/conf.d/\"" \
  --include="$packages" "$suite" "$root" "${sources[@]}"

step "installing sbc, its config, units, nftables ruleset, sysctl hardening"
cp -a rootfs/overlay/. "$root/"
strip --strip-debug -o "$root/usr/bin/sbc" "$sbc_bin"   # the release profile keeps line tables
chmod 0755 "$root/usr/bin/sbc"
install -m 0755 rootfs/sbc-update "$root/usr/sbin/sbc-update"
mkdir -p "$root/data" "$root/efi" "$root/var/lib/sbc"
chroot "$root" useradd --system --user-group --no-create-home --home-dir /var/lib/sbc \
  --shell /usr/sbin/nologin sbc
: >"$root/etc/machine-id"
sbc_version=$("$sbc_bin" --version 2>/dev/null | awk '{print $2}' || true)
build_id="${sbc_version:-0}-$(date -u +%Y%m%d%H%M%S)"
printf 'SBC_BUILD=%s\n' "$build_id" >"$root/etc/sbc/build"
systemctl --root="$root" enable sbc.service sbc-health-gate.service sbc-selfcheck.service nftables.service \
  systemd-networkd.service sbc-allowlist.timer >/dev/null 2>&1
systemctl --root="$root" mask systemd-networkd-wait-online.service apt-daily.timer \
  apt-daily-upgrade.timer >/dev/null 2>&1 || true

step "collecting the kernel and initrd for the ESP"
vmlinuz=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n1)
initrd=$(ls "$root"/boot/initrd.img-* | sort -V | tail -n1)
[ -f "$vmlinuz" ] && [ -f "$initrd" ] || die "no kernel or initrd in the rootfs"
kver=${vmlinuz##*/vmlinuz-}
esp=$work/esp
mkdir -p "$esp/EFI/BOOT" "$esp/loader/entries" "$esp/a" "$esp/b"
cp "$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$esp/EFI/BOOT/BOOTX64.EFI"
cp "$vmlinuz" "$esp/a/vmlinuz"
cp "$initrd" "$esp/a/initrd.img"
# net.ifnames=0: the first NIC is eth0, the trunk interface the default config attaches XDP to.
cmdline="ro console=tty0 console=ttyS0,115200 panic=10 net.ifnames=0"
printf 'timeout 0\neditor no\nconsole-mode keep\n' >"$esp/loader/loader.conf"
cat >"$esp/loader/entries/sbc-a.conf" <<EOF
title SBC slot A ($build_id)
version $build_id
sort-key sbc
linux /a/vmlinuz
initrd /a/initrd.img
options root=PARTLABEL=root-a $cmdline
EOF
echo "$cmdline" >"$root/etc/sbc/cmdline"

step "root filesystem image (ext4, ${slot_mb} MiB, read-only at run time)"
rm -f "$out/root.img"
mkfs.ext4 -q -F -L sbc-root -d "$root" "$out/root.img" "${slot_mb}M"

step "data partition (ext4, ${data_mb} MiB: config, state, journal) and ESP (FAT32, ${esp_mb} MiB)"
data=$work/data
mkdir -p "$data/sbc" "$data/log/journal"
cp -a "$root/var/lib/systemd" "$data/systemd"
sbc_uid=$(awk -F: '$1 == "sbc" {print $3 ":" $4}' "$root/etc/passwd")
chown "$sbc_uid" "$data/sbc"
chmod 0750 "$data/sbc"
mkfs.ext4 -q -F -L sbc-data -d "$data" "$work/data.img" "${data_mb}M"
rm -f "$work/esp.img"
mkfs.vfat -F 32 -n ESP -C "$work/esp.img" $((esp_mb * 1024)) >/dev/null
mcopy -s -i "$work/esp.img" "$esp"/* ::/

step "GPT disk: esp, root-a (this build), root-b (empty), sbc-data"
disk=$out/sbc.img
rm -f "$disk"
total_mb=$((1 + esp_mb + 2 * slot_mb + data_mb + 1))
truncate -s "${total_mb}M" "$disk"
sfdisk --quiet "$disk" <<EOF
label: gpt
start=1MiB, size=${esp_mb}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"
size=${slot_mb}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="root-a"
size=${slot_mb}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="root-b"
size=${data_mb}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="sbc-data"
EOF
dd if="$work/esp.img" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$out/root.img" of="$disk" bs=1M seek=$((1 + esp_mb)) conv=notrunc,sparse status=none
dd if="$work/data.img" of="$disk" bs=1M seek=$((1 + esp_mb + 2 * slot_mb)) conv=notrunc,sparse status=none

step "done"
rm -rf "$work"
used=$(du -sh --apparent-size "$disk" | cut -f1)
alloc=$(du -sh "$disk" | cut -f1)
echo "image: $disk (build $build_id, kernel $kver): ${used} disk, ${alloc} allocated; update file: $out/root.img"
echo "image: built in $((SECONDS - t0)) s"
