//! Call runs between two sipp peers across the SBC, and the two-sided capture with its leak
//! report: shared by the lab tests and `just demo`.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Result, ensure};

use crate::pcap::Packet;
use crate::{
    CORE, CORE_PORT, Capture, EXT_PEER, Lab, Netns, Proc, SBC_EXT, SBC_INT, core_secrets, leaks, scenario, sipp,
    sipp_stats,
};

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

/// Which way calls cross the SBC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// The caller is outside (203.0.113.10) and calls the SBC's external address; the callee
    /// is the core (10.99.0.10:5070).
    Inbound,
    /// The caller is the core, using the SBC's internal address as outbound proxy (`-rsa`);
    /// the Request-URI names the callee outside (203.0.113.10:5060).
    Outbound,
}

/// One batch of calls between a sipp callee and a sipp caller across the SBC.
#[derive(Debug, Clone, Copy)]
pub struct Calls<'a> {
    pub way: Way,
    /// Scenario files (tests/peers/scenarios).
    pub callee: &'a str,
    pub caller: &'a str,
    /// sipp -t of the caller (the callee is on UDP, as the core target is).
    pub caller_transport: &'a str,
    pub calls: u64,
    pub rate: u32,
}

impl<'a> Calls<'a> {
    pub fn inbound(callee: &'a str, caller: &'a str, calls: u64, rate: u32) -> Self {
        Calls { way: Way::Inbound, callee, caller, caller_transport: "u1", calls, rate }
    }
    pub fn outbound(callee: &'a str, caller: &'a str, calls: u64, rate: u32) -> Self {
        Calls { way: Way::Outbound, callee, caller, caller_transport: "u1", calls, rate }
    }
    pub fn caller_over(self, transport: &'a str) -> Self {
        Calls { caller_transport: transport, ..self }
    }
}

/// Starts the callee, then the caller; returns (caller, callee) still running.
pub fn start_calls(lab: &Lab, c: &Calls<'_>) -> Result<(Proc, Proc)> {
    let n = c.calls.to_string();
    let r = c.rate.to_string();
    let core_port = core_port();
    let ext_target = format!("{EXT_PEER}:5060");
    let sbc_ext = format!("{SBC_EXT}:5060");
    let rsa = format!("{SBC_INT}:5060");
    let (callee_ns, callee_ip, callee_port, caller_ns, caller_ip, target) = match c.way {
        Way::Inbound => (&lab.core, CORE_ADDR, core_port.as_str(), &lab.ext, EXT_PEER, sbc_ext.as_str()),
        Way::Outbound => (&lab.ext, EXT_PEER, "5060", &lab.core, CORE_ADDR, ext_target.as_str()),
    };
    let callee_sf = scenario(c.callee).to_string_lossy().into_owned();
    let uas = spawn_sipp(
        lab,
        callee_ns,
        "callee",
        &["-sf", &callee_sf, "-t", "u1", "-i", callee_ip, "-p", callee_port, "-m", &n, "-timeout", "120s"],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let caller_sf = scenario(c.caller).to_string_lossy().into_owned();
    let mut args = vec![
        "-sf",
        &caller_sf,
        "-t",
        c.caller_transport,
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
    if c.way == Way::Outbound {
        args.extend_from_slice(&["-rsa", &rsa]);
    }
    let uac = spawn_sipp(lab, caller_ns, "caller", &args)?;
    Ok((uac, uas))
}

/// Runs a batch of calls; every call must succeed on both sides.
pub fn run_calls(lab: &Lab, c: &Calls<'_>) -> Result<()> {
    let (uac, uas) = start_calls(lab, c)?;
    sipp_ok(uac, Duration::from_secs(150), c.calls)?;
    sipp_ok(uas, Duration::from_secs(20), c.calls)?;
    Ok(())
}
