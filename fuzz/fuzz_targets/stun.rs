//! Fuzzes the STUN codec and Binding server (sbc_media::stun): the input as one datagram, parsed
//! under the default limits and tight ones, and handed to a server from an IPv4 or IPv6 source
//! (picked by the last input byte). Beyond "never panics", it asserts: RFC 7983's `is_stun`
//! agrees with the parser's header checks; what parses re-encodes to the same attributes; every
//! reply parses, is a response with the request's transaction id and a FINGERPRINT, and a
//! success maps exactly the source address.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use sbc_media::stun::{Class, Config, Limits, Message, ParseError, Reply, Server, Writer, attr, is_stun};

const TIGHT: Limits = Limits { max_message_bytes: 64, max_attributes: 3 };

fuzz_target!(|data: &[u8]| {
    let source: SocketAddr = match data.last() {
        Some(b) if b & 1 == 1 => "[2001:db8::7]:5062".parse().expect("literal address"),
        _ => "198.51.100.7:40000".parse().expect("literal address"),
    };
    for limits in [Limits::default(), TIGHT] {
        codec(data, &limits);
        let server = Server::new(Config { limits, software: None }).expect("default config");
        reply(data, &server, source);
    }
});

fn codec(data: &[u8], limits: &Limits) {
    let parsed = Message::parse(data, limits);
    if is_stun(data) && data.len() <= limits.max_message_bytes {
        // The header passes RFC 7983's rule, so only the attributes can be wrong.
        assert!(
            !matches!(
                parsed,
                Err(ParseError::TooShort { .. }
                    | ParseError::NotStun { .. }
                    | ParseError::BadCookie { .. }
                    | ParseError::UnalignedLength { .. }
                    | ParseError::LengthMismatch { .. })
            ),
            "is_stun but the header is refused: {parsed:?}"
        );
    }
    let Ok(m) = parsed else { return };
    assert!(data.len() <= limits.max_message_bytes);
    assert!(m.attributes.len() <= limits.max_attributes);
    // Re-encoding what was parsed gives the same message (padding zeroed, FINGERPRINT recomputed).
    let mut w = Writer::new(m.class, m.method, &m.transaction_id);
    for a in m.attributes.iter().filter(|a| a.typ != attr::FINGERPRINT) {
        w.attribute(a.typ, a.value);
    }
    let again = if m.fingerprint.is_some() { w.finish_with_fingerprint() } else { w.finish() };
    assert_eq!(again.len(), data.len(), "re-encoded length differs");
    let m2 = Message::parse(&again, limits).expect("re-encoded message parses");
    assert_eq!((m2.class, m2.method, m2.transaction_id), (m.class, m.method, m.transaction_id));
    // FINGERPRINT values may differ: the CRC covers the padding, which the input may fill with
    // anything and the Writer fills with zeros (RFC 5769's vectors pad with spaces).
    assert_eq!(pairs(&m2), pairs(&m));
    assert!(m2.fingerprint.is_some() == m.fingerprint.is_some());
}

fn reply(data: &[u8], server: &Server, source: SocketAddr) {
    let (bytes, success) = match server.handle(data, source) {
        Reply::Ignore(reason) => {
            let _ = reason.to_string();
            return;
        }
        Reply::Success(b) => (b, true),
        Reply::Error { code, bytes } => {
            assert!(code == 400 || code == 420, "unexpected code {code}");
            (bytes, false)
        }
    };
    let request = Message::parse(data, &Limits::default()).expect("a request that was answered parses");
    // A request that passes RFC 7983's rule gets a reply that does (the reply's first byte
    // only gains the class bit C1); methods ≥ 0x100 put the first byte over 3 either way.
    if is_stun(data) {
        assert!(is_stun(&bytes), "reply fails RFC 7983's rule");
    }
    // Replies may exceed TIGHT (420 lists); parse them under the default limits.
    let m = Message::parse(&bytes, &Limits::default()).expect("our reply parses");
    assert_eq!(m.transaction_id, request.transaction_id);
    assert_eq!(m.method, request.method);
    assert!(m.fingerprint.is_some(), "reply without FINGERPRINT");
    if success {
        assert_eq!(m.class, Class::SuccessResponse);
        let mapped = m.xor_mapped_address().expect("XOR-MAPPED-ADDRESS").expect("decodes");
        assert_eq!(mapped, source);
    } else {
        assert_eq!(m.class, Class::ErrorResponse);
        assert!(m.attribute(attr::ERROR_CODE).is_some());
    }
}

/// Each attribute's type and value; FINGERPRINT's value left out.
fn pairs<'a>(m: &Message<'a>) -> Vec<(u16, &'a [u8])> {
    m.attributes.iter().map(|a| (a.typ, if a.typ == attr::FINGERPRINT { &[][..] } else { a.value })).collect()
}
