//! A fixed, deterministic call scenario driven through the sans-IO engine in one process, for
//! counting instructions per call with callgrind (`just bench-sip` does; see bench/sip/run.sh):
//! no sockets, no threads, a virtual clock, the same bytes every run.
//!
//! Each call: a UA outside sends INVITE (the SBC answers 100 and forwards it to the core); the
//! core answers 100, 180 and 200; the UA ACKs and later sends BYE, which the core answers 200 —
//! 7 messages into the engine and 7 out, as a call through the SBC in `bench-sip` has.
//!
//!   cargo build --release -p sbc-proto --example engine_calls
//!   valgrind --tool=callgrind target/release/examples/engine_calls 2000
//!
//! Prints the calls completed; exits non-zero if any call did not go through as expected.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sbc_proto::engine::{Config, Engine, Flow, Output, Side};
use sbc_proto::sip::uri::Transport;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| panic!("bad address {s}"))
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

/// A response to `req` copying its Via/From/Call-ID/CSeq, the To with `to_tag`, and `extra`.
fn respond(req: &str, code: u16, reason: &str, to_tag: Option<&str>, extra: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for l in req.lines().filter(|l| l.starts_with("Via: ")) {
        out.push_str(l);
        out.push_str("\r\n");
    }
    for name in ["From", "Call-ID", "CSeq"] {
        if let Some(v) = header(req, name) {
            out.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    let to = header(req, "To").unwrap_or_default();
    match to_tag {
        Some(t) => out.push_str(&format!("To: {to};tag={t}\r\n")),
        None => out.push_str(&format!("To: {to}\r\n")),
    }
    out.push_str(extra);
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// Drains the engine: (side, message) of every transmit.
fn drain(e: &mut Engine) -> Vec<(Side, String)> {
    let mut out = Vec::new();
    while let Some(o) = e.poll_output() {
        match o {
            Output::Transmit(t) => out.push((t.flow.side, String::from_utf8_lossy(&t.data).into_owned())),
            Output::Timeout(_) => break,
            _ => {}
        }
    }
    out
}

fn take(out: &[(Side, String)], side: Side, start: &str) -> Option<String> {
    out.iter().find(|(s, m)| *s == side && m.starts_with(start)).map(|(_, m)| m.clone())
}

fn main() {
    let calls: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let mut cfg = Config::example();
    cfg.max_transactions = 1_000_000;
    cfg.max_dialogs = 1_000_000;
    let t0 = Instant::now();
    let mut now = t0;
    let mut e = Engine::new(cfg, now);
    let ua = Flow {
        side: Side::External,
        transport: Transport::Udp,
        local: addr("203.0.113.1:5060"),
        remote: addr("198.51.100.7:5060"),
    };
    let core = Flow {
        side: Side::Internal,
        transport: Transport::Udp,
        local: addr("10.99.0.1:5060"),
        remote: addr("10.99.0.10:5070"),
    };
    let mut ok = 0u32;
    for n in 0..calls {
        now += Duration::from_millis(1);
        let invite = format!(
            "INVITE sip:1000@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-{n}-inv\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@198.51.100.7>;tag=ua-{n}\r\nTo: <sip:1000@203.0.113.1>\r\n\
             Call-ID: {n}-bench@198.51.100.7\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@198.51.100.7:5060>\r\n\
             User-Agent: bench\r\nContent-Length: 0\r\n\r\n"
        );
        e.handle_datagram(now, ua, invite.as_bytes());
        let out = drain(&mut e);
        let Some(fwd) = take(&out, Side::Internal, "INVITE ") else { continue };
        let tag = format!("core-{n}");
        e.handle_datagram(now, core, respond(&fwd, 100, "Trying", None, "").as_bytes());
        e.handle_datagram(now, core, respond(&fwd, 180, "Ringing", Some(&tag), "").as_bytes());
        let contact = "Contact: <sip:1000@10.99.0.10:5070>\r\n";
        e.handle_datagram(now, core, respond(&fwd, 200, "OK", Some(&tag), contact).as_bytes());
        let out = drain(&mut e);
        let Some(ok200) = take(&out, Side::External, "SIP/2.0 200") else { continue };
        let Some(target) = header(&ok200, "Contact").map(|c| c.trim_matches(|ch| ch == '<' || ch == '>')) else {
            continue;
        };
        let Some(to) = header(&ok200, "To") else { continue };
        let ack = format!(
            "ACK {target} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-{n}-ack\r\nMax-Forwards: 70\r\n\
             From: <sip:alice@198.51.100.7>;tag=ua-{n}\r\nTo: {to}\r\nCall-ID: {n}-bench@198.51.100.7\r\n\
             CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        e.handle_datagram(now, ua, ack.as_bytes());
        let bye = ack.replace("-ack", "-bye").replace("ACK ", "BYE ").replace("CSeq: 1 ACK", "CSeq: 2 BYE");
        e.handle_datagram(now, ua, bye.as_bytes());
        let out = drain(&mut e);
        let Some(fwd_bye) = take(&out, Side::Internal, "BYE ") else { continue };
        e.handle_datagram(now, core, respond(&fwd_bye, 200, "OK", None, "").as_bytes());
        let out = drain(&mut e);
        if take(&out, Side::External, "SIP/2.0 200").is_some() {
            ok += 1;
        }
        if n % 64 == 0 {
            e.handle_timeout(now);
            drain(&mut e);
        }
    }
    // Let every transaction end, as it would on a live SBC.
    now += Duration::from_secs(64);
    e.handle_timeout(now);
    drain(&mut e);
    println!("calls {calls} ok {ok} sizes {:?}", e.sizes());
    if ok != calls {
        std::process::exit(1);
    }
}
