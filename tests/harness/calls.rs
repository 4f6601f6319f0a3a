//! Call runs between two sipp peers across the SBC, and the two-sided capture with its leak
//! report: shared by the lab tests and `just demo`.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Result, ensure};

use crate::pcap::Packet;
use crate::{CORE, CORE_PORT, Capture, Lab, Netns, Proc, core_secrets, leaks, scenario, sipp, sipp_stats};

pub const CORE_ADDR: &str = CORE;

pub fn core_port() -> String {
    CORE_PORT.to_string()
}

fn core_ip() -> IpAddr {
    CORE.parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// What both SBC veths carried while a closure ran.
pub struct Captured {
    pub external: Vec<Packet>,
    pub internal: Vec<Packet>,
}

/// The leak check's result: how many core identifiers it looked for, and where it found any.
pub struct LeakReport {
    pub secrets: usize,
    pub leaks: Vec<String>,
}

impl Captured {
    pub fn leak_report(&self) -> LeakReport {
        let secrets = core_secrets(&self.internal, core_ip(), &[]);
        LeakReport { secrets: secrets.len(), leaks: leaks(&self.external, &secrets) }
    }
}

/// Runs `f` with tcpdump on the SBC's external (x0) and internal (i0) veths.
pub fn capture_both<T>(lab: &Lab, f: impl FnOnce() -> T) -> Result<(T, Captured)> {
    let ext = Capture::start(&lab.sbc, "x0", lab.dir.join("external.pcap"), &lab.dir)?;
    let int = Capture::start(&lab.sbc, "i0", lab.dir.join("internal.pcap"), &lab.dir)?;
    let res = f();
    let external = ext.finish()?;
    let internal = int.finish()?;
    Ok((res, Captured { external, internal }))
}

/// Waits for a sipp and requires exactly `want` successful calls and none failed.
pub fn sipp_ok(mut p: Proc, limit: Duration, want: u64) -> Result<()> {
    let st = p.wait(limit)?;
    let log = p.log_text();
    let stats = sipp_stats(&log);
    ensure!(
        st.success() && stats.successful == want && stats.failed == 0,
        "{}: exit {st}, {stats:?}, wanted {want} successful\n{}",
        p.name,
        tail(&log)
    );
    Ok(())
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

pub fn spawn_sipp(lab: &Lab, ns: &Netns, name: &str, args: &[&str]) -> Result<Proc> {
    Proc::spawn(name, sipp(ns, &lab.dir, args), lab.dir.join(format!("{name}.log")))
}

/// Starts the callee (`scenario`, ip, port), then the caller (`scenario`, ip) toward `target`;
/// both must complete `calls` calls. Transports are (callee, caller): sipp's -t values.
#[allow(clippy::too_many_arguments)]
pub fn call_pair(
    lab: &Lab,
    callee_ns: &Netns,
    callee: (&str, &str, &str),
    caller_ns: &Netns,
    caller: (&str, &str),
    target: &str,
    (callee_t, caller_t): (&str, &str),
    calls: u64,
    rate: u32,
    extra_caller: &[&str],
) -> Result<()> {
    let n = calls.to_string();
    let r = rate.to_string();
    let (callee_sf, callee_ip, callee_port) = callee;
    let callee_sf = scenario(callee_sf);
    let uas = spawn_sipp(
        lab,
        callee_ns,
        "callee",
        &[
            "-sf",
            &callee_sf.to_string_lossy(),
            "-t",
            callee_t,
            "-i",
            callee_ip,
            "-p",
            callee_port,
            "-m",
            &n,
            "-timeout",
            "120s",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let (caller_sf, caller_ip) = caller;
    let caller_sf = scenario(caller_sf);
    let mut args = vec![
        "-sf",
        caller_sf.to_str().unwrap_or_default(),
        "-t",
        caller_t,
        "-i",
        caller_ip,
        "-p",
        "5062",
        "-s",
        "1000",
        target,
        "-m",
        &n,
        "-r",
        &r,
        "-d",
        "200",
        "-timeout",
        "120s",
    ];
    args.extend_from_slice(extra_caller);
    let uac = spawn_sipp(lab, caller_ns, "caller", &args)?;
    sipp_ok(uac, Duration::from_secs(150), calls)?;
    sipp_ok(uas, Duration::from_secs(20), calls)?;
    Ok(())
}
