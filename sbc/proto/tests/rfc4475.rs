//! RFC 4475 torture messages, byte-exact from the RFC's archive (tests/vectors/rfc4475), each
//! sent to the engine as one UDP datagram from the external side. The expected reaction is the
//! one the RFC asks of a proxy (the `action` column of index.tsv), pinned here per message.

use std::net::SocketAddr;

use sbc_proto::engine::{Flow, Side};
use sbc_proto::sip::framer::Limits;
use sbc_proto::sip::uri::Transport;

mod torture;
use torture::Expect::{self, *};
use torture::{react, vectors};

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

fn flow() -> Flow {
    Flow {
        side: Side::External,
        transport: Transport::Udp,
        local: "203.0.113.1:5060".parse().unwrap(),
        remote: "203.0.113.10:5060".parse::<SocketAddr>().unwrap(),
    }
}

#[test]
fn every_archive_member_has_an_expectation() {
    let names = torture::index_names("rfc4475");
    assert_eq!(names.len(), 50);
    for n in &names {
        assert!(TABLE.iter().any(|(t, _)| t == n), "{n} has no expectation");
        assert!(vectors("rfc4475").join(format!("{n}.sip")).exists());
    }
    assert_eq!(TABLE.len(), names.len());
}

#[test]
fn torture_messages_get_the_rfc_reaction() {
    let mut failures = Vec::new();
    for (name, expect) in TABLE {
        let data = std::fs::read(vectors("rfc4475").join(format!("{name}.sip"))).unwrap();
        let (got, forwarded) = match react(flow(), &data) {
            Ok(r) => (r.got, r.forwarded),
            Err(e) => {
                failures.push(format!("{name}: {e}"));
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
        let data = std::fs::read(vectors("rfc4475").join(format!("{name}.sip"))).unwrap();
        match sbc_proto::sip::frame_datagram(&data, &Limits::default()) {
            sbc_proto::sip::Datagram::Message(m) => {
                sbc_proto::sip::check(m).map_err(|b| b.1).unwrap();
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}
