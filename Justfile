# Every task a person runs. `just --list` shows them.
set shell := ["bash", "-euo", "pipefail", "-c"]

export PATH := env_var('HOME') + "/.cargo/bin:" + env_var('PATH')

# The dated nightly that builds the XDP program and runs cargo-fuzz (pinned in one file).
ebpf_toolchain := `sed -n 's/^channel *= *"\(.*\)"/\1/p' ebpf/xdp/rust-toolchain.toml`

# Install what a fresh machine lacks (Debian packages, the pinned nightly with rust-src, bpf-linker, just).
setup:
    bash .ci/install-deps

# Build everything (the XDP program too, through sbc-xdp's build.rs).
build:
    cargo build --workspace

# Run the SBC in the foreground on the embedded default config (or: just run -c FILE).
run *ARGS: build
    ./target/debug/sbc run {{ARGS}}

# Validate a config file.
check-config FILE: build
    ./target/debug/sbc check-config -c {{FILE}}

# Unit tests, RFC vectors, and the privileged lab tests (netns, sipp, Kamailio, XDP).
# Set SBC_REQUIRE_PRIVILEGED=1 to make a skipped lab test a failure (CI does).
test: build
    cargo test --workspace --no-fail-fast -- --test-threads=1

# The lab demo: calls both ways through the SBC, one summary line.
demo: build
    ./target/debug/lab-demo

fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets -- -D warnings

# SBC vs Kamailio 5.6 (stateful, topoh): max call rate and CPU per 1000 calls, and the engine's
# instructions per call (callgrind). Writes bench/RESULTS.md.
bench-sip:
    cargo build --release -p sbc
    cargo build --release -p sbc-proto --example engine_calls
    command -v valgrind >/dev/null || apt-get install -y --no-install-recommends valgrind
    bash bench/sip/run.sh

# Our XDP program (run by the SBC) vs xdp-filter on the same veth, a bounded flood. Into bench/RESULTS.md.
bench-xdp:
    cargo build --release -p sbc
    cargo build --release -p sbc-xdp --example udp_flood
    bash bench/xdp/run.sh

# The SBC's STUN port vs coturn --stun-only (Debian's coturn, installed if missing), same generator and
# CPU budget (one pinned CPU each), into bench/RESULTS.md.
bench-stun:
    command -v turnserver >/dev/null || apt-get install -y --no-install-recommends coturn
    cargo build --release -p sbc --bin sbc --example stun_load
    bash bench/stun/run.sh

# The SBC's media relay vs rtpengine (Debian's rtpengine-daemon, userspace, installed if missing): 50
# calls, RTP packets/s relayed with < 1% loss, then an overload step and back down; same generator
# and CPU budget (one pinned CPU each), into bench/RESULTS.md.
bench-media:
    command -v rtpengine >/dev/null || apt-get install -y --no-install-recommends rtpengine-daemon
    cargo build --release -p sbc --bin sbc --example rtp_load
    flock /tmp/sbc-lab.lock bash bench/media/run.sh

# Ban reaction: the SBC's guard (bans in XDP) vs fail2ban (Debian's, with python3-pyinotify;
# installed if missing) tailing the SBC's log with config/fail2ban's filter and banning with
# nftables; svcrack against Kamailio, one run, same machine. Into bench/RESULTS.md.
bench-guard:
    command -v fail2ban-server >/dev/null && /usr/bin/python3 -c 'import pyinotify' 2>/dev/null || apt-get install -y --no-install-recommends fail2ban python3-pyinotify
    cargo build --release -p sbc
    flock /tmp/sbc-lab.lock bash bench/guard/run.sh

# The appliance image (rootfs/, Debian packages only, as root): a GPT disk with an ESP (systemd-boot),
# root slots A and B and a persistent data partition, into target/image/sbc.img; the update file
# for `sbc-update` into target/image/root.img. Prints each step.
image:
    for t in mmdebstrap mkfs.vfat mcopy sfdisk qemu-system-x86_64; do command -v $t >/dev/null || { apt-get install -y --no-install-recommends mmdebstrap dosfstools mtools fdisk qemu-system-x86 ovmf; break; }; done
    cargo build --release -p sbc
    bash rootfs/build.sh

# Build the image, boot it in qemu (TCG), and require a 200 to SIP OPTIONS and a STUN Binding
# answer from the host through forwarded ports; prints the boot-to-service time.
test-appliance: image
    bash rootfs/test-appliance.sh

# Fuzz the framer, the header index, the engine and the STUN server (cargo-fuzz, nightly), SECONDS
# each, seeded with the RFC 4475 and RFC 5118 vectors (STUN: the RFC 5769 ones). A crash becomes a
# file in tests/vectors/fuzz/.
fuzz SECONDS="60":
    cargo-fuzz --version 2>/dev/null | grep -qw 0.13.2 || cargo install cargo-fuzz@0.13.2 --locked --force
    for t in framer header_index engine; do mkdir -p fuzz/corpus/$t && cp tests/vectors/rfc4475/*.sip tests/vectors/rfc5118/*.sip fuzz/corpus/$t/; done
    mkdir -p fuzz/corpus/stun && cp tests/vectors/rfc5769/*.bin fuzz/corpus/stun/
    cd fuzz && cargo +{{ebpf_toolchain}} fuzz run framer -- -max_total_time={{SECONDS}} -dict=sip.dict
    cd fuzz && cargo +{{ebpf_toolchain}} fuzz run header_index -- -max_total_time={{SECONDS}} -dict=sip.dict
    cd fuzz && cargo +{{ebpf_toolchain}} fuzz run engine -- -max_total_time={{SECONDS}} -dict=sip.dict
    cd fuzz && cargo +{{ebpf_toolchain}} fuzz run stun -- -max_total_time={{SECONDS}}
