//! RFC 5118 IPv6 torture messages (tests/vectors/rfc5118, the wire form of the RFC's Appendix A
//! archive), each sent to the engine as one UDP datagram from an IPv6 peer on the external side.
//! The expected reaction is the one the RFC asks of a proxy (the `action` column of index.tsv),
//! pinned here per message; where the SBC forwards, what it forwards is checked too.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use sbc_proto::engine::{Config, Engine, Flow, Side};
use sbc_proto::sip::edit;
use sbc_proto::sip::uri::{Host, SipUri, Transport};
use sbc_proto::sip::{Datagram, HeaderName, Limits, Message, check, frame_datagram};
use sha2::{Digest, Sha256};

mod torture;
use torture::Expect::{self, *};
use torture::{react, vectors};

/// The source of every datagram: an IPv6 address none of the messages names, so each top Via
/// gets a `received` (RFC 3261 §18.2.1).
const PEER: &str = "[2001:db8::99]:5060";

/// name, reaction, and for a forwarded request the Request-URI it carries: (address, port).
type Row = (&'static str, Expect, Option<(&'static str, Option<u16>)>);

const TABLE: &[Row] = &[
    // §4.1: IPv6 references in the Request-URI, the Via sent-by and the Contact.
    ("ipv6-good", Forward, Some(("2001:db8::10", None))),
    // §4.2: the only invalid message: an IPv6 address without "[" "]" in the Request-URI.
    ("ipv6-bad", Reply(400), None),
    // §4.3: everything inside the brackets is the address; 5070 is never read as a port.
    ("port-ambiguous", Forward, Some(("2001:db8::10:5070", None))),
    // §4.4: the port is outside the closing bracket.
    ("port-unambiguous", Forward, Some(("2001:db8::10", Some(5070)))),
    // §4.5: received=[...] tolerated; a BYE with a To tag for a dialog this dialog-stateful SBC
    // never saw is answered 481 (RFC 3261 §12.2.2), which shows the Via parsed.
    ("via-received-param-with-delim", Reply(481), None),
    ("via-received-param-no-delim", Forward, Some(("2001:db8::10", None))),
    // §4.6: SDP with IPv6 addresses (no brackets, SDP syntax).
    ("ipv6-in-sdp", Forward, Some(("2001:db8::10", None))),
    // §4.7: IPv6 and IPv4 Vias mixed; in-dialog BYE for an unknown dialog: 481.
    ("mult-ip-in-header", Reply(481), None),
    // §4.8: IPv4 and IPv6 c= lines per media.
    ("mult-ip-in-sdp", Forward, Some(("2001:db8::10", None))),
    // §4.9: IPv4-mapped IPv6 addresses in the Vias, the Contact and the SDP; the Request-URI is
    // a domain.
    ("ipv4-mapped-ipv6", Forward, None),
    // §4.10: the three-colon form RFC 3261's ABNF allowed is tolerated, read as the two-colon one.
    ("ipv6-bug-abnf-3-colons", Forward, Some(("2001:db8::192.0.2.1", None))),
    ("ipv6-correct-abnf-2-colons", Forward, Some(("2001:db8::192.0.2.1", None))),
];

fn flow() -> Flow {
    Flow {
        side: Side::External,
        transport: Transport::Udp,
        local: "203.0.113.1:5060".parse().unwrap(),
        remote: PEER.parse::<SocketAddr>().unwrap(),
    }
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(vectors("rfc5118").join(format!("{name}.sip"))).unwrap()
}

/// A message that must frame (sanity not checked).
fn indexed(data: &[u8]) -> Message<'_> {
    match frame_datagram(data, &Limits::default()) {
        Datagram::Message(m) => m,
        other => panic!("{other:?}"),
    }
}

/// A message that must frame and pass the sanity checks.
fn parsed(data: &[u8]) -> Message<'_> {
    check(indexed(data)).map_err(|b| b.1).unwrap().msg
}

/// The unfolded values of every header `name`.
fn values(m: &Message<'_>, name: HeaderName) -> Vec<String> {
    m.all(name).map(|h| String::from_utf8_lossy(&m.unfolded(h)).into_owned()).collect()
}

#[test]
fn copies_are_byte_exact_per_bytes_tsv() {
    let tsv = std::fs::read_to_string(vectors("rfc5118").join("bytes.tsv")).unwrap();
    let mut n = 0;
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (name, size, sha) = (cols[0], cols[1], cols[2]);
        let data = read(name);
        assert_eq!(data.len().to_string(), size, "{name}: size");
        let hex: String = Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, sha, "{name}: SHA-256");
        n += 1;
    }
    assert_eq!(n, 12);
}

#[test]
fn every_vector_has_an_expectation() {
    let names = torture::index_names("rfc5118");
    assert_eq!(names.len(), 12);
    for n in &names {
        assert!(TABLE.iter().any(|(t, _, _)| t == n), "{n} has no expectation");
    }
    assert_eq!(TABLE.len(), names.len());
    // Every .sip file in the directory is in the index (so in the table).
    for entry in std::fs::read_dir(vectors("rfc5118")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "sip") {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            assert!(names.contains(&stem), "{stem}.sip is not in index.tsv");
        }
    }
}

#[test]
fn only_what_the_rfc_calls_invalid_gets_400() {
    let tsv = std::fs::read_to_string(vectors("rfc5118").join("index.tsv")).unwrap();
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (_, expect, _) = TABLE.iter().find(|(t, _, _)| *t == cols[0]).unwrap();
        assert_eq!(cols[1] == "invalid", *expect == Reply(400), "{}", cols[0]);
    }
}

#[test]
fn ipv6_torture_messages_get_the_rfc_reaction() {
    let mut failures = Vec::new();
    for (name, expect, _) in TABLE {
        match react(flow(), &read(name)) {
            Ok(r) if r.got == *expect => {}
            Ok(r) => failures.push(format!("{name}: expected {expect:?}, got {:?}", r.got)),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// What reaches the core carries our Via only (the external side is hidden) and the Request-URI
/// the sender wrote, which parses to the address RFC 5118 means.
#[test]
fn forwarded_requests_carry_our_via_and_the_right_request_uri() {
    for (name, expect, ruri) in TABLE {
        if *expect != Forward {
            continue;
        }
        let r = react(flow(), &read(name)).unwrap();
        let out = parsed(&r.forwarded[0]);
        let vias = values(&out, HeaderName::Via);
        assert_eq!(vias.len(), 1, "{name}: {vias:?}");
        assert!(vias[0].starts_with("SIP/2.0/UDP 10.99.0.1:5060;branch=z9hG4bK"), "{name}: {vias:?}");
        let target = SipUri::parse(out.request_uri()).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some((ip, port)) = ruri {
            assert_eq!(target.host, Host::Ip(ip.parse::<IpAddr>().unwrap()), "{name}");
            assert_eq!(target.port, *port, "{name}");
        }
        let text = String::from_utf8_lossy(&r.forwarded[0]).into_owned();
        assert!(!text.contains("2001:db8::9:1") && !text.contains("::ffff:192.0.2.10"), "{name}: a Via leaked");
    }
}

/// RFC 5118 §4.5: what the SBC writes into `received` has no brackets, whatever the sender put
/// in the Via; the rest of the Via list is returned as received.
#[test]
fn replies_stamp_received_without_brackets_rfc5118_4_5() {
    for (name, expect, _) in TABLE {
        let Reply(_) = expect else { continue };
        let data = read(name);
        let r = react(flow(), &data).unwrap();
        let reply = parsed(&r.replies[0]);
        let out = values(&reply, HeaderName::Via);
        let sent = values(&indexed(&data), HeaderName::Via);
        assert_eq!(out.len(), sent.len(), "{name}");
        assert!(out[0].contains(";received=2001:db8::99") && !out[0].contains("received=["), "{name}: {}", out[0]);
        assert_eq!(out[1..], sent[1..], "{name}");
    }
}

/// RFC 5118 §4.5 on the forwarding path: the core's answer to a forwarded request goes back with
/// the sender's Vias, the top one carrying the `received` we wrote (no brackets) instead of the
/// one the sender wrote.
#[test]
fn forwarded_responses_carry_received_without_brackets_rfc5118_4_5() {
    let data = read("via-received-param-no-delim");
    let now = Instant::now();
    let mut e = Engine::new(Config::example(), now);
    e.handle_datagram(now, flow(), &data);
    let (forwarded, _) = torture::sent(&mut e);
    let core: SocketAddr = "10.99.0.10:5070".parse().unwrap();
    let ok = edit::reply(&indexed(&forwarded[0]), core, 200, "OK", Some(b"c1"), &[]);
    let from_core = Flow {
        side: Side::Internal,
        transport: Transport::Udp,
        local: "10.99.0.1:5060".parse().unwrap(),
        remote: core,
    };
    e.handle_datagram(now, from_core, &ok);
    let (_, back) = torture::sent(&mut e);
    assert_eq!(back.len(), 1);
    let vias = values(&parsed(&back[0]), HeaderName::Via);
    assert_eq!(vias, ["SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3;received=2001:db8::99"]);
}
