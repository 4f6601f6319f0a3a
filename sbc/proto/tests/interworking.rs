//! IPv4/IPv6 interworking in the engine: a side may listen on both families; a peer is reached
//! from a listen address of its own family, and what the SBC writes on a flow (Via, Contact,
//! the hosts it substitutes, the Request-URI naming it) is of that flow's family, so neither
//! side is handed an address of a family it does not speak on that flow.

use std::net::SocketAddr;
use std::time::Instant;

use sbc_proto::engine::{Config, Engine, Flow, Output, Side, SideConfig, Transmit};
use sbc_proto::sip::uri::Transport;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const CORE: &str = "10.99.0.10:5070";

/// External side on 203.0.113.1 and [2001:db8::1] (advertise: the IPv4 one), IPv4 core.
fn dual_stack() -> Config {
    let mut c = Config::example();
    c.external = SideConfig {
        advertise: "203.0.113.1".into(),
        udp: vec![sa("203.0.113.1:5060"), sa("[2001:db8::1]:5060")],
        tcp: Vec::new(),
        hide: true,
        ..Config::example().external
    };
    c
}

fn from_core() -> Flow {
    Flow { side: Side::Internal, transport: Transport::Udp, local: sa("10.99.0.1:5060"), remote: sa(CORE) }
}

fn call_from_core(target: &str, n: u32) -> Vec<u8> {
    format!(
        "INVITE sip:bob@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {CORE};branch=z9hG4bKcore{n}\r\nMax-Forwards: 70\r\n\
         From: <sip:alice@10.99.0.10>;tag=c{n}\r\nTo: <sip:bob@{target}>\r\nCall-ID: {n}-1@10.99.0.10\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:alice@{CORE}>\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Everything sent to the external side.
fn sent_out(e: &mut Engine) -> Vec<Transmit> {
    let mut out = Vec::new();
    while let Some(o) = e.poll_output() {
        match o {
            Output::Transmit(t) if t.flow.side == Side::External => out.push(t),
            Output::Timeout(_) => break,
            _ => {}
        }
    }
    out
}

fn head(t: &Transmit) -> String {
    String::from_utf8_lossy(&t.data).split("\r\n\r\n").next().unwrap_or_default().to_string()
}

#[test]
fn a_dual_stack_side_reaches_each_peer_from_its_family_and_writes_that_family() {
    let now = Instant::now();
    let mut e = Engine::new(dual_stack(), now);
    e.handle_datagram(now, from_core(), &call_from_core("[2001:db8::99]:5060", 1));
    let out = sent_out(&mut e);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].flow.local, out[0].flow.remote), (sa("[2001:db8::1]:5060"), sa("[2001:db8::99]:5060")));
    let h = head(&out[0]);
    assert!(h.contains("\r\nVia: SIP/2.0/UDP [2001:db8::1]:5060;branch="), "{h}");
    assert!(h.contains("\r\nContact: <sip:") && h.contains("@[2001:db8::1]:5060>"), "{h}");
    // The core's host in From is replaced by ours: the IPv6 one on this flow.
    assert!(h.contains("\r\nFrom: <sip:alice@[2001:db8::1]>;tag="), "{h}");
    assert!(!h.contains("203.0.113.1") && !h.contains("10.99.0."), "{h}");

    e.handle_datagram(now, from_core(), &call_from_core("198.51.100.7:5060", 2));
    let out = sent_out(&mut e);
    assert_eq!((out[0].flow.local, out[0].flow.remote), (sa("203.0.113.1:5060"), sa("198.51.100.7:5060")));
    let h = head(&out[0]);
    assert!(h.contains("\r\nVia: SIP/2.0/UDP 203.0.113.1:5060;branch="), "{h}");
    assert!(h.contains("\r\nFrom: <sip:alice@203.0.113.1>;tag="), "{h}");
    assert!(!h.contains("2001:db8") && !h.contains("10.99.0."), "{h}");
}

/// A side with no address of the target's family cannot reach it: the core gets a 503 at once
/// (no datagram leaves from a socket of the wrong family, no 100 Trying first).
#[test]
fn a_target_of_a_family_the_side_lacks_gets_503() {
    let now = Instant::now();
    let mut c = Config::example();
    c.external = SideConfig {
        advertise: "2001:db8::1".into(),
        udp: vec![sa("[2001:db8::1]:5060")],
        tcp: Vec::new(),
        hide: true,
        ..Config::example().external
    };
    let mut e = Engine::new(c, now);
    e.handle_datagram(now, from_core(), &call_from_core("198.51.100.7:5060", 3));
    let mut codes = Vec::new();
    while let Some(o) = e.poll_output() {
        match o {
            Output::Transmit(t) => {
                assert_eq!(t.flow.side, Side::Internal, "sent outside: {}", head(&t));
                codes.push(String::from_utf8_lossy(&t.data[8..11]).into_owned());
            }
            Output::Timeout(_) => break,
            _ => {}
        }
    }
    assert_eq!(codes, ["503"]);
}

/// The phone outside is IPv6, the core IPv4: the phone's address and the SBC's IPv6 one are
/// nowhere in what reaches the core (its Call-ID masked, its From and To hosts and the
/// Request-URI naming the SBC's internal address); the core's answer goes back with the
/// phone's own Call-ID, From and To.
#[test]
fn a_call_from_an_ipv6_phone_reaches_an_ipv4_core_with_no_ipv6_address() {
    let now = Instant::now();
    let mut c = Config::example();
    c.external = SideConfig {
        advertise: "2001:db8::1".into(),
        udp: vec![sa("[2001:db8::1]:5060")],
        tcp: Vec::new(),
        hide: true,
        ..Config::example().external
    };
    let mut e = Engine::new(c, now);
    let phone = Flow {
        side: Side::External,
        transport: Transport::Udp,
        local: sa("[2001:db8::1]:5060"),
        remote: sa("[2001:db8::99]:5062"),
    };
    let invite = "INVITE sip:service@[2001:db8::1]:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::99]:5062;branch=z9hG4bKp1\r\n\
                  Max-Forwards: 70\r\nFrom: sipp <sip:sipp@[2001:db8::99]:5062>;tag=p1\r\n\
                  To: <sip:service@[2001:db8::1]:5060>\r\nCall-ID: 1-77@2001:db8::99\r\nCSeq: 1 INVITE\r\n\
                  Contact: <sip:sipp@[2001:db8::99]:5062>\r\nP-Asserted-Identity: <sip:sipp@[2001:db8::99]>\r\n\
                  Content-Length: 0\r\n\r\n";
    e.handle_datagram(now, phone, invite.as_bytes());
    let mut to_core = Vec::new();
    while let Some(o) = e.poll_output() {
        match o {
            Output::Transmit(t) if t.flow.side == Side::Internal => to_core.push(t),
            Output::Timeout(_) => break,
            _ => {}
        }
    }
    let h = head(&to_core[0]);
    assert!(!h.contains("2001:db8") && !h.contains('['), "{h}");
    assert!(h.starts_with("INVITE sip:service@10.99.0.1:5060 SIP/2.0\r\n"), "{h}");
    assert!(h.contains("\r\nFrom: sipp <sip:sipp@10.99.0.1>;tag=p1\r\n"), "{h}");
    assert!(h.contains("\r\nTo: <sip:service@10.99.0.1>\r\n"), "{h}");
    assert!(h.contains("\r\nP-Asserted-Identity: <sip:sipp@10.99.0.1>\r\n"), "{h}");
    let call_id = h.lines().find_map(|l| l.strip_prefix("Call-ID: ")).unwrap().to_string();
    assert!(call_id.starts_with("sbcm"), "{call_id}");
    // The core answers; the phone gets its own identifiers back.
    let ok = h
        .replacen("INVITE sip:service@10.99.0.1:5060 SIP/2.0", "SIP/2.0 200 OK", 1)
        .replace("To: <sip:service@10.99.0.1>", "To: <sip:service@10.99.0.1>;tag=core9")
        + "\r\n\r\n";
    e.handle_datagram(now, Flow { remote: sa(CORE), ..to_core[0].flow }, ok.as_bytes());
    let back = sent_out(&mut e);
    let h = head(back.last().unwrap());
    assert!(h.starts_with("SIP/2.0 200 OK"), "{h}");
    assert!(h.contains("\r\nCall-ID: 1-77@2001:db8::99\r\n"), "{h}");
    assert!(h.contains("\r\nFrom: sipp <sip:sipp@[2001:db8::99]:5062>;tag=p1\r\n"), "{h}");
    // Sent-by is the source: nothing to stamp (RFC 3261 §18.2.1).
    assert!(h.contains("\r\nVia: SIP/2.0/UDP [2001:db8::99]:5062;branch=z9hG4bKp1\r\n"), "{h}");
    assert!(!h.contains("10.99.0."), "{h}");
}
