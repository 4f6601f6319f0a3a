//! `sbc check-config` and `sbc run` on a bad file: every error, with path and line, exit 2.

use std::path::PathBuf;
use std::process::{Command, Output};

/// An unknown key in [limits], a string where a number belongs in [probe], a bad port.
const BAD: &str = include_str!("fixtures/three-errors.toml");

fn sbc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sbc")).args(args).output().expect("run sbc")
}

fn bad_file(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, BAD).expect("write the bad config");
    path
}

fn error_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().map(|l| l.split(':').take(2).collect::<Vec<_>>().join(":")).collect()
}

const WANT: [&str; 3] = ["line 2: external.udp[0]", "line 8: probe.interval_ms", "line 10: limits.max_mesage_bytes"];

#[test]
fn check_config_prints_every_error_with_path_and_line_and_exits_2() {
    let path = bad_file("check-config-bad.toml");
    let out = sbc(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(error_lines(&out), WANT, "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn run_refuses_an_invalid_config_with_the_same_errors() {
    let path = bad_file("run-bad.toml");
    let out = sbc(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let mut lines = error_lines(&out);
    assert_eq!(lines.remove(0), "invalid configuration:");
    assert_eq!(lines, WANT);
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/sbc.toml");
    let out = sbc(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}
