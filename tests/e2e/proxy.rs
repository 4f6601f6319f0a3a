//! The edge proxy in the lab: real sipp peers (and a Kamailio registrar) on both sides of the
//! SBC in network namespaces, tcpdump on both of the SBC's veths, and the leak check: no byte
//! captured on the external side carries the core's address, port, branches, tags or Call-IDs.
//!
//! Core-side scenarios carry no SDP: media anchoring is a later capability, and an SDP body
//! would put the core's media address on the wire by design until then.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use sbc_lab::{
    CORE, CORE_PORT, Capture, EXT_PEER, Lab, Proc, SBC_EXT, SBC_INT, core_secrets, lab_lock, leaks, privileged,
    scenario, sipp, sipp_stats,
};

fn core_ip() -> IpAddr {
    CORE.parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// Captures on both SBC veths around `f`, then asserts nothing of the core leaked outside.
fn with_captures(lab: &Lab, min_secrets: usize, f: impl FnOnce() -> Result<()>) -> Result<usize> {
    let ext = Capture::start(&lab.sbc, "x0", lab.dir.join("external.pcap"), &lab.dir)?;
    let int = Capture::start(&lab.sbc, "i0", lab.dir.join("internal.pcap"), &lab.dir)?;
    let res = f();
    let ext = ext.finish()?;
    let int = int.finish()?;
    res?;
    ensure!(!ext.is_empty() && !int.is_empty(), "captures are empty: ext {} int {}", ext.len(), int.len());
    let secrets = core_secrets(&int, core_ip(), &[]);
    // The check must have something to look for: at least the core's own branches and tags.
    ensure!(secrets.len() >= min_secrets, "too few core identifiers found in the internal capture: {secrets:?}");
    let found = leaks(&ext, &secrets);
    ensure!(found.is_empty(), "{} leaks, first:\n{}", found.len(), found.first().map_or("", String::as_str));
    Ok(ext.len())
}

fn sipp_ok(mut p: Proc, limit: Duration, want: u64) -> Result<()> {
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

fn spawn_sipp(lab: &Lab, ns: &sbc_lab::Netns, name: &str, args: &[&str]) -> Result<Proc> {
    Proc::spawn(name, sipp(ns, &lab.dir, args), lab.dir.join(format!("{name}.log")))
}

const CORE_ADDR: &str = "10.99.0.10";
fn core_port() -> String {
    CORE_PORT.to_string()
}

/// A callee then a caller; both must complete `calls` calls.
#[allow(clippy::too_many_arguments)]
fn call_pair(
    lab: &Lab,
    callee_ns: &sbc_lab::Netns,
    callee: (&str, &str, &str),
    caller_ns: &sbc_lab::Netns,
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
            "-sf", &callee_sf.to_string_lossy(), "-t", callee_t, "-i", callee_ip, "-p", callee_port, "-m", &n,
            "-timeout", "120s",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let (caller_sf, caller_ip) = caller;
    let caller_sf = scenario(caller_sf);
    let mut args = vec![
        "-sf", caller_sf.to_str().unwrap_or_default(), "-t", caller_t, "-i", caller_ip, "-p", "5062", "-s", "1000",
        target, "-m", &n, "-r", &r, "-d", "200", "-timeout", "120s",
    ];
    args.extend_from_slice(extra_caller);
    let uac = spawn_sipp(lab, caller_ns, "caller", &args)?;
    sipp_ok(uac, Duration::from_secs(150), calls)?;
    sipp_ok(uas, Duration::from_secs(20), calls)?;
    Ok(())
}

fn no_probe() -> &'static str {
    "[probe]\ninterval_ms = 0\n"
}

#[test]
fn calls_from_outside_reach_the_core_and_nothing_of_the_core_leaks() -> Result<()> {
    if !privileged("calls_from_outside") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbl1", "calls_from_outside")?;
    let _sbc = lab.start_sbc(no_probe())?;
    let packets = with_captures(&lab, 200, || {
        call_pair(
            &lab, &lab.core, ("uas-nosdp.xml", CORE_ADDR, &core_port()),
            &lab.ext, ("uac.xml", EXT_PEER), &format!("{SBC_EXT}:5060"), ("u1", "u1"), 200, 40, &[],
        )
    })?;
    eprintln!("200 calls external → core over UDP; {packets} external packets checked for leaks");
    Ok(())
}

#[test]
fn calls_from_the_core_reach_outside_and_nothing_of_the_core_leaks() -> Result<()> {
    if !privileged("calls_from_core") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbl2", "calls_from_core")?;
    let _sbc = lab.start_sbc(no_probe())?;
    // The core uses the SBC as outbound proxy: the Request-URI names the outside callee,
    // the packets go to the SBC's internal address (-rsa).
    let rsa = format!("{SBC_INT}:5060");
    with_captures(&lab, 400, || {
        call_pair(
            &lab, &lab.ext, ("uas.xml", EXT_PEER, "5060"),
            &lab.core, ("uac-nosdp.xml", CORE_ADDR), &format!("{EXT_PEER}:5060"), ("u1", "u1"), 200, 40, &["-rsa", &rsa],
        )
    })?;
    Ok(())
}

/// The leak check itself must be able to fail: with hiding off, the core's Call-IDs and tags
/// reach the outside and the same check finds them.
#[test]
fn leak_check_finds_the_core_when_hiding_is_off() -> Result<()> {
    if !privileged("leak_check_can_fail") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbl6", "leak_check_can_fail")?;
    let _sbc = lab.start_sbc_hiding(false, no_probe())?;
    let rsa = format!("{SBC_INT}:5060");
    let res = with_captures(&lab, 20, || {
        call_pair(
            &lab, &lab.ext, ("uas.xml", EXT_PEER, "5060"),
            &lab.core, ("uac-nosdp.xml", CORE_ADDR), &format!("{EXT_PEER}:5060"), ("u1", "u1"), 5, 10, &["-rsa", &rsa],
        )
    });
    let err = res.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(err.contains("leaks, first"), "expected the leak check to fire, got {err:?}");
    Ok(())
}

#[test]
fn bye_from_either_side_and_reinvite_cross_the_sbc() -> Result<()> {
    if !privileged("bye_and_reinvite") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbl3", "bye_and_reinvite")?;
    let _sbc = lab.start_sbc(no_probe())?;
    let target = format!("{SBC_EXT}:5060");
    let rsa = format!("{SBC_INT}:5060");
    with_captures(&lab, 100, || {
        // The core (callee) hangs up.
        call_pair(&lab, &lab.core, ("uas-bye-nosdp.xml", CORE_ADDR, &core_port()), &lab.ext, ("uac-waitbye.xml", EXT_PEER), &target, ("u1", "u1"), 20, 10, &[])?;
        // The outside callee hangs up on a call from the core.
        call_pair(&lab, &lab.ext, ("uas-bye.xml", EXT_PEER, "5060"), &lab.core, ("uac-waitbye-nosdp.xml", CORE_ADDR), &format!("{EXT_PEER}:5060"), ("u1", "u1"), 20, 10, &["-rsa", &rsa])?;
        // re-INVITE from the caller (outside), then from the callee (core).
        call_pair(&lab, &lab.core, ("uas-reinvite-nosdp.xml", CORE_ADDR, &core_port()), &lab.ext, ("uac-reinvite.xml", EXT_PEER), &target, ("u1", "u1"), 20, 10, &[])?;
        call_pair(&lab, &lab.core, ("uas-reinvite-from-callee.xml", CORE_ADDR, &core_port()), &lab.ext, ("uac-accept-reinvite.xml", EXT_PEER), &target, ("u1", "u1"), 20, 10, &[])?;
        // The caller on TCP (the core stays on UDP: its target says udp).
        call_pair(&lab, &lab.core, ("uas-reinvite-nosdp.xml", CORE_ADDR, &core_port()), &lab.ext, ("uac-reinvite.xml", EXT_PEER), &target, ("u1", "t1"), 20, 10, &[])?;
        Ok(())
    })?;
    Ok(())
}

fn kamailio(lab: &Lab) -> Result<Proc> {
    let run = lab.dir.join("kamailio");
    std::fs::create_dir_all(&run)?;
    let cfg = sbc_lab::root().join("tests/peers/kamailio-core.cfg");
    let mut c = lab.core.cmd("kamailio");
    c.arg("-f").arg(&cfg).args(["-DD", "-E", "-m", "64", "-M", "8"]);
    c.args(["-l", &format!("udp:{CORE}:{CORE_PORT}"), "-l", &format!("tcp:{CORE}:{CORE_PORT}")]);
    c.arg("-P").arg(run.join("kamailio.pid")).arg("-Y").arg(&run);
    let p = Proc::spawn("kamailio", c, lab.dir.join("kamailio.log"))?;
    std::thread::sleep(Duration::from_millis(800));
    Ok(p)
}

fn register_then_call(prefix: &str, test: &str, transport: &str) -> Result<()> {
    let _g = lab_lock();
    let lab = Lab::new(prefix, test)?;
    // Probing on: Kamailio answers OPTIONS, so the core must be seen up.
    let _sbc = lab.start_sbc("[probe]\ninterval_ms = 1000\ntimeout_ms = 1000\n")?;
    let _k = kamailio(&lab)?;
    with_captures(&lab, 5, || {
        let phone = spawn_sipp(
            &lab, &lab.ext, "phone",
            &[
                "-sf", &scenario("phone-register-uas.xml").to_string_lossy(),
                "-oocsf", &scenario("phone-incoming-call.xml").to_string_lossy(),
                "-t", transport, "-i", EXT_PEER, "-p", "5060", "-s", "alice", &format!("{SBC_EXT}:5060"),
                "-m", "1", "-timeout", "60s",
            ],
        )?;
        std::thread::sleep(Duration::from_millis(1500));
        let core = spawn_sipp(
            &lab, &lab.core, "core-caller",
            &[
                "-sf", &scenario("core-call-user.xml").to_string_lossy(), "-t", transport, "-i", CORE, "-p", "5072",
                "-s", "alice", &format!("{CORE}:{CORE_PORT}"), "-m", "1", "-d", "200", "-timeout", "30s",
            ],
        )?;
        sipp_ok(core, Duration::from_secs(40), 1)?;
        sipp_ok(phone, Duration::from_secs(70), 1)?;
        Ok(())
    })?;
    Ok(())
}

#[test]
fn register_then_call_from_core_reaches_the_phone_over_udp() -> Result<()> {
    if !privileged("register_udp") {
        return Ok(());
    }
    register_then_call("sbl4", "register_udp", "u1")
}

#[test]
fn register_then_call_from_core_reaches_the_phone_over_its_tcp_connection() -> Result<()> {
    if !privileged("register_tcp") {
        return Ok(());
    }
    register_then_call("sbl5", "register_tcp", "t1")
}
