//! The trunk allowlist in the running SBC: the XDP program attached in native mode on the SBC's
//! external veth, the same list enforced in userspace, reloads under load. A listed carrier at
//! 203.0.113.10 (and 2001:db8:1::10); an unlisted attacker at 203.0.113.66 (2001:db8:1::66) on
//! the same link. The caller-ID policy per provider: the core's calls out to the carrier
//! (made IN/OUT with `cli_allowed=N` and its own number) pass with that number and are refused
//! with 403 with any other, nothing of them reaching the carrier.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use sbc_lab::calls::{Calls, capture_both, run_calls, start_calls};
use sbc_lab::{EXT_PEER, Lab, Proc, SBC_EXT, lab_lock, privileged, sbc_cli, send_udp, sipp_stats, stat, try_tcp};

const ATTACKER: &str = "203.0.113.66";
const EXT6: &str = "2001:db8:1::10";
const ATTACKER6: &str = "2001:db8:1::66";
const SBC_EXT6: &str = "2001:db8:1::1";
/// Media anchored: the core's callee answers with SDP (uas-core.xml) and the leak check covers it.
const MEDIA: &str = "[media]\nenabled = true\nports = \"40000-40999\"\nworkers = 1\n";

fn options(from: &str) -> String {
    let from = if from.contains(':') { format!("[{from}]") } else { from.to_string() };
    format!(
        "OPTIONS sip:probe@{SBC_EXT} SIP/2.0\r\nVia: SIP/2.0/UDP {from}:5099;branch=z9hG4bK-probe\r\nFrom: <sip:x@{from}>;tag=1\r\n\
         To: <sip:probe@{SBC_EXT}>\r\nCall-ID: probe-{from}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

fn allowlist(entries: &[(&str, &str, u32, &str)]) -> String {
    let mut s = String::from("# sbc-allowlist v1\n# source: lab\n");
    for (i, (prefix, dir, prov, name)) in entries.iter().enumerate() {
        s.push_str(&format!("{prefix} {dir} {prov} \"{name}\" {} ip\n", i + 1));
    }
    s
}

/// The lab with the attacker's and the IPv6 addresses, and an SBC filtering its trunk in XDP.
fn trunk_lab(prefix: &str, test: &str) -> Result<(Lab, Proc)> {
    trunk_lab_with(prefix, test, "")
}

/// As [`trunk_lab`], with more `[trunk]` keys.
fn trunk_lab_with(prefix: &str, test: &str, more_trunk: &str) -> Result<(Lab, Proc)> {
    let lab = Lab::new(prefix, test)?;
    lab.ext.ip(&["addr", "add", &format!("{ATTACKER}/24"), "dev", "e0"])?;
    Lab::enable_ipv6(&lab.ext, "e0")?;
    Lab::enable_ipv6(&lab.sbc, "x0")?;
    for (ns, ifname, addr) in [(&lab.ext, "e0", EXT6), (&lab.ext, "e0", ATTACKER6), (&lab.sbc, "x0", SBC_EXT6)] {
        ns.ip(&["-6", "addr", "add", &format!("{addr}/64"), "dev", ifname, "nodad"])?;
    }
    std::fs::write(
        lab.dir.join("allow.txt"),
        allowlist(&[("203.0.113.10/32", "IN", 7, "Carrier"), ("2001:db8:1::10/128", "IN", 7, "Carrier")]),
    )?;
    let listen =
        format!("udp = [\"{SBC_EXT}:5060\", \"[{SBC_EXT6}]:5060\"]\ntcp = [\"{SBC_EXT}:5060\", \"[{SBC_EXT6}]:5060\"]");
    let extra = format!(
        "[probe]\ninterval_ms = 0\n{MEDIA}[trunk]\nallowlist = \"{}\"\ninterface = \"x0\"\nxdp_mode = \"native\"\n{more_trunk}",
        lab.dir.join("allow.txt").display()
    );
    let sbc = lab.start_sbc_listening(&listen, true, &extra)?;
    ensure!(sbc.log_text().contains("XDP filter attached"), "XDP not attached:\n{}", sbc.log_text());
    Ok((lab, sbc))
}

fn stats(lab: &Lab) -> Result<String> {
    let sock = lab.admin_socket();
    let (ok, text) = sbc_cli(&["stats", "--socket", &sock.to_string_lossy()])?;
    ensure!(ok, "sbc stats failed: {text}");
    Ok(text)
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)), port)
}

#[test]
fn listed_carrier_calls_complete_and_unlisted_sources_die_in_xdp() -> Result<()> {
    if !privileged("trunk_xdp") {
        return Ok(());
    }
    let _g = lab_lock();
    let (lab, sbc) = trunk_lab("sbt1", "trunk_xdp")?;
    // The listed carrier's calls complete.
    run_calls(&lab, &Calls::inbound("uas-core.xml", "uac.xml", 20, 10))?;
    let before = stats(&lab)?;
    // The attacker: UDP and TCP to the trunk port, over IPv4 and IPv6.
    send_udp(&lab.ext, ATTACKER, addr(SBC_EXT, 5060), &options(ATTACKER), 200, 2000)?;
    send_udp(&lab.ext, ATTACKER6, addr(SBC_EXT6, 5060), &options(ATTACKER6), 100, 2000)?;
    let connected =
        try_tcp(&lab.ext, ATTACKER, addr(SBC_EXT, 5060), 3)? + try_tcp(&lab.ext, ATTACKER6, addr(SBC_EXT6, 5060), 3)?;
    ensure!(connected == 0, "{connected} TCP connections from the unlisted source got through");
    // Not a protected port: untouched.
    send_udp(&lab.ext, ATTACKER, addr(SBC_EXT, 9999), "hello", 50, 2000)?;
    // The listed carrier's IPv6 address reaches the proxy.
    send_udp(&lab.ext, EXT6, addr(SBC_EXT6, 5060), &options(EXT6), 10, 2000)?;
    std::thread::sleep(Duration::from_millis(300));
    let after = stats(&lab)?;
    let d = |name: &str| stat(&after, name).saturating_sub(stat(&before, name));
    ensure!(d("xdp.drop_not_allowed") >= 300 + 6, "XDP drops: {} (want ≥ 306)\n{after}", d("xdp.drop_not_allowed"));
    ensure!(d("xdp.pass_not_protected") >= 50, "unprotected port: {}\n{after}", d("xdp.pass_not_protected"));
    ensure!(
        d("sip.requests_in") == 10,
        "the proxy saw {} requests (want the 10 listed IPv6 OPTIONS)\n{after}",
        d("sip.requests_in")
    );
    ensure!(d("userspace.dropped_not_listed") == 0, "userspace had to drop: XDP let something through\n{after}");
    let log = sbc.log_text();
    ensure!(!log.contains(ATTACKER) && !log.contains(ATTACKER6), "the SBC logged the attacker:\n{log}");
    Ok(())
}

#[test]
fn reload_under_load_loses_no_call_and_admits_nothing_unlisted() -> Result<()> {
    if !privileged("trunk_reload") {
        return Ok(());
    }
    let _g = lab_lock();
    let (lab, sbc) = trunk_lab("sbt2", "trunk_reload")?;
    let sock = lab.admin_socket().to_string_lossy().into_owned();
    let file = lab.dir.join("allow.txt");
    // Two lists that both admit the carrier, through different prefixes and providers.
    let a = allowlist(&[("203.0.113.10/32", "IN", 7, "Carrier"), ("198.51.100.0/24", "IN", 9, "Other")]);
    let b = allowlist(&[("203.0.113.8/29", "IN/OUT", 8, "Carrier-B"), ("2001:db8:1::10/128", "IN", 7, "Carrier")]);
    let before = stats(&lab)?;
    let (res, cap) = capture_both(&lab, || -> Result<u32> {
        std::thread::scope(|s| -> Result<u32> {
            let calls = s.spawn(|| run_calls(&lab, &Calls::inbound("uas-core.xml", "uac.xml", 200, 25)));
            let flood = s.spawn(|| send_udp(&lab.ext, ATTACKER, addr(SBC_EXT, 5060), &options(ATTACKER), 2000, 250));
            let mut reloads = 0;
            for i in 0..20 {
                std::thread::sleep(Duration::from_millis(300));
                std::fs::write(&file, if i % 2 == 0 { &b } else { &a })?;
                if i % 4 == 3 {
                    // SIGHUP half the time, the admin command otherwise.
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(sbc.pid().unwrap_or(0) as i32),
                        nix::sys::signal::Signal::SIGHUP,
                    )?;
                } else {
                    let (ok, text) = sbc_cli(&["allowlist", "reload", "--socket", &sock])?;
                    ensure!(ok, "reload {i} failed: {text}");
                }
                reloads += 1;
            }
            // A broken file is refused and the running list stays.
            std::fs::write(&file, "# sbc-allowlist v1\nnot-a-prefix IN 1 \"x\" 1 ip\n")?;
            let (ok, text) = sbc_cli(&["allowlist", "reload", "--socket", &sock])?;
            ensure!(!ok && text.contains("line 2"), "a broken allowlist was not refused: {text}");
            let (ok, shown) = sbc_cli(&["allowlist", "show", "--socket", &sock])?;
            ensure!(ok && shown.contains("203.0.113."), "the previous list is gone: {shown}");
            calls.join().map_err(|_| anyhow::anyhow!("call thread panicked"))??;
            flood.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
            Ok(reloads)
        })
    })?;
    let reloads = res?;
    let after = stats(&lab)?;
    let d = |name: &str| stat(&after, name).saturating_sub(stat(&before, name));
    ensure!(d("xdp.drop_not_allowed") >= 2000, "XDP drops {} < 2000 flood packets\n{after}", d("xdp.drop_not_allowed"));
    ensure!(d("userspace.dropped_not_listed") == 0, "something unlisted passed XDP\n{after}");
    // Nothing of the attacker reached the core: it is the only source of OPTIONS.
    let leaked = cap.internal.iter().filter(|p| p.payload.starts_with(b"OPTIONS ")).count();
    ensure!(leaked == 0, "{leaked} attacker OPTIONS reached the core");
    let report = cap.leak_report();
    ensure!(report.secrets.len() >= 200, "too few core identifiers to look for: {}", report.secrets.len());
    ensure!(
        report.leaks.is_empty(),
        "{} leaks, first:\n{}",
        report.leaks.len(),
        report.leaks.first().map_or("", |l| l.at.as_str())
    );
    eprintln!("200 calls, {reloads} reloads, {} flood packets dropped in XDP", d("xdp.drop_not_allowed"));
    Ok(())
}

#[test]
fn without_xdp_the_userspace_filter_still_drops_unlisted_sources() -> Result<()> {
    if !privileged("trunk_userspace") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbt3", "trunk_userspace")?;
    lab.ext.ip(&["addr", "add", &format!("{ATTACKER}/24"), "dev", "e0"])?;
    std::fs::write(lab.dir.join("allow.txt"), allowlist(&[("203.0.113.10/32", "IN", 7, "Carrier")]))?;
    let extra = format!("[probe]\ninterval_ms = 0\n[trunk]\nallowlist = \"{}\"\n", lab.dir.join("allow.txt").display());
    let sbc = lab.start_sbc(&extra)?;
    ensure!(sbc.log_text().contains("userspace only"), "no warning about the missing XDP filter:\n{}", sbc.log_text());
    let before = stats(&lab)?;
    send_udp(&lab.ext, ATTACKER, addr(SBC_EXT, 5060), &options(ATTACKER), 100, 2000)?;
    send_udp(&lab.ext, EXT_PEER, addr(SBC_EXT, 5060), &options(EXT_PEER), 5, 2000)?;
    std::thread::sleep(Duration::from_millis(300));
    let after = stats(&lab)?;
    let d = |name: &str| stat(&after, name).saturating_sub(stat(&before, name));
    ensure!(d("userspace.dropped_not_listed") == 100, "userspace drops {}\n{after}", d("userspace.dropped_not_listed"));
    ensure!(d("sip.requests_in") == 5, "requests in {}\n{after}", d("sip.requests_in"));
    Ok(())
}

/// The core calls out to the carrier (sipp: core → SBC → carrier at 203.0.113.10, the Request-URI
/// naming the carrier's address), the carrier allowing no caller ID but its own number: 5 calls
/// as that number complete and reach the carrier with it in From and P-Asserted-Identity; 5 as
/// `caller` get 403 on the core's side and not one INVITE of them reaches the carrier (both
/// checked on the SBC's captures); the counters say so.
#[test]
fn the_cores_calls_to_a_provider_carry_its_number_or_are_refused_with_403() -> Result<()> {
    if !privileged("trunk_cid") {
        return Ok(());
    }
    let _g = lab_lock();
    let (lab, _sbc) = trunk_lab("cid1", "trunk_cid")?;
    cid_allowlist(&lab)?;

    // The provider's own number (+74951815283; the file has it without +): completes unchanged.
    let (res, cap) =
        capture_both(&lab, || run_calls(&lab, &Calls::outbound("uas-nosdp.xml", "uac-nosdp-cli.xml", 5, 5)))?;
    res?;
    let out = invites(&cap.external);
    ensure!(out.len() >= 5, "{} INVITEs reached the carrier, want 5", out.len());
    carries(&out, "+74951815283")?;
    let before = stats(&lab)?;

    // Another caller ID: 403 to the core, nothing to the carrier.
    let (res, cap) = capture_both(&lab, || -> Result<sbc_lab::SippStats> {
        let (mut uac, mut uas) = start_calls(&lab, &Calls::outbound("uas-nosdp.xml", "uac-nosdp.xml", 5, 5))?;
        uac.wait(Duration::from_secs(60))?;
        uas.stop();
        Ok(sipp_stats(&uac.log_text()))
    })?;
    let st = res?;
    ensure!(st.successful == 0 && st.failed == 5, "the core's sipp: {st:?} (want 5 failed)");
    let out = invites(&cap.external);
    ensure!(out.is_empty(), "{} INVITEs with a foreign caller ID reached the carrier:\n{out:#?}", out.len());
    let refused: std::collections::HashSet<String> = cap
        .internal
        .iter()
        .filter(|p| p.payload.starts_with(b"SIP/2.0 403 Caller ID not allowed by provider\r\n"))
        .filter_map(|p| {
            let m = String::from_utf8_lossy(&p.payload).into_owned();
            m.lines().find(|l| l.starts_with("Call-ID: ")).map(str::to_owned)
        })
        .collect();
    ensure!(refused.len() == 5, "403s on the core's side for {} calls, want 5: {refused:?}", refused.len());
    let after = stats(&lab)?;
    let d = |name: &str| stat(&after, name).saturating_sub(stat(&before, name));
    ensure!(d("trunk.caller_id_rejected") == 5, "trunk.caller_id_rejected +{}\n{after}", d("trunk.caller_id_rejected"));
    ensure!(stat(&before, "trunk.caller_id_matched") == 5, "trunk.caller_id_matched\n{before}");
    Ok(())
}

/// The carrier made IN/OUT with `cli_allowed=N` and its number 74951815283, by a reload.
fn cid_allowlist(lab: &Lab) -> Result<()> {
    let mut list =
        allowlist(&[("203.0.113.10/32", "IN/OUT", 7, "Carrier"), ("2001:db8:1::10/128", "IN", 7, "Carrier")]);
    list.push_str("provider 7 cli_allowed=N caller_id=74951815283\n");
    std::fs::write(lab.dir.join("allow.txt"), list)?;
    let sock = lab.admin_socket().to_string_lossy().into_owned();
    let (ok, text) = sbc_cli(&["allowlist", "reload", "--socket", &sock])?;
    ensure!(ok, "reload: {text}");
    Ok(())
}

fn invites(pkts: &[sbc_lab::pcap::Packet]) -> Vec<String> {
    pkts.iter()
        .filter(|p| p.payload.starts_with(b"INVITE "))
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

/// Every INVITE has `number` as the user of its From and P-Asserted-Identity.
fn carries(invites: &[String], number: &str) -> Result<()> {
    let want = format!("<sip:{number}@");
    for m in invites {
        let line = |name: &str| m.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_string();
        ensure!(
            line("From: ").contains(&want) && line("P-Asserted-Identity: ").contains(&want),
            "the carrier got another caller ID than {number}:\n{m}"
        );
    }
    Ok(())
}

/// `caller_id = "replace"`: the core's calls as `caller` to the same carrier complete, and the
/// carrier's capture shows its own number in From and P-Asserted-Identity, the From tag there.
#[test]
fn with_replace_the_provider_receives_its_own_number_instead() -> Result<()> {
    if !privileged("trunk_cid_replace") {
        return Ok(());
    }
    let _g = lab_lock();
    let (lab, _sbc) = trunk_lab_with("cid2", "trunk_cid_replace", "caller_id = \"replace\"\n")?;
    cid_allowlist(&lab)?;
    let (res, cap) = capture_both(&lab, || run_calls(&lab, &Calls::outbound("uas-nosdp.xml", "uac-nosdp.xml", 5, 5)))?;
    res?;
    let out = invites(&cap.external);
    ensure!(out.len() >= 5, "{} INVITEs reached the carrier, want 5", out.len());
    carries(&out, "74951815283")?;
    ensure!(out.iter().all(|m| m.contains(">;tag=")), "a From lost its tag:\n{out:#?}");
    let st = stats(&lab)?;
    ensure!(stat(&st, "trunk.caller_id_replaced") == 5, "trunk.caller_id_replaced\n{st}");
    ensure!(stat(&st, "trunk.caller_id_rejected") == 0, "trunk.caller_id_rejected\n{st}");
    Ok(())
}
