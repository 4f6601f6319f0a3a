//! IPv6 end to end and IPv4↔IPv6 interworking in the lab: phones and carriers on IPv6 outside
//! (2001:db8:1::/64) and an IPv4-only core inside, then the reverse (IPv4 outside, an IPv6-only
//! core on fd00:99::/64), with real sipp peers, Kamailio as the registrar, the XDP trunk filter
//! keyed by an IPv6 prefix, and tcpdump on both SBC veths. The leak check runs both ways: no
//! address, port or identifier of the core and no address of the inside at all in the external
//! capture; no address of the outside (its peers', the SBC's own external ones, any address of
//! its network) in what the SBC sends the core.
//!
//! Every call carries SDP on both sides (the core's `-core` scenarios, `uac.xml`/`uas.xml` and
//! the registered phone's SDP outside) and the SBC anchors the media (`[media] enabled`): the
//! relay faces each side in that side's family, so the SDP crosses families (`c=IN IP6` outside
//! ↔ `c=IN IP4` inside, or the reverse) and the leak check covers it both ways: the core's
//! address, `o=`, `s=` and media ports in no SDP sent outside, the outside's addresses and media
//! ports in no SDP sent to the core. RTP played by the caller and echoed by the core crosses the
//! relay both ways and is counted on both veths, in each family. Only the negative control runs
//! with media off, to show the inward check finds the caller's SDP.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use anyhow::{Result, ensure};
use sbc_lab::calls::{
    Calls, Captured, capture_both, run_calls, sipp_ok, spawn_core_caller, spawn_phone, spawn_sipp, start_kamailio,
};
use sbc_lab::pcap::{self, L4, Packet};
use sbc_lab::{
    Addrs, CORE_HOST, CORE_PORT, CORE_UA, Lab, Proc, V6_INSIDE, V6_OUTSIDE, core_secrets, hostport, inside_leaks,
    lab_lock, leaks, outside_secrets, privileged, sbc_cli, scenario, sdp_port_leaks, send_udp, stat, try_tcp,
};

/// The relay: 500 port pairs, one worker.
const MEDIA: &str = "[media]\nenabled = true\nports = \"40000-40999\"\nworkers = 1\n";

/// An unlisted source on the carrier's link, outside the allowlisted prefix.
const ATTACKER6: &str = "2001:db8:1::66";
/// The allowlisted carrier prefix: 2001:db8:1::10 – ::1f (the phone and carrier at ::10).
const CARRIER_PREFIX: &str = "2001:db8:1::10/124";

/// The networks of each side as text: no address of the one may appear on the other side.
fn prefixes(a: &Addrs) -> (&'static str, &'static str) {
    // (outside, inside)
    if a.ext_peer.contains(':') { ("2001:db8:1:", "10.99.0.") } else { ("203.0.113.", "fd00:99:") }
}

/// Both directions of the leak check on one capture; returns (outward secrets, inward secrets)
/// looked for. `min_core` is the fewest core identifiers the check must have had to look for.
fn no_leaks_either_way(lab: &Lab, cap: &Captured, min_core: usize) -> Result<(usize, usize)> {
    let a = lab.addrs;
    let (outside, inside) = prefixes(&a);
    let sbc_int = a.sbc_int_ip().to_string();
    let mut out_secrets = core_secrets(&cap.internal, a.core_ip(), &[&sbc_int, inside]);
    out_secrets.retain(|s| !s.is_empty());
    ensure!(out_secrets.len() >= min_core, "too few core identifiers to look for: {out_secrets:?}");
    let out = leaks(&cap.external, &out_secrets);
    ensure!(out.is_empty(), "{} leaks outward, first:\n{}", out.len(), out.first().map_or("", |l| l.at.as_str()));
    let in_secrets = outside_secrets(&[a.ext_peer_ip(), a.sbc_ext_ip()], &[outside]);
    let inward = inside_leaks(&cap.internal, a.sbc_int_ip(), &in_secrets);
    ensure!(
        inward.is_empty(),
        "{} leaks inward, first:\n{}",
        inward.len(),
        inward.first().map_or("", |l| l.at.as_str())
    );
    let from_sbc = cap.internal.iter().filter(|p| p.src.ip() == a.sbc_int_ip()).count();
    ensure!(from_sbc > 0, "the SBC sent nothing to the core: the inward check saw nothing");
    // The SDP: the media ports of each side in no SDP the SBC sent the other, and every SDP the
    // SBC sent names only its own address on that side, in that side's family.
    let mut ports = sdp_port_leaks(&cap.internal, a.core_ip(), &cap.external, a.sbc_ext_ip());
    ports.extend(sdp_port_leaks(&cap.external, a.ext_peer_ip(), &cap.internal, a.sbc_int_ip()));
    ensure!(
        ports.is_empty(),
        "{} media ports leaked, first:\n{}",
        ports.len(),
        ports.first().map_or("", |l| l.at.as_str())
    );
    for (capture, sbc) in [(&cap.external, a.sbc_ext_ip()), (&cap.internal, a.sbc_int_ip())] {
        let bodies = pcap::sdp_bodies(capture, sbc);
        ensure!(!bodies.is_empty(), "the SBC sent no SDP from {sbc}: the SDP check saw nothing");
        for body in &bodies {
            sdp_names_only(body, sbc)?;
        }
    }
    Ok((out_secrets.len(), in_secrets.len()))
}

/// `IN IP4 a.b.c.d` or `IN IP6 x::y`: an SDP address of `ip`'s family (RFC 8866 §5.7).
fn sdp_address(ip: IpAddr) -> String {
    format!("IN IP{} {ip}", if ip.is_ipv6() { 6 } else { 4 })
}

/// Every `c=` and `o=` line of `body` names `sbc` in its family.
fn sdp_names_only(body: &str, sbc: IpAddr) -> Result<()> {
    let want = sdp_address(sbc);
    for line in body.lines().filter(|l| l.starts_with("c=") || l.starts_with("o=")) {
        ensure!(line.ends_with(&want), "{line:?} does not name {want:?}:\n{body}");
    }
    Ok(())
}

fn allowlist(entries: &[(&str, &str, u32, &str)]) -> String {
    let mut s = String::from("# sbc-allowlist v1\n# source: lab\n");
    for (i, (prefix, dir, prov, name)) in entries.iter().enumerate() {
        s.push_str(&format!("{prefix} {dir} {prov} \"{name}\" {} ip\n", i + 1));
    }
    s
}

fn stats(lab: &Lab) -> Result<String> {
    let (ok, text) = sbc_cli(&["stats", "--socket", &lab.admin_socket().to_string_lossy()])?;
    ensure!(ok, "sbc stats failed: {text}");
    Ok(text)
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)), port)
}

fn options(from: &str, to: &str) -> String {
    let (from, to) = (hostport(from, 5099), hostport(to, 5060));
    format!(
        "OPTIONS sip:probe@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-probe\r\nFrom: <sip:x@{from}>;tag=1\r\n\
         To: <sip:probe@{to}>\r\nCall-ID: probe@{from}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

/// IPv6 outside, IPv4 core; the XDP filter on x0 admits only the carrier's /124.
fn v6_trunk_lab(prefix: &str, test: &str) -> Result<(Lab, Proc)> {
    let lab = Lab::with_addrs(prefix, test, V6_OUTSIDE)?;
    lab.ext.addr("e0", &format!("{ATTACKER6}/64"))?;
    std::fs::write(lab.dir.join("allow.txt"), allowlist(&[(CARRIER_PREFIX, "IN", 7, "Carrier6")]))?;
    let extra = format!(
        "[probe]\ninterval_ms = 0\n{MEDIA}[trunk]\nallowlist = \"{}\"\ninterface = \"x0\"\nxdp_mode = \"native\"\n",
        lab.dir.join("allow.txt").display()
    );
    let sbc = lab.start_sbc(&extra)?;
    ensure!(sbc.log_text().contains("XDP filter attached"), "XDP not attached:\n{}", sbc.log_text());
    Ok((lab, sbc))
}

#[test]
fn ipv6_carrier_calls_an_ipv4_core_both_ways_while_xdp_drops_an_unlisted_ipv6_source() -> Result<()> {
    if !privileged("ipv6_calls_xdp") {
        return Ok(());
    }
    let _g = lab_lock();
    let (lab, sbc) = v6_trunk_lab("sb6a", "ipv6_calls_xdp")?;
    let before = stats(&lab)?;
    let sbc_ext = V6_OUTSIDE.sbc_ext;
    let (res, cap) = capture_both(&lab, || -> Result<u32> {
        std::thread::scope(|s| -> Result<u32> {
            let calls = s.spawn(|| -> Result<()> {
                run_calls(&lab, &Calls::inbound("uas-core.xml", "uac.xml", 200, 50))?;
                run_calls(&lab, &Calls::outbound("uas.xml", "uac-core-target.xml", 200, 50))
            });
            // The unlisted source, during the calls: UDP to the SIP port, then TCP connects.
            send_udp(&lab.ext, ATTACKER6, addr(sbc_ext, 5060), &options(ATTACKER6, sbc_ext), 1000, 250)?;
            let connected = try_tcp(&lab.ext, ATTACKER6, addr(sbc_ext, 5060), 3)?;
            calls.join().map_err(|_| anyhow::anyhow!("call thread panicked"))??;
            Ok(connected)
        })
    })?;
    let connected = res?;
    ensure!(connected == 0, "{connected} TCP connections from the unlisted IPv6 source got through");
    let after = stats(&lab)?;
    let d = |name: &str| stat(&after, name).saturating_sub(stat(&before, name));
    ensure!(
        d("xdp.drop_not_allowed") >= 1003,
        "XDP drops {} < 1000 datagrams + 3 SYNs\n{after}",
        d("xdp.drop_not_allowed")
    );
    ensure!(d("userspace.dropped_not_listed") == 0, "something unlisted passed XDP\n{after}");
    ensure!(d("xdp.pass_allowed") > 0, "no listed packet counted: the filter saw no carrier traffic\n{after}");
    ensure!(!sbc.log_text().contains(ATTACKER6), "the SBC saw the attacker:\n{}", sbc.log_text());
    let options_in = cap.internal.iter().filter(|p| p.payload.starts_with(b"OPTIONS ")).count();
    ensure!(options_in == 0, "{options_in} attacker OPTIONS reached the core");
    let (outward, inward) = no_leaks_either_way(&lab, &cap, 400)?;
    eprintln!(
        "IPv6 outside / IPv4 core: 200 calls in + 200 calls out ok, 0 failed; XDP dropped {} from {ATTACKER6}, passed {} \
         listed; leak check: {outward} core strings outside, {inward} outside strings inside, 0 found; {} external and \
         {} internal packets",
        d("xdp.drop_not_allowed"),
        d("xdp.pass_allowed"),
        cap.external.len(),
        cap.internal.len()
    );
    Ok(())
}

/// A phone on IPv6 registers through the SBC with the IPv4 Kamailio registrar, and the core's
/// call to it reaches it on the flow it registered from.
fn register_then_call(prefix: &str, test: &str, transport: &str) -> Result<()> {
    let _g = lab_lock();
    let lab = Lab::with_addrs(prefix, test, V6_OUTSIDE)?;
    let _k = start_kamailio(&lab)?;
    let _sbc = lab.start_sbc(&format!("[probe]\ninterval_ms = 1000\ntimeout_ms = 1000\n{MEDIA}"))?;
    let (res, cap) = capture_both(&lab, || -> Result<()> {
        let phone = spawn_phone(&lab, transport, "alice")?;
        std::thread::sleep(Duration::from_millis(1500));
        let core = spawn_core_caller(&lab, transport, "alice")?;
        sipp_ok(core, Duration::from_secs(40), 1)?;
        sipp_ok(phone, Duration::from_secs(70), 1)?;
        Ok(())
    })?;
    res?;
    let (outward, inward) = no_leaks_either_way(&lab, &cap, 5)?;
    let core = core_secrets(&cap.internal, lab.addrs.core_ip(), &[]);
    for name in [CORE_HOST, CORE_UA] {
        ensure!(core.iter().any(|s| s == name), "the leak check did not look for {name:?}");
    }
    eprintln!(
        "IPv6 phone over {transport}: REGISTER + call from the core ok; {outward}/{inward} strings checked, 0 leaks"
    );
    Ok(())
}

#[test]
fn ipv6_phone_registers_with_an_ipv4_core_and_takes_its_call_over_udp() -> Result<()> {
    if !privileged("ipv6_register_udp") {
        return Ok(());
    }
    register_then_call("sb6b", "ipv6_register_udp", "u1")
}

#[test]
fn ipv6_phone_registers_with_an_ipv4_core_and_takes_its_call_over_tcp() -> Result<()> {
    if !privileged("ipv6_register_tcp") {
        return Ok(());
    }
    register_then_call("sb6c", "ipv6_register_tcp", "t1")
}

/// The reverse: IPv4 carriers outside, an IPv6-only core inside.
#[test]
fn ipv4_carrier_calls_an_ipv6_core_both_ways_and_nothing_crosses_families() -> Result<()> {
    if !privileged("ipv6_core") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::with_addrs("sb6d", "ipv6_core", V6_INSIDE)?;
    let _sbc = lab.start_sbc(&format!("[probe]\ninterval_ms = 0\n{MEDIA}"))?;
    let (res, cap) = capture_both(&lab, || -> Result<()> {
        run_calls(&lab, &Calls::inbound("uas-core.xml", "uac.xml", 50, 50))?;
        run_calls(&lab, &Calls::outbound("uas.xml", "uac-core-target.xml", 50, 50))
    })?;
    res?;
    let (outward, inward) = no_leaks_either_way(&lab, &cap, 100)?;
    eprintln!("IPv4 outside / IPv6 core: 50 calls in + 50 out ok; {outward}/{inward} strings checked, 0 leaks");
    Ok(())
}

/// The inward check must be able to fail: with `[media]` off the SBC forwards SDP untouched, so
/// an outside caller whose INVITE carries SDP puts its IPv6 address inside, in the `o=` and `c=`
/// lines, and the same check finds it there, and only there. (The core answers without SDP:
/// `uas-nosdp.xml`, so that the only SDP inside is the caller's.)
#[test]
fn inward_leak_check_finds_the_ipv6_caller_in_its_sdp() -> Result<()> {
    if !privileged("ipv6_leak_check_can_fail") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::with_addrs("sb6e", "ipv6_leak_check_can_fail", V6_OUTSIDE)?;
    let _sbc = lab.start_sbc("[probe]\ninterval_ms = 0\n")?;
    let (res, cap) = capture_both(&lab, || run_calls(&lab, &Calls::inbound("uas-nosdp.xml", "uac.xml", 5, 10)))?;
    res?;
    let err = no_leaks_either_way(&lab, &cap, 5).err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(err.contains("leaks inward"), "expected the inward check to fire, got {err:?}");
    let (outside, _) = prefixes(&lab.addrs);
    let secrets = outside_secrets(&[lab.addrs.ext_peer_ip(), lab.addrs.sbc_ext_ip()], &[outside]);
    let found = inside_leaks(&cap.internal, lab.addrs.sbc_int_ip(), &secrets);
    ensure!(
        found.iter().any(|l| l.secret == V6_OUTSIDE.ext_peer),
        "the caller's address not among {} leaks",
        found.len()
    );
    for l in &found {
        let line = l.at.split(" in \"").nth(1).unwrap_or_default();
        ensure!(line.starts_with("o=") || line.starts_with("c="), "a leak outside the SDP: {}", l.at);
    }
    Ok(())
}

/// sipp's sample: 236 PCMA packets of 252 octets over 7 s.
const SAMPLE: &str = "/usr/share/sip-tester/g711a.pcap";
const SAMPLE_PACKETS: usize = 236;
/// The media ports of the caller (outside) and of the core's echoing callee.
const CALLER_MEDIA: u16 = 6000;
const CORE_MEDIA: u16 = 16000;
/// The relay's range in [`MEDIA`].
const RELAY: std::ops::RangeInclusive<u16> = 40000..=40999;

/// An RTP or RTCP datagram (RFC 3550 version 2), not SIP.
fn is_rtp(p: &Packet) -> bool {
    p.l4 == L4::Udp && p.payload.len() >= 12 && p.payload.first().is_some_and(|b| b >> 6 == 2)
}

/// Three calls from outside to the core across families: the caller plays sipp's sample from
/// its media port, the core's callee echoes every packet (`-rtp_echo`). Counted on both veths:
/// what the phone played, what the relay sent the core (in the core's family, from the relay's
/// internal address and ports, to the core's SDP port), the echo, and what the relay sent back
/// (in the phone's family, to the phone's SDP port); then the leak check both ways.
fn rtp_across_families(prefix: &str, test: &str, addrs: Addrs) -> Result<()> {
    let _g = lab_lock();
    let lab = Lab::with_addrs(prefix, test, addrs)?;
    std::fs::copy(SAMPLE, lab.dir.join("g711a.pcap")).context("sipp's sample pcap (package sip-tester)")?;
    let _sbc = lab.start_sbc(&format!("[probe]\ninterval_ms = 0\n{MEDIA}"))?;
    const CALLS: usize = 3;
    let (res, cap) = capture_both(&lab, || -> Result<()> {
        let (uas_sf, uac_sf) = (
            scenario("uas-core.xml").to_string_lossy().into_owned(),
            scenario("uac-rtp.xml").to_string_lossy().into_owned(),
        );
        let (n, core_port, core_media, caller_media) =
            (CALLS.to_string(), CORE_PORT.to_string(), CORE_MEDIA.to_string(), CALLER_MEDIA.to_string());
        let uas = spawn_sipp(
            &lab,
            &lab.core,
            "callee",
            &[
                "-sf",
                &uas_sf,
                "-t",
                "u1",
                "-i",
                addrs.core,
                "-p",
                &core_port,
                "-m",
                &n,
                "-rtp_echo",
                "-mp",
                &core_media,
                "-timeout",
                "60s",
            ],
        )?;
        std::thread::sleep(Duration::from_millis(300));
        let target = hostport(addrs.sbc_ext, 5060);
        let uac = spawn_sipp(
            &lab,
            &lab.ext,
            "caller",
            &[
                "-sf",
                &uac_sf,
                "-t",
                "u1",
                "-i",
                addrs.ext_peer,
                "-p",
                "5062",
                "-s",
                "1000",
                &target,
                "-m",
                &n,
                "-r",
                "2",
                "-d",
                "8500",
                "-mp",
                &caller_media,
                "-timeout",
                "60s",
            ],
        )?;
        sipp_ok(uac, Duration::from_secs(60), CALLS as u64)?;
        sipp_ok(uas, Duration::from_secs(20), CALLS as u64)?;
        Ok(())
    })?;
    res?;
    let (ext, int) = (&cap.external, &cap.internal);
    let (peer, sbc_ext, sbc_int, core) = (addrs.ext_peer_ip(), addrs.sbc_ext_ip(), addrs.sbc_int_ip(), addrs.core_ip());
    let phone_to_sbc: Vec<&Packet> = ext.iter().filter(|p| is_rtp(p) && p.src.ip() == peer).collect();
    let sbc_to_core: Vec<&Packet> = int.iter().filter(|p| is_rtp(p) && p.dst.ip() == core).collect();
    let core_to_sbc: Vec<&Packet> = int.iter().filter(|p| is_rtp(p) && p.src.ip() == core).collect();
    let sbc_to_phone: Vec<&Packet> = ext.iter().filter(|p| is_rtp(p) && p.dst.ip() == peer).collect();
    let fam = |ip: IpAddr| if ip.is_ipv6() { "IPv6" } else { "IPv4" };
    eprintln!(
        "{CALLS} calls, {} outside / {} inside; RTP packets: phone→SBC {}, SBC→core {}, core→SBC (echo) {}, SBC→phone {}",
        fam(peer),
        fam(core),
        phone_to_sbc.len(),
        sbc_to_core.len(),
        core_to_sbc.len(),
        sbc_to_phone.len()
    );
    let relay_stats = stats(&lab)?;
    let media: Vec<&str> =
        relay_stats.lines().filter(|l| l.starts_with("media.") && !l.starts_with("media.call.")).collect();
    eprintln!("{}", media.join("\n"));
    ensure!(phone_to_sbc.len() == CALLS * SAMPLE_PACKETS, "the caller played {} packets", phone_to_sbc.len());
    ensure!(
        phone_to_sbc.iter().all(|p| p.dst.ip() == sbc_ext && RELAY.contains(&p.dst.port())),
        "the phone's RTP went elsewhere than the relay's external address"
    );
    ensure!(
        sbc_to_core
            .iter()
            .all(|p| p.src.ip() == sbc_int && RELAY.contains(&p.src.port()) && p.dst.port() == CORE_MEDIA),
        "RTP to the core not from the relay's internal address or not to the core's SDP port"
    );
    ensure!(
        sbc_to_phone
            .iter()
            .all(|p| p.src.ip() == sbc_ext && RELAY.contains(&p.src.port()) && p.dst.port() == CALLER_MEDIA),
        "RTP to the phone not from the relay's external address or not to the phone's SDP port"
    );
    // Under 1% lost at each hop (the lab's veths lose nothing themselves), as in the media lab.
    let kept = |out: usize, inp: usize| out * 100 >= inp * 99;
    ensure!(kept(sbc_to_core.len(), phone_to_sbc.len()), "the relay lost toward the core");
    ensure!(kept(core_to_sbc.len(), sbc_to_core.len()), "the echo lost packets");
    ensure!(kept(sbc_to_phone.len(), core_to_sbc.len()), "the relay lost toward the phone");
    // The SIP and SDP of both sides: nothing crossed (RTP left out: its payload is audio).
    let sip = |c: &[Packet]| -> Vec<Packet> { c.iter().filter(|p| !is_rtp(p)).cloned().collect() };
    let sip_only = Captured { external: sip(ext), internal: sip(int), core, sbc_external: sbc_ext };
    let (outward, inward) = no_leaks_either_way(&lab, &sip_only, 5)?;
    let after = stats(&lab)?;
    ensure!(stat(&after, "media.relay_send_dropped") == 0, "{after}");
    eprintln!("leak check: {outward} core strings outside, {inward} outside strings inside, 0 found");
    Ok(())
}

#[test]
fn rtp_from_an_ipv6_phone_crosses_the_relay_to_an_ipv4_core_and_back() -> Result<()> {
    if !privileged("ipv6_rtp_v6_outside") {
        return Ok(());
    }
    rtp_across_families("sb6f", "ipv6_rtp_v6_outside", V6_OUTSIDE)
}

#[test]
fn rtp_from_an_ipv4_phone_crosses_the_relay_to_an_ipv6_core_and_back() -> Result<()> {
    if !privileged("ipv6_rtp_v6_inside") {
        return Ok(());
    }
    rtp_across_families("sb6g", "ipv6_rtp_v6_inside", V6_INSIDE)
}
