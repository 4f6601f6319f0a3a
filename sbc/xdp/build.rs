//! Builds the XDP program (`ebpf/xdp`, target bpfel-unknown-none) with aya-build and leaves
//! the object in `$OUT_DIR/sbc-ebpf-xdp`, which `src/lib.rs` embeds.
//!
//! Needs the dated nightly named in `ebpf/xdp/rust-toolchain.toml` with `rust-src` (for
//! `-Z build-std=core`) and `bpf-linker` on PATH (`.ci/install-deps` installs both).
//! `SBC_EBPF_TOOLCHAIN` overrides the toolchain (e.g. to try a newer nightly before moving the
//! pin). `AYA_BUILD_SKIP=1` skips the eBPF build and embeds an empty
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
    println!("cargo:rerun-if-changed={}", xdp_dir.join("rust-toolchain.toml").display());
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");

    let out = PathBuf::from(env::var("OUT_DIR")?).join("sbc-ebpf-xdp");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(&out, b"")?;
        println!("cargo:warning=AYA_BUILD_SKIP set: no XDP object embedded; XdpFilter::attach will fail");
        return Ok(());
    }

    let toolchain = match env::var("SBC_EBPF_TOOLCHAIN") {
        Ok(t) => t,
        Err(_) => pinned_channel(&xdp_dir.join("rust-toolchain.toml"))?,
    };
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

/// The `channel = "…"` of the eBPF crate's `rust-toolchain.toml`: the one pinned nightly.
fn pinned_channel(file: &std::path::Path) -> std::io::Result<String> {
    let text = fs::read_to_string(file)?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .find(|v| !v.is_empty())
        .ok_or_else(|| std::io::Error::other(format!("{}: no `channel = \"…\"` line", file.display())))
}
