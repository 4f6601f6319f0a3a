//! Fuzzes the whole proxy engine (sbc_proto::engine) with the configuration of the RFC 4475
//! conformance test: the input arrives as a UDP datagram from the external side, then its
//! second half arrives from the internal side (the core). Every request the engine forwards to
//! the core is answered by a synthetic core (a status chosen by the input), so responses,
//! dialogs and topology hiding are reached too; then the clock jumps 40 s to fire the timers.
//! Nothing may panic.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sbc_proto::engine::{Config, Engine, Flow, Output, Side, Transmit};
use sbc_proto::sip::edit::reply;
use sbc_proto::sip::framer::{Datagram, Limits, frame_datagram};
use sbc_proto::sip::uri::Transport;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

fn engine(now: Instant) -> Engine {
    Engine::new(Config::example(), now)
}

fn external() -> Flow {
    Flow {
        side: Side::External,
        transport: Transport::Udp,
        local: addr("203.0.113.1:5060"),
        remote: addr("203.0.113.10:5060"),
    }
}

fn internal() -> Flow {
    Flow {
        side: Side::Internal,
        transport: Transport::Udp,
        local: addr("10.99.0.1:5060"),
        remote: addr("10.99.0.10:5070"),
    }
}

const CODES: &[(u16, &str)] =
    &[(100, "Trying"), (180, "Ringing"), (200, "OK"), (486, "Busy Here"), (503, "Service Unavailable")];

/// What the engine sends now (events and guard actions are read and dropped), and when it
/// wants to be woken.
fn outputs(e: &mut Engine) -> (Vec<Transmit>, Option<Instant>) {
    let mut sent = Vec::new();
    while let Some(o) = e.poll_output() {
        match o {
            Output::Transmit(t) => sent.push(t),
            Output::Timeout(at) => return (sent, Some(at)),
            Output::Event(_) | Output::Guard(_) => {}
        }
    }
    (sent, None)
}

/// Drains what the engine sends; requests sent to the internal side are answered once by a
/// synthetic core with `code`, and those answers are handed back to the engine.
fn pump(e: &mut Engine, now: Instant, code: (u16, &str), answer: bool) {
    let mut answers = Vec::new();
    for t in outputs(e).0 {
        assert!(!t.data.is_empty(), "engine transmits an empty datagram");
        if answer && t.flow.side == Side::Internal {
            if let Datagram::Message(m) = frame_datagram(&t.data, &Limits::default()) {
                if m.is_request() && m.method_bytes() != b"ACK" {
                    let flow = Flow { remote: t.flow.remote, local: t.flow.local, ..internal() };
                    answers.push((
                        flow,
                        reply(&m, t.flow.local, code.0, code.1, Some(b"core-tag"), &[("Contact", b"<sip:core@10.99.0.10:5070>")]),
                    ));
                }
            }
        }
    }
    for (flow, a) in answers {
        e.handle_datagram(now, flow, &a);
        outputs(e);
    }
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut e = engine(t0);
    let code = CODES[data.last().map_or(0, |&b| usize::from(b) % CODES.len())];

    e.handle_datagram(t0, external(), data);
    pump(&mut e, t0, code, true);

    let t1 = t0 + Duration::from_millis(10);
    e.handle_datagram(t1, internal(), &data[data.len() / 2..]);
    pump(&mut e, t1, code, false);

    // A retransmission of the original input, then the timers.
    e.handle_datagram(t1, external(), data);
    pump(&mut e, t1, code, false);
    if let (_, Some(t)) = outputs(&mut e) {
        assert!(t >= t0, "timer scheduled in the past");
    }
    e.handle_timeout(t0 + Duration::from_secs(40));
    pump(&mut e, t0 + Duration::from_secs(40), code, false);
    let _ = (e.stats(), e.sizes());
});
