//! The edge proxy in the lab: real sipp peers (and a Kamailio registrar) on both sides of the
//! SBC in network namespaces, tcpdump on both of the SBC's veths, and the leak check: no byte
//! captured on the external side carries the core's address, port, branches, tags or Call-IDs.
//!
//! The core's UAs send SDP in every call (the `-core` scenarios, `core-call-user.xml`), and the
//! SBC runs with `[media] enabled`: the leak check covers the SDP too (the core's address,
//! `o=` and `s=` anywhere; its media ports in any SDP the SBC sends outside). The negative
//! control runs with hiding and media off and must find the core's SDP.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use sbc_lab::calls::{
    Calls, Captured, LeakReport, Way, capture_both, run_calls, sipp_ok, spawn_core_caller, spawn_phone, start_kamailio,
};
use sbc_lab::{CORE_HOST, CORE_UA, Lab, lab_lock, privileged};

/// The `o=` username of the core's SDP (tests/peers/scenarios/*-core.xml).
const CORE_SDP_USER: &str = "corepbx-media";

/// Captures on both SBC veths around `f`, then asserts nothing of the core leaked outside, that
/// the check had at least `min_secrets` core identifiers to look for, and that `names` (what
/// the core's UAs call themselves: [`CORE_HOST`], [`CORE_UA`]) were among them.
fn with_captures(lab: &Lab, min_secrets: usize, names: &[&str], f: impl FnOnce() -> Result<()>) -> Result<usize> {
    let (res, cap) = capture_both(lab, f)?;
    res?;
    let report = no_leaks(&cap, min_secrets)?;
    for name in names {
        ensure!(report.secrets.iter().any(|s| s == name), "the leak check did not look for {name:?}");
    }
    Ok(cap.external.len())
}

fn no_leaks(cap: &Captured, min_secrets: usize) -> Result<LeakReport> {
    let report = cap.leak_report();
    ensure!(
        report.secrets.len() >= min_secrets,
        "too few core identifiers found in the internal capture: {}",
        report.secrets.len()
    );
    ensure!(
        report.leaks.is_empty(),
        "{} leaks, first:\n{}",
        report.leaks.len(),
        report.leaks.first().map_or("", |l| l.at.as_str())
    );
    Ok(report)
}

/// The relay's ports in this lab.
const MEDIA: &str = "[media]\nenabled = true\nports = \"40000-40999\"\nworkers = 1\n";

/// No OPTIONS probing, media anchored, and two engine shards: every lab here runs with its
/// messages steered across shards (`engine.workers`), the call tests with four.
fn no_probe() -> String {
    format!("[probe]\ninterval_ms = 0\n[engine]\nworkers = 2\n{MEDIA}")
}

fn no_probe_4_shards() -> String {
    format!("[probe]\ninterval_ms = 0\n[engine]\nworkers = 4\n{MEDIA}")
}

#[test]
fn calls_from_outside_reach_the_core_and_nothing_of_the_core_leaks() -> Result<()> {
    if !privileged("calls_from_outside") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbl1", "calls_from_outside")?;
    let _sbc = lab.start_sbc(&no_probe_4_shards())?;
    let packets =
        with_captures(&lab, 200, &[CORE_UA], || run_calls(&lab, &Calls::inbound("uas-core.xml", "uac.xml", 200, 40)))?;
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
    let _sbc = lab.start_sbc(&no_probe())?;
    // The core uses the SBC as outbound proxy: the Request-URI names the outside callee,
    // the packets go to the SBC's internal address (Way::Outbound).
    with_captures(&lab, 400, &[CORE_HOST, CORE_UA], || {
        run_calls(&lab, &Calls::outbound("uas.xml", "uac-core.xml", 200, 40))
    })?;
    Ok(())
}

/// The leak check itself must be able to fail: with hiding off, what the core made reaches the
/// outside and the same check finds it: in calls from the core its Call-IDs, tags, the host
/// name in its From/P-Asserted-Identity/Call-IDs and its User-Agent; in calls to the core its
/// tags and its Server header.
#[test]
fn leak_check_finds_the_core_when_hiding_is_off() -> Result<()> {
    if !privileged("leak_check_can_fail") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbl6", "leak_check_can_fail")?;
    // Media off too: the core's SDP crosses as the core wrote it.
    let _sbc = lab.start_sbc_hiding(false, "[probe]\ninterval_ms = 0\n")?;
    let batches = [
        (
            Calls::outbound("uas.xml", "uac-core.xml", 5, 10),
            &[CORE_HOST, CORE_UA, "SIPpTag00", CORE_SDP_USER, "the core's media port"][..],
        ),
        // The core only answers here: CORE_UA can only come from its Server header.
        (Calls::inbound("uas-core.xml", "uac.xml", 5, 10), &[CORE_UA, "SIPpTag01", CORE_SDP_USER][..]),
    ];
    for (calls, must) in batches {
        let (res, cap) = capture_both(&lab, || run_calls(&lab, &calls))?;
        res?;
        let err = no_leaks(&cap, 5).err().map(|e| e.to_string()).unwrap_or_default();
        ensure!(err.contains("leaks, first"), "{:?}: expected the leak check to fire, got {err:?}", calls.way);
        let report = cap.leak_report();
        let found: BTreeSet<&str> = report.leaks.iter().map(|l| l.secret.as_str()).collect();
        for &want in must {
            ensure!(
                found.iter().any(|s| s.contains(want)),
                "{:?}: nothing with {want:?} among the leaks {found:?}",
                calls.way
            );
        }
        if calls.way == Way::Outbound {
            let call_ids = found.iter().filter(|s| s.ends_with(&format!("@{CORE_HOST}"))).count();
            ensure!(call_ids >= 5, "{call_ids} of the core's 5 Call-IDs found among the leaks {found:?}");
        }
    }
    Ok(())
}

#[test]
fn bye_from_either_side_and_reinvite_cross_the_sbc() -> Result<()> {
    if !privileged("bye_and_reinvite") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbl3", "bye_and_reinvite")?;
    let _sbc = lab.start_sbc(&no_probe_4_shards())?;
    with_captures(&lab, 100, &[CORE_HOST, CORE_UA], || {
        // The core (callee) hangs up.
        run_calls(&lab, &Calls::inbound("uas-bye-core.xml", "uac-waitbye.xml", 20, 10))?;
        // The outside callee hangs up on a call from the core.
        run_calls(&lab, &Calls::outbound("uas-bye.xml", "uac-waitbye-core.xml", 20, 10))?;
        // re-INVITE from the caller (outside), then from the callee (core).
        run_calls(&lab, &Calls::inbound("uas-reinvite-core.xml", "uac-reinvite.xml", 20, 10))?;
        run_calls(&lab, &Calls::inbound("uas-reinvite-from-callee.xml", "uac-accept-reinvite.xml", 20, 10))?;
        // The caller on TCP (the core stays on UDP: its target says udp).
        run_calls(&lab, &Calls::inbound("uas-reinvite-core.xml", "uac-reinvite.xml", 20, 10).caller_over("t1"))?;
        Ok(())
    })?;
    Ok(())
}

fn register_then_call(prefix: &str, test: &str, transport: &str) -> Result<()> {
    let _g = lab_lock();
    let lab = Lab::new(prefix, test)?;
    let _k = start_kamailio(&lab)?;
    // Probing on: Kamailio answers OPTIONS (it is up before the SBC starts), so the core is up.
    let _sbc =
        lab.start_sbc(&format!("[probe]\ninterval_ms = 1000\ntimeout_ms = 1000\n[engine]\nworkers = 2\n{MEDIA}"))?;
    with_captures(&lab, 5, &[CORE_HOST, CORE_UA], || {
        let phone = spawn_phone(&lab, transport, "alice")?;
        std::thread::sleep(Duration::from_millis(1500));
        let core = spawn_core_caller(&lab, transport, "alice")?;
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
    let _sbc = lab.start_sbc(&no_probe())?;
    // The core (callee) transfers the caller: REFER with Refer-To at the core's own address;
    // the caller fails the call unless it arrives pointed at the SBC (203.0.113.1:5060), then
    // answers 202, sends the NOTIFY (message/sipfrag) and hangs up.
    with_captures(&lab, 20, &[CORE_HOST, CORE_UA], || {
        run_calls(&lab, &Calls::inbound("uas-refer-core.xml", "uac-accept-refer.xml", 10, 5))
    })?;
    Ok(())
}
