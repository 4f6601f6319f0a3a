//! RFC 4475 torture messages, byte-exact from the RFC's archive (tests/vectors/rfc4475), each
//! sent to the engine as one UDP datagram from the external side. The expected reaction is the
//! one the RFC asks of a proxy (the `action` column of index.tsv), pinned here per message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use sbc_proto::engine::{Config, Engine, Flow, Output, Side};
use sbc_proto::sip::framer::Limits;
use sbc_proto::sip::uri::Transport;

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Forwarded to the core (after a 100 Trying for INVITE).
    Forward,
    /// Answered by the SBC with this status, nothing forwarded.
    Reply(u16),
    /// Nothing sent anywhere.
    Drop,
}
use Expect::*;

const TABLE: &[(&str, Expect)] = &[
    // Well-formed (asserted below), but it carries a To tag: an in-dialog request for a dialog
    // this dialog-stateful SBC never saw is answered 481 (RFC 3261 §12.2.2) rather than routed.
    ("wsinv", Reply(481)),
    ("intmeth", Forward),
    ("esc01", Forward),
    ("escnull", Forward),
    ("esc02", Forward),
    ("lwsdisp", Forward),
    ("longreq", Forward),
    ("dblreq", Forward),
    ("semiuri", Forward),
    ("transports", Forward),
    ("mpart01", Forward),
    // Valid responses, but no transaction here: a transaction-stateful proxy drops strays.
    // That they parse is asserted separately below.
    ("unreason", Drop),
    ("noreason", Drop),
    ("badinv01", Reply(400)),
    ("clerr", Reply(400)),
    ("ncl", Reply(400)),
    ("scalar02", Reply(400)),
    ("scalarlg", Drop),
    ("quotbal", Reply(400)),
    ("ltgtruri", Reply(400)),
    ("lwsruri", Reply(400)),
    ("lwsstart", Reply(400)),
    ("trws", Reply(400)),
    ("escruri", Reply(400)),
    ("baddate", Forward),
    ("regbadct", Reply(400)),
    ("badaspec", Reply(400)),
    ("baddn", Reply(400)),
    ("badvers", Reply(505)),
    ("mismatch01", Reply(400)),
    ("mismatch02", Reply(501)),
    ("bigcode", Drop),
    ("badbranch", Reply(400)),
    ("insuf", Reply(400)),
    ("unkscm", Reply(416)),
    ("novelsc", Reply(416)),
    ("unksm2", Forward),
    ("bext01", Reply(420)),
    ("invut", Forward),
    ("regaut01", Forward),
    ("multi01", Reply(400)),
    ("mcl01", Reply(400)),
    ("bcast", Drop),
    ("zeromf", Reply(483)),
    ("cparam01", Forward),
    ("cparam02", Forward),
    ("regescrt", Forward),
    ("sdp01", Forward),
    ("inv2543", Forward),
    // "reject with 400 or drop": it has no Via, so there is nowhere to send a response.
    ("test", Drop),
];

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/rfc4475")
}

fn engine(now: Instant) -> Engine {
    Engine::new(Config::example(), now)
}

fn flow() -> Flow {
    Flow {
        side: Side::External,
        transport: Transport::Udp,
        local: "203.0.113.1:5060".parse().unwrap(),
        remote: "203.0.113.10:5060".parse::<SocketAddr>().unwrap(),
    }
}

fn status(data: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(data.get(..12)?).ok()?;
    s.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

#[test]
fn every_archive_member_has_an_expectation() {
    let tsv = std::fs::read_to_string(vectors().join("index.tsv")).unwrap();
    let names: Vec<&str> = tsv.lines().skip(1).filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(names.len(), 50);
    for n in &names {
        assert!(TABLE.iter().any(|(t, _)| t == n), "{n} has no expectation");
        assert!(vectors().join(format!("{n}.sip")).exists());
    }
    assert_eq!(TABLE.len(), names.len());
}

#[test]
fn torture_messages_get_the_rfc_reaction() {
    let mut failures = Vec::new();
    for (name, expect) in TABLE {
        let data = std::fs::read(vectors().join(format!("{name}.sip"))).unwrap();
        let now = Instant::now();
        let mut e = engine(now);
        e.handle_datagram(now, flow(), &data);
        let mut forwarded = Vec::new();
        let mut replies = Vec::new();
        while let Some(out) = e.poll_output() {
            let Output::Transmit(t) = out else {
                if matches!(out, Output::Timeout(_)) {
                    break;
                }
                continue;
            };
            match t.flow.side {
                Side::Internal => forwarded.push(t.data),
                Side::External => replies.push(status(&t.data)),
            }
        }
        let got = match (forwarded.len(), replies.as_slice()) {
            (1, []) | (1, [Some(100)]) => Forward,
            (0, [Some(code)]) => Reply(*code),
            (0, []) => Drop,
            _ => {
                failures.push(format!("{name}: forwarded {} replies {replies:?}", forwarded.len()));
                continue;
            }
        };
        if got != *expect {
            failures.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
        if *name == "mpart01" {
            // The binary body (NUL, bare CR and LF) is forwarded byte-exact.
            let body_in = &data[data.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
            let out = &forwarded[0];
            let body_out = &out[out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
            assert_eq!(body_out, &body_in[..553.min(body_in.len())]);
        }
        if *name == "dblreq" {
            assert!(forwarded[0].starts_with(b"REGISTER "), "only the REGISTER is processed");
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn valid_messages_we_do_not_forward_still_parse_and_pass_sanity() {
    for name in ["unreason", "noreason", "wsinv"] {
        let data = std::fs::read(vectors().join(format!("{name}.sip"))).unwrap();
        match sbc_proto::sip::frame_datagram(&data, &Limits::default()) {
            sbc_proto::sip::Datagram::Message(m) => {
                sbc_proto::sip::check(m).map_err(|b| b.1).unwrap();
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}
