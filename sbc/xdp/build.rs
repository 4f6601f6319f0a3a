//! Builds the XDP program (`ebpf/xdp`, target bpfel-unknown-none) with aya-build and leaves
//! the object in `$OUT_DIR/sbc-ebpf-xdp`, which `src/lib.rs` embeds.
//!
//! Needs a nightly toolchain with `rust-src` (for `-Z build-std=core`) and `bpf-linker` on
//! PATH. `SBC_EBPF_TOOLCHAIN` picks the toolchain (default `nightly`; e.g.
//! `nightly-2026-10-29`). `AYA_BUILD_SKIP=1` skips the eBPF build and embeds an empty
//! object: the crate compiles (for clippy, docs, hosts without nightly) and
//! `XdpFilter::attach` returns `XdpError::NoObject`.
//!
//! `ebpf/xdp` is its own workspace (the root workspace excludes it, so its BPF
//! `[profile.release]` applies), so cargo is run from inside that folder: aya-build runs
//! `cargo build --package sbc-ebpf-xdp` in the current directory.

use std::{env, fs, path::PathBuf};

fn main() -> aya_build::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_root = manifest_dir.join("../../ebpf");
    let xdp_dir = ebpf_root.join("xdp").canonicalize()?;
    let common_dir = ebpf_root.join("common").canonicalize()?;
    // aya-build watches xdp_dir; the shared types live next to it.
    println!("cargo:rerun-if-changed={}", common_dir.join("src").display());
    println!("cargo:rerun-if-changed={}", common_dir.join("Cargo.toml").display());
    println!("cargo:rerun-if-env-changed=SBC_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");

    let out = PathBuf::from(env::var("OUT_DIR")?).join("sbc-ebpf-xdp");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(&out, b"")?;
        println!("cargo:warning=AYA_BUILD_SKIP set: no XDP object embedded; XdpFilter::attach will fail");
        return Ok(());
    }

    let toolchain = env::var("SBC_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".to_owned());
    env::set_current_dir(&xdp_dir)?;
    let root_dir =
        xdp_dir.to_str().ok_or_else(|| std::io::Error::other(format!("non-UTF-8 path {}", xdp_dir.display())))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "sbc-ebpf-xdp", root_dir, ..Default::default() }],
        aya_build::Toolchain::Custom(&toolchain),
    )?;
    if !out.is_file() {
        return Err(std::io::Error::other(format!("aya-build produced no {}", out.display())).into());
    }
    Ok(())
}
