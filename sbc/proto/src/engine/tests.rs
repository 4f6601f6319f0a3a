//! Engine behaviour on a virtual clock: transactions, timers, CANCEL, failover, dialogs,
//! registrations and topology hiding, with hand-written peers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

const EXT_UA: &str = "198.51.100.7:5060";
const CORE_A: &str = "10.0.0.10:5070";
const CORE_B: &str = "10.0.0.11:5070";

fn config(cores: &[&str], probe: Option<Duration>) -> Config {
    Config {
        external: SideConfig { tcp: vec![sa("203.0.113.1:5060")], ..Config::example().external },
        internal: SideConfig {
            advertise: "10.0.0.1".into(),
            udp: vec![sa("10.0.0.1:5060")],
            tcp: Vec::new(),
            hide: false,
            nat: NatMode::Off,
        },
        cores: cores.iter().map(|c| CoreTarget { addr: sa(c), transport: Transport::Udp }).collect(),
        probe_interval: probe,
        max_transactions: 100,
        max_dialogs: 100,
        max_registrations: 100,
        seed: 42,
        ..Config::example()
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ext(transport: Transport) -> Flow {
    Flow { side: Side::External, transport, local: sa("203.0.113.1:5060"), remote: sa(EXT_UA) }
}

fn core(addr: &str) -> Flow {
    Flow { side: Side::Internal, transport: Transport::Udp, local: sa("10.0.0.1:5060"), remote: sa(addr) }
}

fn invite(branch: &str) -> String {
    format!(
        "INVITE sip:1000@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch={branch}\r\n\
         From: <sip:alice@198.51.100.7>;tag=ua-tag\r\nTo: <sip:1000@203.0.113.1>\r\nCall-ID: ua-call@198.51.100.7\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:alice@198.51.100.7:5060>\r\nMax-Forwards: 70\r\nUser-Agent: phone\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Drains the engine's output: (flow, message text).
fn drain(e: &mut Engine) -> Vec<(Flow, String)> {
    std::iter::from_fn(|| e.poll_transmit()).map(|t| (t.flow, String::from_utf8(t.data).unwrap())).collect()
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

fn first_line(msg: &str) -> &str {
    msg.lines().next().unwrap_or_default()
}

/// A response from the core to a request the SBC sent it (copying Via/From/To/Call-ID/CSeq).
fn respond(req: &str, code: u16, reason: &str, to_tag: Option<&str>, extra: &str) -> String {
    let mut to = header(req, "To").unwrap().to_string();
    if let Some(t) = to_tag
        && !to.contains("tag=")
    {
        to.push_str(&format!(";tag={t}"));
    }
    format!(
        "SIP/2.0 {code} {reason}\r\nVia: {}\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
        header(req, "Via").unwrap(),
        header(req, "From").unwrap(),
        header(req, "Call-ID").unwrap(),
        header(req, "CSeq").unwrap(),
    )
}

fn start_call(e: &mut Engine, now: Instant) -> String {
    e.handle_datagram(now, ext(Transport::Udp), invite("z9hG4bKua1").as_bytes());
    let out = drain(e);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!(first_line(&out[0].1), "SIP/2.0 100 Trying");
    assert_eq!(out[1].0, core(CORE_A));
    out[1].1.clone()
}

#[test]
fn invite_retransmission_is_absorbed_and_answered_with_the_last_response() {
    let now = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), now);
    let fwd = start_call(&mut e, now);
    assert!(fwd.starts_with("INVITE sip:1000@203.0.113.1 SIP/2.0\r\n"));
    e.handle_datagram(now, ext(Transport::Udp), invite("z9hG4bKua1").as_bytes());
    let out = drain(&mut e);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, ext(Transport::Udp));
    assert_eq!(first_line(&out[0].1), "SIP/2.0 100 Trying");
    assert_eq!(e.stats().retransmissions_absorbed, 1);
}

#[test]
fn timer_a_retransmits_and_timer_b_answers_408() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), t0);
    start_call(&mut e, t0);
    let mut retransmits = 0;
    let mut final_to_ua = None;
    for ms in (0..=33_000).step_by(100) {
        e.handle_timeout(t0 + Duration::from_millis(ms));
        for (f, m) in drain(&mut e) {
            if f.side == Side::Internal {
                assert!(m.starts_with("INVITE "));
                retransmits += 1;
            } else if final_to_ua.is_none() {
                final_to_ua = Some((ms, m));
            } else {
                // Timer G: the 408 is retransmitted until the caller ACKs it.
                assert!(m.starts_with("SIP/2.0 408"));
            }
        }
    }
    // Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; Timer B at 32 s.
    assert_eq!(retransmits, 6);
    let (at, m) = final_to_ua.expect("a 408 for the caller");
    assert_eq!(first_line(&m), "SIP/2.0 408 Request Timeout");
    assert_eq!(at, 32_000);
    assert!(header(&m, "To").unwrap().contains(";tag="));
    assert_eq!(header(&m, "Via").unwrap(), "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKua1");
}

#[test]
fn cancel_waits_for_a_provisional_then_487_is_acked_hop_by_hop() {
    let now = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), now);
    let fwd = start_call(&mut e, now);
    let cancel = invite("z9hG4bKua1").replace("INVITE sip", "CANCEL sip").replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    e.handle_datagram(now, ext(Transport::Udp), cancel.as_bytes());
    let out = drain(&mut e);
    assert_eq!(out.len(), 1, "only the 200 to CANCEL before the core answered: {out:#?}");
    assert_eq!(first_line(&out[0].1), "SIP/2.0 200 OK");
    e.handle_datagram(now, core(CORE_A), respond(&fwd, 180, "Ringing", Some("core-tag"), "").as_bytes());
    let out = drain(&mut e);
    let to_core: Vec<&String> = out.iter().filter(|(f, _)| f.side == Side::Internal).map(|(_, m)| m).collect();
    assert_eq!(to_core.len(), 1);
    assert!(to_core[0].starts_with("CANCEL sip:1000@203.0.113.1 SIP/2.0"));
    assert_eq!(header(to_core[0], "Via"), header(&fwd, "Via"), "CANCEL reuses the INVITE's branch");
    e.handle_datagram(now, core(CORE_A), respond(&fwd, 487, "Request Terminated", Some("core-tag"), "").as_bytes());
    let out = drain(&mut e);
    let ack = out.iter().find(|(f, _)| f.side == Side::Internal).map(|(_, m)| m.clone()).expect("ACK to the core");
    assert!(ack.starts_with("ACK sip:1000@203.0.113.1 SIP/2.0"));
    assert!(header(&ack, "To").unwrap().contains("tag=core-tag"));
    let to_ua = out.iter().find(|(f, _)| f.side == Side::External).map(|(_, m)| m.clone()).expect("487 to the caller");
    assert_eq!(first_line(&to_ua), "SIP/2.0 487 Request Terminated");
    // The caller's ACK for the 487 is absorbed, not forwarded.
    let ack_ua = invite("z9hG4bKua1").replace("INVITE sip", "ACK sip").replace("CSeq: 1 INVITE", "CSeq: 1 ACK");
    e.handle_datagram(now, ext(Transport::Udp), ack_ua.as_bytes());
    assert!(drain(&mut e).is_empty());
}

#[test]
fn a_silent_core_fails_over_to_the_next() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(&[CORE_A, CORE_B], None), t0);
    start_call(&mut e, t0);
    let mut to_b = None;
    for ms in (0..=32_500).step_by(100) {
        e.handle_timeout(t0 + Duration::from_millis(ms));
        for (f, m) in drain(&mut e) {
            assert_ne!(f.side, Side::External, "the caller hears nothing while a core is left: {m}");
            if f.remote == sa(CORE_B) && to_b.is_none() {
                to_b = Some(m);
            }
        }
    }
    let m = to_b.expect("INVITE to the second core");
    assert!(m.starts_with("INVITE "));
    assert!(header(&m, "Via").unwrap().starts_with("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK"));
}

#[test]
fn probing_marks_cores_down_and_up_and_503_when_none_is_up() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], Some(Duration::from_secs(5))), t0);
    e.handle_timeout(t0);
    let probe = drain(&mut e).pop().unwrap().1;
    assert!(probe.starts_with("OPTIONS sip:10.0.0.10:5070 SIP/2.0"));
    e.handle_timeout(t0 + Duration::from_secs(3));
    drain(&mut e);
    assert_eq!(e.core_up(0), Some(false));
    assert_eq!(e.poll_event(), Some(Event::CoreDown { addr: sa(CORE_A) }));
    e.handle_datagram(t0 + Duration::from_secs(3), ext(Transport::Udp), invite("z9hG4bKua2").as_bytes());
    let out = drain(&mut e);
    assert_eq!(out.len(), 1);
    assert_eq!(first_line(&out[0].1), "SIP/2.0 503 Service Unavailable");
    // The next probe is answered: the core is up again.
    e.handle_timeout(t0 + Duration::from_secs(5));
    let probe = drain(&mut e).into_iter().find(|(_, m)| m.starts_with("OPTIONS")).unwrap().1;
    e.handle_datagram(t0 + Duration::from_secs(5), core(CORE_A), respond(&probe, 200, "OK", Some("x"), "").as_bytes());
    assert_eq!(e.core_up(0), Some(true));
}

#[test]
fn a_call_hides_the_core_and_routes_mid_dialog_requests_both_ways() {
    let now = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), now);
    let fwd = start_call(&mut e, now);
    // Toward the core (not hidden): one Via (ours), the caller's own identifiers.
    assert_eq!(fwd.matches("\r\nVia: ").count(), 1);
    assert_eq!(header(&fwd, "Call-ID"), Some("ua-call@198.51.100.7"));
    assert!(header(&fwd, "From").unwrap().ends_with(";tag=ua-tag"));
    let sbc_contact_int = header(&fwd, "Contact").unwrap().to_string();
    assert!(sbc_contact_int.starts_with("<sip:d") && sbc_contact_int.ends_with("@10.0.0.1:5060>"));
    let ok = respond(
        &fwd,
        200,
        "OK",
        Some("core-tag-1"),
        "Contact: <sip:1000@core.internal:5070>\r\nRecord-Route: <sip:10.0.0.10:5070;lr>\r\nServer: CorePBX 1.0\r\n",
    );
    e.handle_datagram(now, core(CORE_A), ok.as_bytes());
    let out = drain(&mut e);
    assert_eq!(out.len(), 1);
    let (f, to_ua) = &out[0];
    assert_eq!(*f, ext(Transport::Udp));
    for secret in ["10.0.0.10", "core-tag-1", "core.internal", "5070", "CorePBX", "Record-Route"] {
        assert!(!to_ua.contains(secret), "{secret} leaked:\n{to_ua}");
    }
    assert_eq!(header(to_ua, "Call-ID"), Some("ua-call@198.51.100.7"), "the caller's own Call-ID comes back");
    assert_eq!(header(to_ua, "From"), Some("<sip:alice@198.51.100.7>;tag=ua-tag"));
    let to = header(to_ua, "To").unwrap();
    assert!(to.starts_with("<sip:1000@203.0.113.1>;tag=sbcm"), "{to}");
    let contact = header(to_ua, "Contact").unwrap();
    assert_eq!(
        contact.trim_start_matches("<sip:").split('@').next(),
        sbc_contact_int.trim_start_matches("<sip:").split('@').next()
    );
    // The core hangs up: its BYE reaches the caller's Contact, hidden.
    let bye = format!(
        "BYE {} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.10:5070;branch=z9hG4bKcorebye\r\nFrom: <sip:1000@core.internal>;tag=core-tag-1\r\n\
         To: <sip:alice@198.51.100.7>;tag=ua-tag\r\nCall-ID: ua-call@198.51.100.7\r\nCSeq: 10 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        sbc_contact_int.trim_matches(|c| c == '<' || c == '>')
    );
    e.handle_datagram(now, core(CORE_A), bye.as_bytes());
    let out = drain(&mut e);
    assert_eq!(out.len(), 1);
    let (f, to_ua) = &out[0];
    assert_eq!(f.remote, sa(EXT_UA));
    assert!(to_ua.starts_with("BYE sip:alice@198.51.100.7:5060 SIP/2.0\r\n"), "{to_ua}");
    for secret in ["10.0.0.10", "core-tag-1", "core.internal", "z9hG4bKcorebye"] {
        assert!(!to_ua.contains(secret), "{secret} leaked:\n{to_ua}");
    }
    assert_eq!(header(to_ua, "Call-ID"), Some("ua-call@198.51.100.7"));
    assert!(header(to_ua, "To").unwrap().ends_with(";tag=ua-tag"));
    assert!(!header(to_ua, "From").unwrap().contains("core-tag-1"));
    // The caller's 200 goes back to the core with the core's own identifiers.
    let ok_bye = respond(to_ua, 200, "OK", None, "");
    e.handle_datagram(now, ext(Transport::Udp), ok_bye.as_bytes());
    let out = drain(&mut e);
    assert_eq!(out.len(), 1);
    let (f, to_core) = &out[0];
    assert_eq!(f.remote, sa(CORE_A));
    assert_eq!(header(to_core, "Via"), Some("SIP/2.0/UDP 10.0.0.10:5070;branch=z9hG4bKcorebye"));
    assert_eq!(header(to_core, "From"), Some("<sip:1000@core.internal>;tag=core-tag-1"));
    assert_eq!(e.sizes().2, 0, "the dialog ends with the BYE");
}

#[test]
fn a_registered_phone_is_reached_on_its_tcp_flow() {
    let now = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), now);
    let phone = ext(Transport::Tcp);
    let reg = "REGISTER sip:203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/TCP 192.168.1.2:5060;branch=z9hG4bKreg1\r\n\
               From: <sip:alice@203.0.113.1>;tag=r1\r\nTo: <sip:alice@203.0.113.1>\r\nCall-ID: reg-1\r\nCSeq: 1 REGISTER\r\n\
               Contact: <sip:alice@192.168.1.2:5060;transport=tcp>;expires=300\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    e.handle_stream_message(now, phone, reg.as_bytes());
    let out = drain(&mut e);
    assert_eq!(out.len(), 1);
    let fwd = &out[0].1;
    let contact = header(fwd, "Contact").unwrap();
    assert!(contact.starts_with("<sip:r") && contact.ends_with("@10.0.0.1:5060>;expires=300"), "{contact}");
    let token_uri = contact.split(';').next().unwrap().trim_matches(|c| c == '<' || c == '>').to_string();
    let ok = respond(fwd, 200, "OK", Some("reg-tag"), &format!("Contact: <{token_uri}>;expires=120\r\n"));
    e.handle_datagram(now, core(CORE_A), ok.as_bytes());
    let out = drain(&mut e);
    assert_eq!(out[0].0, phone);
    // Behind NAT (a private Via from a public source): the phone gets the short expiry.
    assert_eq!(header(&out[0].1, "Contact"), Some("<sip:alice@192.168.1.2:5060;transport=tcp>;expires=60"));
    // The core calls the registered contact (addressing the user at itself, as a registrar
    // does): the INVITE goes down the phone's connection.
    let inv = format!(
        "INVITE {token_uri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.10:5070;branch=z9hG4bKcoreinv\r\nFrom: <sip:bob@10.0.0.10>;tag=cb\r\n\
         To: <sip:alice@10.0.0.10:5070>\r\nCall-ID: core-call-1@10.0.0.10\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@10.0.0.10:5070>\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    e.handle_datagram(now, core(CORE_A), inv.as_bytes());
    let out = drain(&mut e);
    let (f, m) = out.iter().find(|(f, _)| f.side == Side::External).unwrap();
    assert_eq!(*f, phone);
    assert!(m.starts_with("INVITE sip:alice@192.168.1.2:5060;transport=tcp SIP/2.0\r\n"));
    assert!(header(m, "Via").unwrap().starts_with("SIP/2.0/TCP 203.0.113.1:5060;branch="));
    assert_eq!(header(m, "To"), Some("<sip:alice@203.0.113.1>"), "a To naming the core gets the SBC's host");
    for secret in ["10.0.0.10", "5070", "core-call-1", "z9hG4bKcoreinv", ";tag=cb"] {
        assert!(!m.contains(secret), "{secret} leaked:\n{m}");
    }
}

#[test]
fn transaction_limit_answers_503_with_retry_after() {
    let now = Instant::now();
    let mut cfg = config(&[CORE_A], None);
    cfg.max_transactions = 1;
    let mut e = Engine::new(cfg, now);
    start_call(&mut e, now);
    e.handle_datagram(now, ext(Transport::Udp), invite("z9hG4bKua9").replace("ua-call", "other").as_bytes());
    let out = drain(&mut e);
    assert_eq!(first_line(&out[0].1), "SIP/2.0 503 Service Unavailable");
    assert_eq!(header(&out[0].1, "Retry-After"), Some("5"));
}

/// Issue 16: answered transactions linger 64·T1 to absorb retransmissions; at a high call
/// rate they far outnumber the requests in progress. They must neither refuse new requests
/// (the limit is on work in progress) nor grow past the limit (the oldest end early).
#[test]
fn lingering_answered_transactions_neither_refuse_new_requests_nor_grow_past_the_limit() {
    let now = Instant::now();
    let mut cfg = config(&[CORE_A], None);
    cfg.max_transactions = 10;
    let mut e = Engine::new(cfg, now);
    let message = |i: usize| {
        format!(
            "MESSAGE sip:1000@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKm{i}\r\n\
             From: <sip:alice@198.51.100.7>;tag=m{i}\r\nTo: <sip:1000@203.0.113.1>\r\nCall-ID: m{i}@ua\r\n\
             CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // 50 requests, each answered by the core: every one is forwarded and answered.
    for i in 0..50 {
        e.handle_datagram(now, ext(Transport::Udp), message(i).as_bytes());
        let out = drain(&mut e);
        assert_eq!(out.len(), 1, "request {i} forwarded, not refused: {out:#?}");
        assert_eq!(out[0].0, core(CORE_A));
        e.handle_datagram(now, core(CORE_A), respond(&out[0].1, 200, "OK", Some("c"), "").as_bytes());
        let out = drain(&mut e);
        assert_eq!(first_line(&out[0].1), "SIP/2.0 200 OK");
        assert!(e.sizes().0 <= 11, "server transactions bounded: {}", e.sizes().0);
    }
    // The newest answered one still absorbs its retransmission (answered again, not forwarded).
    e.handle_datagram(now, ext(Transport::Udp), message(49).as_bytes());
    let out = drain(&mut e);
    assert_eq!((out.len(), out[0].0.side), (1, Side::External));
    assert_eq!(first_line(&out[0].1), "SIP/2.0 200 OK");
    // Requests in progress are what the limit refuses: 10 unanswered, the 11th gets 503.
    for i in 100..110 {
        e.handle_datagram(now, ext(Transport::Udp), message(i).as_bytes());
        assert_eq!(drain(&mut e)[0].0, core(CORE_A));
    }
    e.handle_datagram(now, ext(Transport::Udp), message(110).as_bytes());
    assert_eq!(first_line(&drain(&mut e)[0].1), "SIP/2.0 503 Service Unavailable");
}

#[test]
fn refer_to_is_pointed_at_the_sbc_and_its_replaces_is_unmasked() {
    let now = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), now);
    let fwd = start_call(&mut e, now);
    let ok = respond(&fwd, 200, "OK", Some("core-tag-2"), "Contact: <sip:1000@10.0.0.10:5070>\r\n");
    e.handle_datagram(now, core(CORE_A), ok.as_bytes());
    let to_ua = drain(&mut e).pop().unwrap().1;
    let masked_tag = header(&to_ua, "To").unwrap().split("tag=").nth(1).unwrap().to_string();
    let contact = header(&to_ua, "Contact").unwrap().trim_matches(|c| c == '<' || c == '>').to_string();
    // The caller transfers to the core user, replacing the dialog it holds with the core.
    let refer = format!(
        "REFER {contact} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKref\r\nFrom: <sip:alice@198.51.100.7>;tag=ua-tag\r\n\
         To: <sip:1000@203.0.113.1>;tag={masked_tag}\r\nCall-ID: ua-call@198.51.100.7\r\nCSeq: 2 REFER\r\nMax-Forwards: 70\r\n\
         Refer-To: <sip:carol@203.0.113.1?Replaces=ua-call%40198.51.100.7%3Bto-tag%3D{masked_tag}%3Bfrom-tag%3Dua-tag>\r\n\
         Contact: <sip:alice@198.51.100.7:5060>\r\nContent-Length: 0\r\n\r\n"
    );
    e.handle_datagram(now, ext(Transport::Udp), refer.as_bytes());
    let out = drain(&mut e);
    let m = &out.iter().find(|(f, _)| f.side == Side::Internal).unwrap().1;
    assert!(m.starts_with("REFER sip:1000@10.0.0.10:5070 SIP/2.0"), "{m}");
    let refer_to = header(m, "Refer-To").unwrap();
    assert!(refer_to.starts_with("<sip:carol@10.0.0.1:5060?Replaces="), "{refer_to}");
    assert!(refer_to.contains("to-tag%3Dcore-tag-2"), "the core gets its own tag back: {refer_to}");
    assert_eq!(header(m, "To"), Some("<sip:1000@203.0.113.1>;tag=core-tag-2"));
}

#[test]
fn a_core_request_naming_the_sbc_without_a_token_is_a_loop() {
    let now = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), now);
    let inv = "INVITE sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.10:5070;branch=z9hG4bKloop\r\n\
               From: <sip:a@10.0.0.10>;tag=1\r\nTo: <sip:bob@10.0.0.1>\r\nCall-ID: loop-1\r\nCSeq: 1 INVITE\r\n\
               Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    e.handle_datagram(now, core(CORE_A), inv.as_bytes());
    let out = drain(&mut e);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(first_line(&out[0].1), "SIP/2.0 482 Loop Detected");
}

#[test]
fn timer_f_answers_a_non_invite_with_a_complete_408() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), t0);
    let opt = invite("z9hG4bKopt").replace("INVITE sip", "OPTIONS sip").replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS");
    e.handle_datagram(t0, ext(Transport::Udp), opt.as_bytes());
    assert_eq!(drain(&mut e).len(), 1, "forwarded, no 100 for a non-INVITE");
    e.handle_timeout(t0 + Duration::from_secs(32));
    let to_ua: Vec<String> =
        drain(&mut e).into_iter().filter(|(f, _)| f.side == Side::External).map(|(_, m)| m).collect();
    assert_eq!(to_ua.len(), 1);
    let m = &to_ua[0];
    assert_eq!(first_line(m), "SIP/2.0 408 Request Timeout");
    assert_eq!(header(m, "Via"), Some("SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKopt"));
    assert_eq!(header(m, "From"), Some("<sip:alice@198.51.100.7>;tag=ua-tag"));
    assert!(header(m, "To").unwrap().starts_with("<sip:1000@203.0.113.1>;tag="));
    assert_eq!(header(m, "Call-ID"), Some("ua-call@198.51.100.7"));
    assert_eq!(header(m, "CSeq"), Some("1 OPTIONS"));
}

#[test]
fn options_to_the_sbc_itself_is_answered_locally_rfc3261_11_2() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), t0);
    let ping = |uri: &str| {
        invite("z9hG4bKping")
            .replace("INVITE sip:1000@203.0.113.1", &format!("OPTIONS {uri}"))
            .replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS")
    };
    e.handle_datagram(t0, ext(Transport::Udp), ping("sip:203.0.113.1").as_bytes());
    let out = drain(&mut e);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].0, ext(Transport::Udp));
    assert_eq!(first_line(&out[0].1), "SIP/2.0 200 OK");
    assert!(header(&out[0].1, "Allow").unwrap().contains("INVITE"));
    // A user part, or another port, is a request for someone else: relayed to the core.
    for (i, uri) in ["sip:1000@203.0.113.1", "sip:203.0.113.1:5070"].into_iter().enumerate() {
        e.handle_datagram(
            t0,
            ext(Transport::Udp),
            ping(uri).replace("z9hG4bKping", &format!("z9hG4bKp{i}")).as_bytes(),
        );
        let out = drain(&mut e);
        assert!(out.iter().any(|(f, m)| f.side == Side::Internal && m.starts_with("OPTIONS ")), "{uri}: {out:#?}");
    }
}

#[test]
fn branch_reused_by_another_method_or_sent_by_is_a_new_transaction_rfc3261_17_2_3() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), t0);
    let as_method = |m: &str| {
        invite("z9hG4bKsame")
            .replace("INVITE sip", &format!("{m} sip"))
            .replace("CSeq: 1 INVITE", &format!("CSeq: 1 {m}"))
    };
    e.handle_datagram(t0, ext(Transport::Udp), as_method("OPTIONS").as_bytes());
    let out = drain(&mut e);
    assert!(out.iter().any(|(f, m)| f.side == Side::Internal && m.starts_with("OPTIONS ")), "{out:#?}");
    // The same request again is a retransmission: absorbed.
    e.handle_datagram(t0, ext(Transport::Udp), as_method("OPTIONS").as_bytes());
    assert!(drain(&mut e).is_empty());
    // Same branch and sent-by, another method: a request of its own.
    for m in ["REGISTER", "MESSAGE"] {
        e.handle_datagram(t0, ext(Transport::Udp), as_method(m).as_bytes());
        let out = drain(&mut e);
        assert!(out.iter().any(|(f, x)| f.side == Side::Internal && x.starts_with(&format!("{m} "))), "{m}: {out:#?}");
    }
    // Same branch and method, another UA (sent-by): a request of its own.
    let other =
        invite("z9hG4bKsame").replace("Via: SIP/2.0/UDP 198.51.100.7:5060", "Via: SIP/2.0/UDP 198.51.100.8:5060");
    let flow = Flow { remote: sa("198.51.100.8:5060"), ..ext(Transport::Udp) };
    e.handle_datagram(t0, flow, invite("z9hG4bKsame").as_bytes());
    e.handle_datagram(t0, flow, other.as_bytes());
    let out = drain(&mut e);
    let invites = out.iter().filter(|(f, m)| f.side == Side::Internal && m.starts_with("INVITE ")).count();
    assert_eq!(invites, 2, "{out:#?}");
}

#[test]
fn responses_carry_received_and_rport_rfc3261_18_2_1_rfc3581_4() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), t0);
    let nat = Flow { remote: sa("203.0.113.50:40001"), ..ext(Transport::Udp) };
    let req = invite("z9hG4bKnat").replace(
        "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKnat",
        "Via: SIP/2.0/UDP 192.168.77.2:5060;branch=z9hG4bKnat;rport",
    );
    e.handle_datagram(t0, nat, req.as_bytes());
    let out = drain(&mut e);
    let stamped = "SIP/2.0/UDP 192.168.77.2:5060;branch=z9hG4bKnat;received=203.0.113.50;rport=40001";
    let trying = out.iter().find(|(f, m)| *f == nat && m.starts_with("SIP/2.0 100")).expect("100 Trying");
    assert_eq!(header(&trying.1, "Via"), Some(stamped));
    let fwd = out.iter().find(|(f, _)| f.side == Side::Internal).unwrap().1.clone();
    e.handle_datagram(t0, core(CORE_A), respond(&fwd, 486, "Busy Here", Some("c1"), "").as_bytes());
    let out = drain(&mut e);
    let busy =
        out.iter().find(|(f, m)| *f == nat && m.starts_with("SIP/2.0 486")).expect("486 relayed to the NAT flow");
    assert_eq!(header(&busy.1, "Via"), Some(stamped));
}

/// The core answers the forwarded INVITE with a 200 (tag, Contact); returns what reached the UA.
fn answer_call(e: &mut Engine, now: Instant, fwd: &str) -> String {
    let ok = respond(fwd, 200, "OK", Some("core-tag-1"), "Contact: <sip:1000@10.0.0.10:5070>\r\n");
    e.handle_datagram(now, core(CORE_A), ok.as_bytes());
    let out = drain(e);
    assert_eq!(out.len(), 1, "{out:#?}");
    out[0].1.clone()
}

#[test]
fn a_2xx_never_acked_ends_the_dialog_and_byes_the_callee_rfc3261_13_3_1_4() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), t0);
    let fwd = start_call(&mut e, t0);
    answer_call(&mut e, t0, &fwd);
    assert_eq!(e.sizes().2, 1);
    e.handle_timeout(t0 + Duration::from_millis(31_900));
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.sizes().2, 1, "still waiting for the ACK before 64·T1");
    e.handle_timeout(t0 + Duration::from_secs(32));
    let out = drain(&mut e);
    assert_eq!(out.len(), 1, "{out:#?}");
    let (f, bye) = &out[0];
    assert_eq!(*f, core(CORE_A));
    assert!(bye.starts_with("BYE sip:1000@10.0.0.10:5070 SIP/2.0\r\n"), "{bye}");
    assert_eq!(header(bye, "From"), header(&fwd, "From"), "the caller as the callee knows it");
    assert!(header(bye, "To").unwrap().ends_with(";tag=core-tag-1"));
    assert_eq!(header(bye, "Call-ID"), header(&fwd, "Call-ID"));
    assert_eq!(header(bye, "CSeq"), Some("2 BYE"));
    assert_eq!(e.sizes().2, 0, "the dialog is gone");
    assert_eq!(e.stats().unacked_dialogs_ended, 1);
    // The callee's 200 to our BYE ends there.
    e.handle_datagram(t0 + Duration::from_secs(32), core(CORE_A), respond(bye, 200, "OK", None, "").as_bytes());
    assert!(drain(&mut e).is_empty());
}

#[test]
fn an_acked_2xx_keeps_its_dialog_past_64_t1() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), t0);
    let fwd = start_call(&mut e, t0);
    let to_ua = answer_call(&mut e, t0, &fwd);
    let token_uri = header(&to_ua, "Contact").unwrap().trim_matches(|c| c == '<' || c == '>').to_string();
    let ack = format!(
        "ACK {token_uri} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKack\r\nFrom: <sip:alice@198.51.100.7>;tag=ua-tag\r\n\
         To: {}\r\nCall-ID: ua-call@198.51.100.7\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        header(&to_ua, "To").unwrap()
    );
    e.handle_datagram(t0 + Duration::from_secs(1), ext(Transport::Udp), ack.as_bytes());
    assert!(drain(&mut e).iter().any(|(f, m)| f.side == Side::Internal && m.starts_with("ACK ")));
    e.handle_timeout(t0 + Duration::from_secs(40));
    assert!(drain(&mut e).iter().all(|(_, m)| !m.starts_with("BYE")));
    assert_eq!(e.sizes().2, 1);
}

#[test]
fn credentials_for_the_core_never_reach_the_external_side() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), t0);
    // Toward the core they pass: the core challenged for them.
    let with_auth = invite("z9hG4bKauth").replace(
        "Content-Length: 0",
        "Proxy-Authorization: Digest username=\"alice\", realm=\"core\", nonce=\"n\", uri=\"sip:1000@203.0.113.1\", response=\"r\"\r\nContent-Length: 0",
    );
    e.handle_datagram(t0, ext(Transport::Udp), with_auth.as_bytes());
    let fwd = drain(&mut e).into_iter().find(|(f, _)| f.side == Side::Internal).unwrap().1;
    assert!(fwd.contains("Proxy-Authorization: Digest username=\"alice\""));
    // From the core toward the outside they are removed.
    let inv = "INVITE sip:bob@198.51.100.9:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.10:5070;branch=z9hG4bKcorecred\r\n\
               From: <sip:200@10.0.0.10>;tag=c\r\nTo: <sip:bob@198.51.100.9>\r\nCall-ID: cc@10.0.0.10\r\nCSeq: 1 INVITE\r\n\
               Contact: <sip:200@10.0.0.10:5070>\r\nAuthorization: Digest username=\"200\", response=\"x\"\r\n\
               Proxy-Authorization: Digest username=\"200\", response=\"y\"\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    e.handle_datagram(t0, core(CORE_A), inv.as_bytes());
    let out = drain(&mut e).into_iter().find(|(f, _)| f.side == Side::External).unwrap().1;
    assert!(!out.contains("Authorization"), "{out}");
}

#[test]
fn core_hosts_in_identities_are_replaced_by_default_and_restored_in_the_dialog() {
    let t0 = Instant::now();
    let mut cfg = config(&[CORE_A], None);
    cfg.public_domains = vec!["voip.example.com".into()];
    let mut e = Engine::new(cfg, t0);
    let inv = "INVITE sip:bob@198.51.100.9:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.10:5070;branch=z9hG4bKcorehost\r\n\
               From: \"Desk\" <sip:200@pbx.corp.lan:5070>;tag=c\r\nTo: <sip:bob@bob-host.example.net>\r\nCall-ID: ch@pbx.corp.lan\r\n\
               CSeq: 1 INVITE\r\nContact: <sip:200@10.0.0.10:5070>\r\nP-Asserted-Identity: <sip:200@pbx.corp.lan>\r\n\
               Referred-By: <sip:300@voip.example.com>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    e.handle_datagram(t0, core(CORE_A), inv.as_bytes());
    let out = drain(&mut e).into_iter().find(|(f, _)| f.side == Side::External).unwrap().1;
    assert!(!out.contains("pbx.corp.lan"), "{out}");
    assert!(header(&out, "From").unwrap().starts_with("\"Desk\" <sip:200@203.0.113.1>;tag="), "{out}");
    assert_eq!(header(&out, "To"), Some("<sip:bob@bob-host.example.net>"), "the destination's own URI stays");
    assert_eq!(header(&out, "P-Asserted-Identity"), Some("<sip:200@203.0.113.1>"));
    assert_eq!(header(&out, "Referred-By"), Some("<sip:300@voip.example.com>"), "a public domain stays");
    // The phone answers and later hangs up: its BYE's To names the SBC; the core gets its own host back.
    let ok = respond(&out, 200, "OK", Some("bob-tag"), "Contact: <sip:bob@198.51.100.9:5060>\r\n");
    e.handle_datagram(t0, Flow { remote: sa("198.51.100.9:5060"), ..ext(Transport::Udp) }, ok.as_bytes());
    let to_core = drain(&mut e).into_iter().find(|(f, _)| f.side == Side::Internal).unwrap().1;
    assert_eq!(header(&to_core, "From"), Some("\"Desk\" <sip:200@pbx.corp.lan:5070>;tag=c"), "responses restore From");
    let sbc = header(&out, "Contact").unwrap().trim_matches(|c| c == '<' || c == '>').to_string();
    let bye = format!(
        "BYE {sbc} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKbobbye\r\nFrom: <sip:bob@bob-host.example.net>;tag=bob-tag\r\n\
         To: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        header(&out, "From").unwrap(),
        header(&out, "Call-ID").unwrap()
    );
    e.handle_datagram(t0, Flow { remote: sa("198.51.100.9:5060"), ..ext(Transport::Udp) }, bye.as_bytes());
    let to_core = drain(&mut e).into_iter().find(|(f, _)| f.side == Side::Internal).unwrap().1;
    assert!(to_core.starts_with("BYE "), "{to_core}");
    assert_eq!(header(&to_core, "To"), Some("\"Desk\" <sip:200@pbx.corp.lan:5070>;tag=c"));
    assert_eq!(header(&to_core, "Call-ID"), Some("ch@pbx.corp.lan"));
}

#[test]
fn a_transport_error_toward_the_core_fails_over_or_answers_503_at_once_rfc3261_16_9() {
    let t0 = Instant::now();
    // One core: the caller gets a 503 now, not a 408 after Timer B.
    let mut e = Engine::new(config(&[CORE_A], None), t0);
    start_call(&mut e, t0);
    e.handle_transport_error(t0 + Duration::from_millis(3), core(CORE_A));
    let out = drain(&mut e);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].0, ext(Transport::Udp));
    assert_eq!(first_line(&out[0].1), "SIP/2.0 503 Service Unavailable");
    assert_eq!(e.stats().transport_errors, 1);
    // Two cores: the request moves to the second one.
    let mut e = Engine::new(config(&[CORE_A, CORE_B], None), t0);
    start_call(&mut e, t0);
    e.handle_transport_error(t0 + Duration::from_millis(3), core(CORE_A));
    let out = drain(&mut e);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].0, core(CORE_B));
    assert!(out[0].1.starts_with("INVITE "));
    // An error for a flow nothing waits on changes nothing.
    e.handle_transport_error(t0, core("10.0.0.99:5060"));
    assert!(drain(&mut e).is_empty());
}

/// alice (behind NAT at 192.168.1.2) registers over UDP from `phone`, the core's registrar
/// accepts; returns the token URI the core now has as her Contact.
fn register_udp_phone(e: &mut Engine, now: Instant, phone: Flow) -> String {
    let reg = "REGISTER sip:203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.2:5060;branch=z9hG4bKreg7;rport\r\n\
               From: <sip:alice@203.0.113.1>;tag=r1\r\nTo: <sip:alice@203.0.113.1>\r\nCall-ID: reg-7\r\nCSeq: 1 REGISTER\r\n\
               Contact: <sip:alice@192.168.1.2:5060>;expires=300\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    e.handle_datagram(now, phone, reg.as_bytes());
    let fwd = drain(e).pop().unwrap().1;
    let token_uri =
        header(&fwd, "Contact").unwrap().split(';').next().unwrap().trim_matches(|c| c == '<' || c == '>').to_string();
    let ok = respond(&fwd, 200, "OK", Some("reg-tag"), &format!("Contact: <{token_uri}>;expires=120\r\n"));
    e.handle_datagram(now, core(CORE_A), ok.as_bytes());
    drain(e);
    token_uri
}

#[test]
fn a_transport_error_toward_a_registered_flow_answers_430_rfc5626_5_3() {
    let now = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), now);
    let phone = Flow { remote: sa("203.0.113.77:40000"), ..ext(Transport::Udp) };
    let token_uri = register_udp_phone(&mut e, now, phone);
    let inv = format!(
        "INVITE {token_uri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.10:5070;branch=z9hG4bKcore430\r\nFrom: <sip:bob@10.0.0.10>;tag=cb\r\n\
         To: <sip:alice@203.0.113.1>\r\nCall-ID: core-call-430\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@10.0.0.10:5070>\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    e.handle_datagram(now, core(CORE_A), inv.as_bytes());
    assert!(drain(&mut e).iter().any(|(f, _)| *f == phone));
    // The phone's NAT binding is gone: ICMP port unreachable for its flow.
    e.handle_transport_error(now + Duration::from_millis(2), phone);
    let out = drain(&mut e);
    let to_core: Vec<_> = out.iter().filter(|(f, _)| f.side == Side::Internal).collect();
    assert_eq!(to_core.len(), 1, "{out:#?}");
    assert_eq!(first_line(&to_core[0].1), "SIP/2.0 430 Flow Failed");
}

#[test]
fn a_response_over_tcp_names_the_via_sent_by_port_for_a_new_connection_rfc3261_18_2_2() {
    let now = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), now);
    let phone = Flow { remote: sa("198.51.100.7:49152"), ..ext(Transport::Tcp) };
    let req = invite("z9hG4bKtcp").replace("SIP/2.0/UDP 198.51.100.7:5060", "SIP/2.0/TCP 198.51.100.7:5062");
    e.handle_stream_message(now, phone, req.as_bytes());
    let mut out = Vec::new();
    while let Some(t) = e.poll_transmit() {
        out.push(t);
    }
    let trying = out.iter().find(|t| t.flow == phone).unwrap();
    assert_eq!(trying.reconnect, None, "the 100 is sent at once on the request's own connection");
    let fwd = String::from_utf8(out.iter().find(|t| t.flow.side == Side::Internal).unwrap().data.clone()).unwrap();
    e.handle_datagram(now, core(CORE_A), respond(&fwd, 486, "Busy Here", Some("c"), "").as_bytes());
    let busy = std::iter::from_fn(|| e.poll_transmit()).find(|t| t.flow == phone).unwrap();
    assert_eq!(busy.reconnect, Some(sa("198.51.100.7:5062")));
}

/// Records what the media seam is told.
#[derive(Default)]
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
impl MediaHook for Recorder {
    fn on_body(&mut self, _: Instant, c: &BodyCrossing<'_>) -> BodyVerdict {
        if c.body.starts_with(b"v=0 full") {
            return BodyVerdict::Refuse { code: 503, reason: "Service Unavailable", retry_after: Some(9) };
        }
        self.0.lock().unwrap().push(format!(
            "{:?} {} {:?}->{:?} {:?} {}",
            c.role,
            c.dialog.is_some(),
            c.from,
            c.to,
            c.status,
            String::from_utf8_lossy(c.body)
        ));
        BodyVerdict::Replace(b"v=0 rewritten".to_vec())
    }
    fn on_dialog_end(&mut self, _: Instant, _dialog: &str, why: DialogEnd) {
        self.0.lock().unwrap().push(format!("end {why:?}"));
    }
}

#[test]
fn the_media_seam_sees_offer_answer_with_the_dialog_and_its_end() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), t0);
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    e.set_media_hook(Box::new(Recorder(log.clone())));
    let inv = invite("z9hG4bKsdp")
        .replace("Content-Length: 0\r\n\r\n", "Content-Type: application/sdp\r\nContent-Length: 9\r\n\r\nv=0 offer");
    e.handle_datagram(t0, ext(Transport::Udp), inv.as_bytes());
    let fwd = drain(&mut e).into_iter().find(|(f, _)| f.side == Side::Internal).unwrap().1;
    assert!(fwd.ends_with("\r\n\r\nv=0 rewritten"), "the hook's body is what is forwarded:\n{fwd}");
    let ok =
        respond(&fwd, 200, "OK", Some("c1"), "Contact: <sip:1000@10.0.0.10:5070>\r\nContent-Type: application/sdp\r\n")
            .replace("Content-Length: 0\r\n\r\n", "Content-Length: 10\r\n\r\nv=0 answer");
    e.handle_datagram(t0, core(CORE_A), ok.as_bytes());
    let to_ua = drain(&mut e).pop().unwrap().1;
    assert!(to_ua.ends_with("v=0 rewritten"));
    // The core hangs up; the dialog's end reaches the seam once.
    let contact = header(&fwd, "Contact").unwrap().trim_matches(|c| c == '<' || c == '>').to_string();
    let bye = format!(
        "BYE {contact} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.10:5070;branch=z9hG4bKbyesdp\r\nFrom: {}\r\nTo: {}\r\n\
         Call-ID: {}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        header(&ok, "To").unwrap(),
        header(&fwd, "From").unwrap(),
        header(&fwd, "Call-ID").unwrap()
    );
    e.handle_datagram(t0, core(CORE_A), bye.as_bytes());
    let to_ua = drain(&mut e).pop().unwrap().1;
    e.handle_datagram(t0, ext(Transport::Udp), respond(&to_ua, 200, "OK", None, "").as_bytes());
    drain(&mut e);
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            "Offer true External->Internal None v=0 offer".to_string(),
            "Answer true Internal->External Some(200) v=0 answer".to_string(),
            "end Bye".to_string(),
        ]
    );
    assert!(
        std::iter::from_fn(|| e.poll_event()).any(|ev| matches!(ev, Event::DialogEnded { why: DialogEnd::Bye, .. }))
    );
}

#[test]
fn the_aor_host_in_the_to_of_a_call_to_a_registered_phone_is_the_sbcs() {
    let now = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), now);
    let phone = ext(Transport::Udp);
    let token_uri = register_udp_phone(&mut e, now, phone);
    // The registrar writes the AOR in its own domain, a name the operator never listed.
    let inv = format!(
        "INVITE {token_uri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.10:5070;branch=z9hG4bKcoreaor\r\nFrom: <sip:bob@pbx.corp.lan>;tag=cb\r\n\
         To: <sip:alice@pbx.corp.lan>\r\nCall-ID: core-aor@pbx.corp.lan\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@10.0.0.10:5070>\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    e.handle_datagram(now, core(CORE_A), inv.as_bytes());
    let (_, m) = drain(&mut e).into_iter().find(|(f, _)| *f == phone).unwrap();
    assert!(!m.contains("pbx.corp.lan"), "{m}");
    assert_eq!(header(&m, "To"), Some("<sip:alice@203.0.113.1>"));
}

/// What a guard saw, shared with the test.
#[derive(Default)]
struct Seen {
    finals: Vec<(u16, bool, bool)>,
    malformed: Vec<String>,
}

/// Rejects INVITEs with 503 and a Retry-After; records finals (code, by_sbc, credentials) and
/// malformed messages.
struct GuardRecorder(std::sync::Arc<std::sync::Mutex<Seen>>);

impl Guard for GuardRecorder {
    fn admit(&mut self, _: Instant, _: &Flow, req: &Checked<'_>) -> Admit {
        if req.method == Method::Invite {
            return Admit::Reject { code: 503, reason: "Service Unavailable", retry_after: Some(7) };
        }
        Admit::Accept
    }
    fn on_final(&mut self, _: Instant, f: &Final<'_>) {
        self.0.lock().unwrap().finals.push((f.code, f.by_sbc, f.credentials));
    }
    fn on_malformed(&mut self, _: Instant, _: &Flow, what: &str) {
        self.0.lock().unwrap().malformed.push(what.to_string());
    }
}

#[test]
fn the_guard_sees_credentials_on_finals_malformed_input_and_its_retry_after_is_sent() {
    let now = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), now);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    e.set_guard(Box::new(GuardRecorder(seen.clone())));
    // The guard's 503 carries its Retry-After.
    e.handle_datagram(now, ext(Transport::Udp), invite("z9hG4bKg1").as_bytes());
    let out = drain(&mut e);
    assert_eq!(first_line(&out[0].1), "SIP/2.0 503 Service Unavailable");
    assert_eq!(header(&out[0].1, "Retry-After"), Some("7"));
    // A REGISTER without, then with credentials: the core's 401 to each is shown with the flag.
    for (n, auth) in [(1, ""), (2, "Authorization: Digest username=\"1000\", response=\"x\"\r\n")] {
        let reg = format!(
            "REGISTER sip:203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKr{n}\r\n\
             From: <sip:1000@203.0.113.1>;tag=r\r\nTo: <sip:1000@203.0.113.1>\r\nCall-ID: reg@198.51.100.7\r\n\
             CSeq: {n} REGISTER\r\nContact: <sip:1000@198.51.100.7:5060>\r\n{auth}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        e.handle_datagram(now, ext(Transport::Udp), reg.as_bytes());
        let fwd = drain(&mut e).pop().unwrap().1;
        e.handle_datagram(now, core(CORE_A), respond(&fwd, 401, "Unauthorized", Some("c"), "").as_bytes());
        drain(&mut e);
    }
    // A request without a Call-ID: the sanity check's 400, shown as malformed.
    let bad = "OPTIONS sip:x@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKb\r\n\
               From: <sip:a@b>;tag=1\r\nTo: <sip:x@203.0.113.1>\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    e.handle_datagram(now, ext(Transport::Udp), bad.as_bytes());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.finals, [(503, true, false), (401, false, false), (401, false, true), (400, true, false)]);
    assert_eq!(seen.malformed.len(), 1, "{:?}", seen.malformed);
}

#[test]
fn under_overload_new_work_gets_503_retry_after_and_calls_in_progress_end() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), t0);
    // A call is set up before the pressure: INVITE, the core's 200, the caller's ACK.
    let fwd = start_call(&mut e, t0);
    let ok = respond(&fwd, 200, "OK", Some("core-tag-1"), "Contact: <sip:1000@10.0.0.10:5070>\r\n");
    e.handle_datagram(t0, core(CORE_A), ok.as_bytes());
    let out = drain(&mut e);
    let to_ua = &out[0].1;
    let target = header(to_ua, "Contact").unwrap().trim_matches(|c| c == '<' || c == '>').to_string();
    let to = header(to_ua, "To").unwrap().to_string();
    let in_dialog = |method: &str, cseq: u32, branch: &str| {
        format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch={branch}\r\nMax-Forwards: 70\r\n\
             From: <sip:alice@198.51.100.7>;tag=ua-tag\r\nTo: {to}\r\nCall-ID: ua-call@198.51.100.7\r\n\
             CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    e.handle_datagram(t0, ext(Transport::Udp), in_dialog("ACK", 1, "z9hG4bKack").as_bytes());
    assert_eq!(drain(&mut e).len(), 1, "the ACK reaches the core");

    e.set_overload(Some(Overload { retry_after: 7 }));
    let t1 = t0 + Duration::from_millis(10);
    let sizes = e.sizes();
    // A new INVITE: 503 with Retry-After, nothing forwarded, no transaction or dialog built.
    let new_call = invite("z9hG4bKnew").replace("ua-call@", "new-call@").replace("tag=ua-tag", "tag=new-tag");
    e.handle_datagram(t1, ext(Transport::Udp), new_call.as_bytes());
    let out = drain(&mut e);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].0, ext(Transport::Udp));
    assert_eq!(first_line(&out[0].1), "SIP/2.0 503 Service Unavailable");
    assert_eq!(header(&out[0].1, "Retry-After"), Some("7"));
    assert_eq!(header(&out[0].1, "Call-ID"), Some("new-call@198.51.100.7"));
    assert_eq!(e.sizes(), sizes);
    // A REGISTER and a SUBSCRIBE likewise.
    for method in ["REGISTER", "SUBSCRIBE"] {
        let req = new_call
            .replace("INVITE sip:1000@203.0.113.1", &format!("{method} sip:203.0.113.1"))
            .replace("CSeq: 1 INVITE", &format!("CSeq: 1 {method}"))
            .replace("z9hG4bKnew", &format!("z9hG4bK{method}"));
        e.handle_datagram(t1, ext(Transport::Udp), req.as_bytes());
        let out = drain(&mut e);
        assert_eq!(out.len(), 1, "{method}: {out:#?}");
        assert_eq!(first_line(&out[0].1), "SIP/2.0 503 Service Unavailable", "{method}");
    }
    assert_eq!(e.stats().overload_shed, 3);
    assert_eq!(e.sizes(), sizes);
    // A health check to the SBC itself is still answered.
    let ping = invite("z9hG4bKping")
        .replace("INVITE sip:1000@203.0.113.1", "OPTIONS sip:203.0.113.1")
        .replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS");
    e.handle_datagram(t1, ext(Transport::Udp), ping.as_bytes());
    let out = drain(&mut e);
    assert_eq!(first_line(&out[0].1), "SIP/2.0 200 OK");
    // The established call's BYE still reaches the core, and the core's 200 comes back.
    e.handle_datagram(t1, ext(Transport::Udp), in_dialog("BYE", 2, "z9hG4bKbye").as_bytes());
    let out = drain(&mut e);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].0, core(CORE_A));
    assert!(out[0].1.starts_with("BYE sip:1000@10.0.0.10:5070 SIP/2.0\r\n"), "{}", out[0].1);
    e.handle_datagram(t1, core(CORE_A), respond(&out[0].1, 200, "OK", None, "").as_bytes());
    let out = drain(&mut e);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].0, ext(Transport::Udp));
    assert_eq!(first_line(&out[0].1), "SIP/2.0 200 OK");
    assert_eq!(e.stats().overload_shed, 3);
    // Pressure gone: the same new INVITE is served.
    e.set_overload(None);
    e.handle_datagram(t1, ext(Transport::Udp), new_call.as_bytes());
    let out = drain(&mut e);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!(first_line(&out[0].1), "SIP/2.0 100 Trying");
    assert_eq!(out[1].0, core(CORE_A));
}

#[test]
fn an_offer_the_media_seam_refuses_is_answered_503_with_retry_after_and_not_forwarded() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(&[CORE_A], None), t0);
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    e.set_media_hook(Box::new(Recorder(log.clone())));
    let inv = invite("z9hG4bKfull")
        .replace("Content-Length: 0\r\n\r\n", "Content-Type: application/sdp\r\nContent-Length: 10\r\n\r\nv=0 full 1");
    e.handle_datagram(t0, ext(Transport::Udp), inv.as_bytes());
    let out = drain(&mut e);
    assert!(out.iter().all(|(f, _)| f.side == Side::External), "nothing reaches the core: {out:?}");
    let refusal = out.iter().map(|(_, m)| m).find(|m| m.starts_with("SIP/2.0 503")).expect("a 503");
    assert_eq!(header(refusal, "Retry-After"), Some("9"));
    let (_, clients, dialogs, _) = e.sizes();
    assert_eq!((clients, dialogs), (0, 0), "a refused INVITE holds no dialog and starts no transaction");
    // The same request again (a retransmission) gets the same answer, not a second look.
    e.handle_datagram(t0, ext(Transport::Udp), inv.as_bytes());
    let again = drain(&mut e);
    assert!(again.iter().any(|(_, m)| m.starts_with("SIP/2.0 503")), "{again:?}");
    // Another call's offer still goes through.
    let ok = invite("z9hG4bKnext")
        .replace("Call-ID: ", "Call-ID: other-")
        .replace("Content-Length: 0\r\n\r\n", "Content-Type: application/sdp\r\nContent-Length: 9\r\n\r\nv=0 offer");
    e.handle_datagram(t0, ext(Transport::Udp), ok.as_bytes());
    let fwd = drain(&mut e).into_iter().find(|(f, _)| f.side == Side::Internal).expect("forwarded").1;
    assert!(fwd.ends_with("v=0 rewritten"), "{fwd}");
}
