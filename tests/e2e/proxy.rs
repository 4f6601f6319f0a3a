//! The edge proxy in the lab: real sipp peers (and a Kamailio registrar) on both sides of the
//! SBC in network namespaces, tcpdump on both of the SBC's veths, and the leak check: no byte
//! captured on the external side carries the core's address, port, branches, tags or Call-IDs.
//!
//! Core-side scenarios carry no SDP: media anchoring is a later capability, and an SDP body
//! would put the core's media address on the wire by design until then.

use std::time::Duration;

use anyhow::{Result, ensure};
use sbc_lab::calls::{Calls, capture_both, run_calls, sipp_ok, spawn_sipp};
use sbc_lab::{CORE, CORE_PORT, EXT_PEER, Lab, Proc, SBC_EXT, lab_lock, privileged, scenario};

/// Captures on both SBC veths around `f`, then asserts nothing of the core leaked outside and
/// that the check had at least `min_secrets` core identifiers to look for.
fn with_captures(lab: &Lab, min_secrets: usize, f: impl FnOnce() -> Result<()>) -> Result<usize> {
    let (res, cap) = capture_both(lab, f)?;
    res?;
    let report = cap.leak_report();
    ensure!(
        report.secrets >= min_secrets,
        "too few core identifiers found in the internal capture: {}",
        report.secrets
    );
    ensure!(
        report.leaks.is_empty(),
        "{} leaks, first:\n{}",
        report.leaks.len(),
        report.leaks.first().map_or("", String::as_str)
    );
    Ok(cap.external.len())
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
    let packets = with_captures(&lab, 200, || run_calls(&lab, &Calls::inbound("uas-nosdp.xml", "uac.xml", 200, 40)))?;
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
    // the packets go to the SBC's internal address (Way::Outbound).
    with_captures(&lab, 400, || run_calls(&lab, &Calls::outbound("uas.xml", "uac-nosdp.xml", 200, 40)))?;
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
    let res = with_captures(&lab, 20, || run_calls(&lab, &Calls::outbound("uas.xml", "uac-nosdp.xml", 5, 10)));
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
    with_captures(&lab, 100, || {
        // The core (callee) hangs up.
        run_calls(&lab, &Calls::inbound("uas-bye-nosdp.xml", "uac-waitbye.xml", 20, 10))?;
        // The outside callee hangs up on a call from the core.
        run_calls(&lab, &Calls::outbound("uas-bye.xml", "uac-waitbye-nosdp.xml", 20, 10))?;
        // re-INVITE from the caller (outside), then from the callee (core).
        run_calls(&lab, &Calls::inbound("uas-reinvite-nosdp.xml", "uac-reinvite.xml", 20, 10))?;
        run_calls(&lab, &Calls::inbound("uas-reinvite-from-callee.xml", "uac-accept-reinvite.xml", 20, 10))?;
        // The caller on TCP (the core stays on UDP: its target says udp).
        run_calls(&lab, &Calls::inbound("uas-reinvite-nosdp.xml", "uac-reinvite.xml", 20, 10).caller_over("t1"))?;
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
            &lab,
            &lab.ext,
            "phone",
            &[
                "-sf",
                &scenario("phone-register-uas.xml").to_string_lossy(),
                "-oocsf",
                &scenario("phone-incoming-call.xml").to_string_lossy(),
                "-t",
                transport,
                "-i",
                EXT_PEER,
                "-p",
                "5060",
                "-s",
                "alice",
                &format!("{SBC_EXT}:5060"),
                "-m",
                "1",
                "-timeout",
                "60s",
            ],
        )?;
        std::thread::sleep(Duration::from_millis(1500));
        let core = spawn_sipp(
            &lab,
            &lab.core,
            "core-caller",
            &[
                "-sf",
                &scenario("core-call-user.xml").to_string_lossy(),
                "-t",
                transport,
                "-i",
                CORE,
                "-p",
                "5072",
                "-s",
                "alice",
                &format!("{CORE}:{CORE_PORT}"),
                "-m",
                "1",
                "-d",
                "200",
                "-timeout",
                "30s",
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

#[test]
fn refer_and_notify_cross_the_sbc_with_refer_to_pointed_at_it() -> Result<()> {
    if !privileged("refer") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbl7", "refer")?;
    let _sbc = lab.start_sbc(no_probe())?;
    // The core (callee) transfers the caller: REFER with Refer-To at the core's own address;
    // the caller fails the call unless it arrives pointed at the SBC (203.0.113.1:5060), then
    // answers 202, sends the NOTIFY (message/sipfrag) and hangs up.
    with_captures(&lab, 20, || run_calls(&lab, &Calls::inbound("uas-refer-nosdp.xml", "uac-accept-refer.xml", 10, 5)))?;
    Ok(())
}
