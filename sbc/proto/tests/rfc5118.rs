//! RFC 5118 IPv6 torture messages (tests/vectors/rfc5118, the wire form of the RFC's Appendix A
//! archive), each sent to the engine as one UDP datagram from an IPv6 peer to the SBC's IPv6
//! external address. The expected reaction is the one the RFC asks of a proxy (the `action`
//! column of index.tsv), pinned here per message; where the SBC forwards, what it forwards is
//! checked too, toward an IPv6 core (the Request-URI as written) and toward an IPv4 core (no
//! IPv6 address in the header section). Then what the RFC's messages imply beyond one
//! datagram: IPv4-mapped addresses, a "port" inside the brackets, Record-Route and Route with
//! IPv6 hosts across a dialog, the three-colon sent-by in transaction matching.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use sbc_proto::engine::{Config, CoreTarget, Engine, Flow, Side, SideConfig};
use sbc_proto::sip::edit;
use sbc_proto::sip::uri::{Host, SipUri, Transport};
use sbc_proto::sip::{Datagram, HeaderName, Limits, Message, check, frame_datagram};
use sha2::{Digest, Sha256};

mod torture;
use torture::Expect::{self, *};
use torture::{react_with, vectors};

/// The SBC's external address (IPv6) and its internal one, IPv6 or IPv4 with the core.
const SBC_EXT: &str = "[2001:db8::1]:5060";
const SBC_INT6: &str = "[fd00:99::1]:5060";
const CORE6: &str = "[fd00:99::10]:5070";
const SBC_INT4: &str = "10.99.0.1:5060";
const CORE4: &str = "10.99.0.10:5070";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// IPv6 outside; inside an IPv6 core (`core_v6`) or an IPv4 one.
fn config(core_v6: bool) -> Config {
    let (int, core) = if core_v6 { (SBC_INT6, CORE6) } else { (SBC_INT4, CORE4) };
    let side = |addr: &str, base: SideConfig| SideConfig {
        advertise: sa(addr).ip().to_string(),
        udp: vec![sa(addr)],
        tcp: Vec::new(),
        ..base
    };
    Config {
        external: side(SBC_EXT, Config::example().external),
        internal: side(int, Config::example().internal),
        cores: vec![CoreTarget { addr: sa(core), transport: Transport::Udp }],
        ..Config::example()
    }
}

fn react(flow: Flow, data: &[u8]) -> Result<torture::Reaction, String> {
    react_with(config(true), flow, data)
}

fn core_flow(core_v6: bool) -> Flow {
    let (local, remote) = if core_v6 { (SBC_INT6, CORE6) } else { (SBC_INT4, CORE4) };
    Flow { side: Side::Internal, transport: Transport::Udp, local: sa(local), remote: sa(remote) }
}

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
        local: sa(SBC_EXT),
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
    // Whatever the core's family: the reaction is about the message.
    for ((name, expect, _), core_v6) in TABLE.iter().flat_map(|row| [(row, true), (row, false)]) {
        match react_with(config(core_v6), flow(), &read(name)) {
            Ok(r) if r.got == *expect => {}
            Ok(r) => failures.push(format!("{name} (IPv6 core {core_v6}): expected {expect:?}, got {:?}", r.got)),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// What reaches an IPv6 core carries our Via only (the external side is hidden), bracketed, our
/// Contact, bracketed, and the Request-URI the sender wrote, which parses to the address RFC
/// 5118 means.
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
        assert!(vias[0].starts_with("SIP/2.0/UDP [fd00:99::1]:5060;branch=z9hG4bK"), "{name}: {vias:?}");
        for c in values(&out, HeaderName::Contact) {
            assert!(c.starts_with("<sip:") && c.ends_with("[fd00:99::1]:5060>"), "{name}: {c}");
        }
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
    let mut e = Engine::new(config(false), now);
    e.handle_datagram(now, flow(), &data);
    let (forwarded, _) = torture::sent(&mut e);
    let ok = edit::reply(&indexed(&forwarded[0]), sa(CORE4), 200, "OK", Some(b"c1"), &[]);
    e.handle_datagram(now, core_flow(false), &ok);
    let (_, back) = torture::sent(&mut e);
    assert_eq!(back.len(), 1);
    let vias = values(&parsed(&back[0]), HeaderName::Via);
    assert_eq!(vias, ["SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3;received=2001:db8::99"]);
}

/// The header section of a message (what precedes the empty line).
fn head(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    text.split("\r\n\r\n").next().unwrap_or_default().to_string()
}

/// IPv4/IPv6 interworking: toward an IPv4 core no IPv6 address is left in the header section
/// (the SBC's Via and Contact are IPv4, a Request-URI or identity naming an IPv6 address names
/// the SBC's internal address instead); the body is forwarded byte-exact (SDP is the media
/// relay's to rewrite: no brackets are added to it, RFC 5118 §4.6).
#[test]
fn toward_an_ipv4_core_no_ipv6_address_is_left_in_the_header_section() {
    for (name, expect, ruri) in TABLE {
        if *expect != Forward {
            continue;
        }
        let data = read(name);
        let r = react_with(config(false), flow(), &data).unwrap();
        let out = &r.forwarded[0];
        let h = head(out);
        for v6 in ["2001:db8:", "::ffff:", "fd00:", "["] {
            assert!(!h.contains(v6), "{name}: {v6:?} in\n{h}");
        }
        assert!(h.contains("Via: SIP/2.0/UDP 10.99.0.1:5060;branch=z9hG4bK"), "{name}:\n{h}");
        if ruri.is_some() {
            let target = SipUri::parse(parsed(out).request_uri()).unwrap();
            assert_eq!((target.host, target.port), (Host::Ip(sa(SBC_INT4).ip()), Some(5060)), "{name}");
        }
        assert_eq!(parsed(out).body(), indexed(&data).body(), "{name}: body changed");
    }
}

/// RFC 5118 §4.9: IPv4-mapped IPv6 addresses are IPv6 references like any other: the Via's
/// sent-by (port included) and the Contact parse, and the reply stamps `received` on that Via.
#[test]
fn ipv4_mapped_addresses_parse_as_ipv6_references_rfc5118_4_9() {
    let data = read("ipv4-mapped-ipv6");
    let c = check(indexed(&data)).map_err(|b| b.1).unwrap();
    assert_eq!(c.sent_by, b"[::ffff:192.0.2.10]:19823");
    assert_eq!(c.sent_by_port, 19823);
    let contact = values(&c.msg, HeaderName::Contact).remove(0);
    let uri = contact.split(['<', '>']).nth(1).unwrap();
    let mapped: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
    assert_eq!(SipUri::parse(uri.as_bytes()).unwrap().host, Host::Ip(mapped));
    // Sent again with a To tag (an in-dialog request for no dialog): 481, with the mapped
    // sent-by kept and received stamped.
    let text = String::from_utf8_lossy(&data).replace("To: sip:user@example.com", "To: sip:user@example.com;tag=x");
    let r = react(flow(), text.as_bytes()).unwrap();
    assert_eq!(r.got, Reply(481));
    let via = values(&parsed(&r.replies[0]), HeaderName::Via).remove(0);
    assert_eq!(via, "SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19;received=2001:db8::99");
}

/// RFC 5118 §4.3: everything inside "[" "]" is the address. A sent-by `[2001:db8::9:1]` has no
/// port (the default is used where a response must be sent by port), in the Via as in the URI.
#[test]
fn a_port_inside_the_brackets_is_never_read_as_a_port_rfc5118_4_3() {
    let good = read("ipv6-good");
    let c = check(indexed(&good)).map_err(|b| b.1).unwrap();
    assert_eq!((c.sent_by.as_slice(), c.sent_by_port), (&b"[2001:db8::9:1]:5060"[..], 5060));
    let mult = read("mult-ip-in-header");
    let c = check(indexed(&mult)).map_err(|b| b.1).unwrap();
    assert_eq!((c.sent_by.as_slice(), c.sent_by_port), (&b"[2001:db8::9:1]:6050"[..], 6050));
    let u = SipUri::parse(b"sip:[2001:db8::10:5070];transport=tcp").unwrap();
    assert_eq!((&u.host, u.port), (&Host::Ip("2001:db8::10:5070".parse().unwrap()), None));
    assert_eq!(u.socket_addr(), Some(sa("[2001:db8::10:5070]:5060")));
}

fn invite_from(via_host: &str, branch: &str, method: &str) -> Vec<u8> {
    format!(
        "{method} sip:bob@[2001:db8::1]:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [{via_host}]:5060;branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@[2001:db8::99]>;tag=a1\r\nTo: <sip:bob@[2001:db8::1]>\r\n\
         Call-ID: c3@[2001:db8::99]\r\nCSeq: 1 {method}\r\nContact: <sip:alice@[2001:db8::99]:5060>\r\n\
         Record-Route: <sip:[2001:db8::20]:5070;lr>, <sip:[2001:db8::21];lr>\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// RFC 5118 §4.10 / RFC 3261 §17.2.3: transactions match on the sent-by as an address: the
/// three-colon form, the two-colon form and the canonical form of one address are one sent-by.
/// A retransmission written the other way is absorbed (its 100 Trying repeated, nothing
/// forwarded again), and a CANCEL written a third way finds its INVITE.
#[test]
fn the_three_colon_sent_by_matches_its_two_colon_form_rfc5118_4_10() {
    let now = Instant::now();
    let mut e = Engine::new(config(false), now);
    e.handle_datagram(now, flow(), &invite_from("2001:db8:::192.0.2.1", "z9hG4bK3c", "INVITE"));
    let (fwd, back) = torture::sent(&mut e);
    assert_eq!((fwd.len(), back.len()), (1, 1));
    e.handle_datagram(now, flow(), &invite_from("2001:DB8::192.0.2.1", "z9hG4bK3c", "INVITE"));
    let (fwd2, back2) = torture::sent(&mut e);
    assert_eq!(fwd2.len(), 0, "a retransmission was forwarded again");
    assert_eq!(back2.iter().map(|r| torture::status(r)).collect::<Vec<_>>(), [Some(100)]);
    e.handle_datagram(now, flow(), &invite_from("2001:db8::c000:201", "z9hG4bK3c", "CANCEL"));
    let (_, back3) = torture::sent(&mut e);
    assert_eq!(back3.iter().map(|r| torture::status(r)).collect::<Vec<_>>(), [Some(200)], "CANCEL did not match");
}

/// Record-Route and Route with IPv6 hosts across a dialog (RFC 3261 §16.6, §16.7; RFC 5118
/// §4.1): the caller's Record-Route never reaches the (IPv4) core and comes back byte-exact on
/// the 2xx; the core's BYE reaches the caller on its flow with that route set as Route
/// (§12.1.1, in order; bracketed hosts, ports after the bracket), the caller's Contact as Request-URI, and our Via
/// with a bracketed IPv6 sent-by.
#[test]
fn record_route_and_route_with_ipv6_hosts_cross_a_dialog() {
    let now = Instant::now();
    let mut e = Engine::new(config(false), now);
    e.handle_datagram(now, flow(), &invite_from("2001:db8::99", "z9hG4bKrr", "INVITE"));
    let (fwd, _) = torture::sent(&mut e);
    assert!(!head(&fwd[0]).contains("Record-Route") && !head(&fwd[0]).contains('['), "{}", head(&fwd[0]));
    let inv = indexed(&fwd[0]);
    let ok = edit::reply(&inv, sa(CORE4), 200, "OK", Some(b"core1"), &[("Contact", b"<sip:bob@10.99.0.10:5070>")]);
    e.handle_datagram(now, core_flow(false), &ok);
    let (_, back) = torture::sent(&mut e);
    let resp = parsed(&back[0]);
    // The same list, one value per line (RFC 3261 §7.3.1).
    assert_eq!(values(&resp, HeaderName::RecordRoute), ["<sip:[2001:db8::20]:5070;lr>", "<sip:[2001:db8::21];lr>"]);
    let contact = values(&resp, HeaderName::Contact).remove(0);
    assert!(contact.starts_with("<sip:") && contact.ends_with("@[2001:db8::1]:5060>"), "{contact}");
    // The core hangs up: BYE to our Contact.
    let to = values(&parsed(&fwd[0]), HeaderName::From).remove(0);
    let from = values(&parsed(&ok), HeaderName::To).remove(0);
    let call_id = values(&parsed(&fwd[0]), HeaderName::CallId).remove(0);
    let our_contact = values(&parsed(&fwd[0]), HeaderName::Contact).remove(0);
    let target = our_contact.trim_matches(['<', '>']);
    let bye = format!(
        "BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP 10.99.0.10:5070;branch=z9hG4bKcb1\r\nMax-Forwards: 70\r\n\
         From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    e.handle_datagram(now, core_flow(false), bye.as_bytes());
    let (_, out) = torture::sent(&mut e);
    let bye_out = parsed(&out[0]);
    assert_eq!(bye_out.request_uri(), b"sip:alice@[2001:db8::99]:5060");
    // §12.1.1: the UAS's route set is the Record-Route in order.
    assert_eq!(values(&bye_out, HeaderName::Route), ["<sip:[2001:db8::20]:5070;lr>", "<sip:[2001:db8::21];lr>"]);
    let via = values(&bye_out, HeaderName::Via).remove(0);
    assert!(via.starts_with("SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK"), "{via}");
    assert!(!head(&out[0]).contains("10.99.0."), "{}", head(&out[0]));
}
