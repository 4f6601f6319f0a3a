//! The STUN module's tests: the RFC 5769 vectors (decoded, fingerprints checked, our encoder
//! against their XOR-MAPPED-ADDRESS bytes) and the server's reaction to each kind of input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::message::message_type;
use super::*;

const SAMPLE_REQUEST: &[u8] = include_bytes!("../../../../tests/vectors/rfc5769/sample-request.bin");
const SAMPLE_IPV4_RESPONSE: &[u8] = include_bytes!("../../../../tests/vectors/rfc5769/sample-ipv4-response.bin");
const SAMPLE_IPV6_RESPONSE: &[u8] = include_bytes!("../../../../tests/vectors/rfc5769/sample-ipv6-response.bin");
const SAMPLE_LONG_TERM: &[u8] = include_bytes!("../../../../tests/vectors/rfc5769/sample-request-long-term-auth.bin");

/// RFC 5769 §2.1–§2.3's transaction id.
const RFC_TID: [u8; 12] = [0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae];
const TID: [u8; 12] = *b"0123456789ab";
const PRIORITY: u16 = 0x0024;

fn rfc_v4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 32853)
}

fn rfc_v6() -> SocketAddr {
    let ip: Ipv6Addr = "2001:db8:1234:5678:11:2233:4455:6677".parse().unwrap();
    SocketAddr::new(IpAddr::V6(ip), 32853)
}

fn source() -> SocketAddr {
    "198.51.100.7:40000".parse().unwrap()
}

fn parse(bytes: &[u8]) -> Result<Message<'_>, ParseError> {
    Message::parse(bytes, &Limits::default())
}

fn server() -> Server {
    Server::new(Config::default()).unwrap()
}

/// A request of `method` with `attrs`, optionally fingerprinted.
fn request(method: u16, attrs: &[(u16, &[u8])], fingerprint: bool) -> Vec<u8> {
    let mut w = Writer::new(Class::Request, method, &TID);
    for (t, v) in attrs {
        w.attribute(*t, v);
    }
    if fingerprint { w.finish_with_fingerprint() } else { w.finish() }
}

fn types(m: &Message<'_>) -> Vec<u16> {
    m.attributes.iter().map(|a| a.typ).collect()
}

/// The whole attribute (header, value, padding) of type `typ` in `bytes`.
fn attribute_bytes(bytes: &[u8], typ: u16) -> Vec<u8> {
    let m = parse(bytes).unwrap();
    let a = m.attribute(typ).unwrap();
    bytes[a.offset..a.offset + 4 + a.value.len().next_multiple_of(4)].to_vec()
}

// ---- RFC 5769 vectors ----

#[test]
fn rfc5769_sample_request_decodes_with_its_attributes_and_a_valid_fingerprint() {
    let m = parse(SAMPLE_REQUEST).unwrap();
    assert_eq!((m.class, m.method), (Class::Request, BINDING));
    assert_eq!(m.transaction_id, RFC_TID);
    assert_eq!(
        types(&m),
        [attr::SOFTWARE, PRIORITY, 0x8029, attr::USERNAME, attr::MESSAGE_INTEGRITY, attr::FINGERPRINT]
    );
    // SOFTWARE is padded with spaces, not zeros: the value stops at its length.
    assert_eq!(m.attribute(attr::SOFTWARE).unwrap().value, b"STUN test client");
    assert_eq!(m.attribute(attr::USERNAME).unwrap().value, b"evtj:h6vY");
    assert_eq!(m.attribute(PRIORITY).unwrap().value, [0x6e, 0x00, 0x01, 0xff]);
    assert_eq!(m.attribute(0x8029).unwrap().value, [0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36]);
    assert_eq!(m.attribute(attr::MESSAGE_INTEGRITY).unwrap().value.len(), 20);
    assert_eq!(m.fingerprint, Some(0xe57a_3bcf));
}

#[test]
fn rfc5769_ipv4_response_maps_to_192_0_2_1_port_32853_and_its_fingerprint_verifies() {
    let m = parse(SAMPLE_IPV4_RESPONSE).unwrap();
    assert_eq!((m.class, m.method), (Class::SuccessResponse, BINDING));
    assert_eq!(m.transaction_id, RFC_TID);
    assert_eq!(m.attribute(attr::SOFTWARE).unwrap().value, b"test vector");
    assert_eq!(m.xor_mapped_address(), Some(Ok(rfc_v4())));
    assert_eq!(m.fingerprint, Some(0xc07d_4c96));
}

#[test]
fn rfc5769_ipv6_response_maps_to_2001_db8_port_32853_and_its_fingerprint_verifies() {
    let m = parse(SAMPLE_IPV6_RESPONSE).unwrap();
    assert_eq!((m.class, m.method), (Class::SuccessResponse, BINDING));
    assert_eq!(m.xor_mapped_address(), Some(Ok(rfc_v6())));
    assert_eq!(m.fingerprint, Some(0xc8fb_0b4c));
}

#[test]
fn rfc5769_long_term_request_parses_without_a_fingerprint() {
    let m = parse(SAMPLE_LONG_TERM).unwrap();
    assert_eq!(types(&m), [attr::USERNAME, attr::NONCE, attr::REALM, attr::MESSAGE_INTEGRITY]);
    assert_eq!(m.attribute(attr::REALM).unwrap().value, b"example.org");
    assert_eq!(m.fingerprint, None);
}

#[test]
fn our_encoder_reproduces_the_rfc5769_xor_mapped_address_bytes() {
    for (response, addr) in [(SAMPLE_IPV4_RESPONSE, rfc_v4()), (SAMPLE_IPV6_RESPONSE, rfc_v6())] {
        let mut w = Writer::new(Class::SuccessResponse, BINDING, &RFC_TID);
        w.attribute(attr::XOR_MAPPED_ADDRESS, &encode_xor_address(addr, &RFC_TID));
        let ours = w.finish();
        assert_eq!(ours[20..], attribute_bytes(response, attr::XOR_MAPPED_ADDRESS)[..], "{addr}");
    }
    // RFC 5769 §2.2 states the IPv4 value outright.
    assert_eq!(encode_xor_address(rfc_v4(), &RFC_TID), [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]);
}

#[test]
fn our_fingerprint_matches_the_rfc5769_vectors() {
    for v in [SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE] {
        let at = v.len() - 8;
        assert_eq!(fingerprint_value(&v[..at]).to_be_bytes(), v[at + 4..]);
    }
}

#[test]
fn message_types_interleave_class_bits_as_rfc8489_section_5_shows() {
    assert_eq!(message_type(Class::Request, BINDING), 0x0001);
    assert_eq!(message_type(Class::Indication, BINDING), 0x0011);
    assert_eq!(message_type(Class::SuccessResponse, BINDING), 0x0101);
    assert_eq!(message_type(Class::ErrorResponse, BINDING), 0x0111);
    assert_eq!(message_type(Class::Request, 0x0FFF), 0x3EEF);
}

// ---- is_stun (RFC 7983 §7) ----

#[test]
fn is_stun_accepts_the_rfc5769_vectors_and_our_requests() {
    for v in [SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE, SAMPLE_LONG_TERM] {
        assert!(is_stun(v));
    }
    assert!(is_stun(&request(BINDING, &[], false)));
}

#[test]
fn is_stun_rejects_sip_text() {
    let sip = b"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1\r\n\r\n";
    assert!(!is_stun(sip));
    assert!(!is_stun(b"\r\n\r\n"));
    assert!(!is_stun(b""));
    assert!(!is_stun(b"SIP/2.0 200 OK\r\n\r\n\r\n\r\n\r\n"));
}

#[test]
fn is_stun_rejects_a_wrong_length_or_cookie_or_first_byte() {
    let mut v = SAMPLE_REQUEST.to_vec();
    assert!(!is_stun(&v[..v.len() - 4]), "shorter than declared");
    v.extend_from_slice(&[0; 4]);
    assert!(!is_stun(&v), "longer than declared");
    let mut c = SAMPLE_REQUEST.to_vec();
    c[4] ^= 1;
    assert!(!is_stun(&c), "cookie");
    let mut f = SAMPLE_REQUEST.to_vec();
    f[0] = 4;
    assert!(!is_stun(&f), "first byte 4");
    let mut u = request(BINDING, &[], false);
    u[3] = 2;
    u.extend_from_slice(&[0, 0]);
    assert!(!is_stun(&u), "length not a multiple of 4");
}

// ---- the parser's bounds ----

#[test]
fn truncated_message_is_refused() {
    assert_eq!(parse(&SAMPLE_REQUEST[..19]), Err(ParseError::TooShort { len: 19 }));
    assert_eq!(parse(&SAMPLE_REQUEST[..60]), Err(ParseError::LengthMismatch { declared: 88, actual: 40 }));
    // Every prefix is refused, none panics.
    for n in 0..SAMPLE_REQUEST.len() {
        assert!(parse(&SAMPLE_REQUEST[..n]).is_err(), "{n}");
    }
}

#[test]
fn wrong_length_is_refused() {
    let mut v = request(BINDING, &[(attr::SOFTWARE, b"abcd")], false);
    v[3] = 6;
    assert_eq!(parse(&v), Err(ParseError::UnalignedLength { declared: 6 }));
    v[3] = 4;
    assert_eq!(parse(&v), Err(ParseError::LengthMismatch { declared: 4, actual: 8 }));
}

#[test]
fn bad_cookie_is_refused() {
    let mut v = SAMPLE_REQUEST.to_vec();
    v[7] = 0x43;
    assert_eq!(parse(&v), Err(ParseError::BadCookie { found: 0x2112_A443 }));
}

#[test]
fn top_bits_set_is_not_stun() {
    let mut v = request(BINDING, &[], false);
    v[0] = 0x40;
    assert_eq!(parse(&v), Err(ParseError::NotStun { byte: 0x40 }));
}

#[test]
fn bad_fingerprint_is_refused_and_the_server_ignores_it() {
    let mut v = SAMPLE_REQUEST.to_vec();
    let last = v.len() - 1;
    v[last] ^= 0xff;
    assert!(matches!(parse(&v), Err(ParseError::BadFingerprint { computed: 0xe57a_3bcf, .. })));
    let mut ours = request(BINDING, &[], true);
    ours[10] ^= 1; // a transaction id bit: the CRC no longer matches
    assert!(matches!(
        server().handle(&ours, source()),
        Reply::Ignore(IgnoreReason::Malformed(ParseError::BadFingerprint { .. }))
    ));
}

#[test]
fn fingerprint_of_the_wrong_size_or_not_last_is_refused() {
    let v = request(BINDING, &[(attr::FINGERPRINT, b"abcdefgh")], false);
    assert_eq!(parse(&v), Err(ParseError::FingerprintLength { len: 8 }));
    let mut w = Writer::new(Class::Request, BINDING, &TID);
    w.attribute(attr::SOFTWARE, b"x");
    let mut v = w.finish_with_fingerprint();
    let at = v.len() - 8;
    v.extend_from_slice(&[0x80, 0x22, 0, 0]);
    v[3] += 4;
    // A FINGERPRINT that is right for the new length: only its place is wrong.
    let fp = fingerprint_value(&v[..at]).to_be_bytes();
    v[at + 4..at + 8].copy_from_slice(&fp);
    assert_eq!(parse(&v), Err(ParseError::AfterFingerprint { typ: attr::SOFTWARE }));
}

#[test]
fn attribute_length_past_the_end_is_refused() {
    let mut v = request(BINDING, &[(attr::SOFTWARE, b"abcd")], false);
    v[23] = 5; // the SOFTWARE length: 5 padded to 8, 4 octets left
    assert_eq!(parse(&v), Err(ParseError::AttributePastEnd { typ: attr::SOFTWARE, offset: 20, len: 8, remaining: 4 }));
    v[23] = 0xff;
    v[22] = 0xff;
    assert!(matches!(parse(&v), Err(ParseError::AttributePastEnd { len: 65536, .. })));
    assert!(matches!(server().handle(&v, source()), Reply::Ignore(IgnoreReason::Malformed(_))));
}

#[test]
fn padding_is_required_for_the_last_attribute() {
    // SOFTWARE of 3 octets with its one padding octet missing: the header length is then 7,
    // not a multiple of 4.
    let mut v = request(BINDING, &[(attr::SOFTWARE, b"abc")], false);
    v.pop();
    v[3] = 7;
    assert_eq!(parse(&v), Err(ParseError::UnalignedLength { declared: 7 }));
}

#[test]
fn huge_attribute_count_is_refused() {
    let empty: (u16, &[u8]) = (attr::SOFTWARE, b"");
    let v = request(BINDING, &[empty; 200], false);
    assert_eq!(parse(&v), Err(ParseError::TooManyAttributes { max: 32 }));
    assert_eq!(parse(&request(BINDING, &[empty; 32], false)).map(|m| m.attributes.len()), Ok(32));
    assert!(matches!(
        server().handle(&v, source()),
        Reply::Ignore(IgnoreReason::Malformed(ParseError::TooManyAttributes { .. }))
    ));
}

#[test]
fn message_over_the_size_limit_is_refused_unread() {
    let limits = Limits { max_message_bytes: 100, max_attributes: 32 };
    assert_eq!(Message::parse(SAMPLE_REQUEST, &limits), Err(ParseError::TooLong { len: 108, max: 100 }));
    // Bounded before anything else: garbage over the limit is TooLong, not NotStun.
    assert_eq!(Message::parse(&[0xff; 2000], &Limits::default()), Err(ParseError::TooLong { len: 2000, max: 1280 }));
}

#[test]
fn xor_address_with_a_wrong_length_or_family_is_an_error() {
    assert_eq!(decode_xor_address(&[0, 1, 0, 0, 1, 2], &TID), Err(ParseError::AddressLength { family: 1, len: 6 }));
    assert_eq!(
        decode_xor_address(&[0, 2, 0, 0, 1, 2, 3, 4], &TID),
        Err(ParseError::AddressLength { family: 2, len: 8 })
    );
    assert_eq!(decode_xor_address(&[0, 3, 0, 0, 1, 2, 3, 4], &TID), Err(ParseError::AddressFamily { family: 3 }));
    assert_eq!(decode_xor_address(&[0], &TID), Err(ParseError::AddressLength { family: 0, len: 1 }));
}

// ---- the server ----

fn success(reply: Reply) -> Vec<u8> {
    match reply {
        Reply::Success(b) => b,
        other => panic!("expected a success, got {other:?}"),
    }
}

#[test]
fn binding_request_gets_its_source_in_xor_mapped_address_with_a_fingerprint() {
    for src in [source(), "[2001:db8::5]:5062".parse().unwrap()] {
        for fp in [false, true] {
            let bytes = success(server().handle(&request(BINDING, &[], fp), src));
            assert!(is_stun(&bytes));
            let m = parse(&bytes).unwrap();
            assert_eq!((m.class, m.method, m.transaction_id), (Class::SuccessResponse, BINDING, TID));
            assert_eq!(m.xor_mapped_address(), Some(Ok(src)));
            assert!(m.fingerprint.is_some());
            assert_eq!(types(&m), [attr::XOR_MAPPED_ADDRESS, attr::FINGERPRINT], "no SOFTWARE by default");
        }
    }
}

#[test]
fn ipv4_mapped_source_is_answered_as_ipv4() {
    let mapped: SocketAddr = "[::ffff:198.51.100.7]:40000".parse().unwrap();
    let m_bytes = success(server().handle(&request(BINDING, &[], false), mapped));
    assert_eq!(parse(&m_bytes).unwrap().xor_mapped_address(), Some(Ok(source())));
}

#[test]
fn software_is_sent_only_when_configured() {
    let s = Server::new(Config { software: Some("sbc".into()), ..Config::default() }).unwrap();
    let bytes = success(s.handle(&request(BINDING, &[], false), source()));
    let m = parse(&bytes).unwrap();
    assert_eq!(m.attribute(attr::SOFTWARE).unwrap().value, b"sbc");
    assert_eq!(types(&m).last(), Some(&attr::FINGERPRINT));
    let long = Config { software: Some("x".repeat(128)), ..Config::default() };
    assert_eq!(Server::new(long).err(), Some(ConfigError::SoftwareTooLong { chars: 128, bytes: 128 }));
}

#[test]
fn unknown_comprehension_required_attribute_gets_420_with_unknown_attributes() {
    let v = request(BINDING, &[(0x7ff0, b"x"), (attr::SOFTWARE, b"y"), (0x0030, b""), (0x7ff0, b"z")], true);
    let Reply::Error { code: 420, bytes } = server().handle(&v, source()) else { panic!("expected a 420") };
    let m = parse(&bytes).unwrap();
    assert_eq!((m.class, m.method, m.transaction_id), (Class::ErrorResponse, BINDING, TID));
    assert_eq!(m.attribute(attr::ERROR_CODE).unwrap().value, b"\0\0\x04\x14Unknown Attribute");
    assert_eq!(m.attribute(attr::UNKNOWN_ATTRIBUTES).unwrap().value, [0x7f, 0xf0, 0x00, 0x30]);
    assert!(m.fingerprint.is_some());
}

#[test]
fn rfc5769_sample_request_gets_420_for_ice_priority() {
    // PRIORITY (0x0024) is comprehension-required and ICE's; ICE-CONTROLLED (0x8029) is optional.
    let Reply::Error { code: 420, bytes } = server().handle(SAMPLE_REQUEST, source()) else { panic!("expected a 420") };
    let m = parse(&bytes).unwrap();
    assert_eq!(m.transaction_id, RFC_TID);
    assert_eq!(m.attribute(attr::UNKNOWN_ATTRIBUTES).unwrap().value, PRIORITY.to_be_bytes());
}

#[test]
fn unknown_optional_attributes_and_authentication_attributes_are_skipped() {
    let v = request(
        BINDING,
        &[
            (0x8029, &[1; 8]),
            (attr::USERNAME, b"evtj:h6vY"),
            (attr::MESSAGE_INTEGRITY, &[7; 20]),
            (0x7ff0, b"after MI"),
        ],
        true,
    );
    // 0x7ff0 after MESSAGE-INTEGRITY is ignored (RFC 8489 §9), so this is a plain success.
    let bytes = success(server().handle(&v, source()));
    assert_eq!(parse(&bytes).unwrap().xor_mapped_address(), Some(Ok(source())));
}

#[test]
fn other_method_request_gets_400() {
    let Reply::Error { code: 400, bytes } = server().handle(&request(0x003, &[], false), source()) else {
        panic!("expected a 400")
    };
    let m = parse(&bytes).unwrap();
    assert_eq!((m.class, m.method), (Class::ErrorResponse, 0x003));
    assert_eq!(m.attribute(attr::ERROR_CODE).unwrap().value, b"\0\0\x04\x00Bad Request");
}

#[test]
fn indications_and_responses_are_ignored() {
    let mut ind = Writer::new(Class::Indication, BINDING, &TID);
    ind.attribute(0x7ff0, b"unknown, but indications are never answered");
    assert_eq!(server().handle(&ind.finish(), source()), Reply::Ignore(IgnoreReason::Indication { method: BINDING }));
    assert_eq!(
        server().handle(SAMPLE_IPV4_RESPONSE, source()),
        Reply::Ignore(IgnoreReason::Response { class: Class::SuccessResponse, method: BINDING })
    );
}

#[test]
fn sip_text_is_ignored_as_malformed() {
    let reply = server().handle(b"OPTIONS sip:a SIP/2.0\r\n\r\n", source());
    assert_eq!(reply, Reply::Ignore(IgnoreReason::Malformed(ParseError::NotStun { byte: b'O' })));
}

#[test]
fn replies_to_requests_that_pass_is_stun_pass_it_too() {
    // The highest method RFC 7983's first-byte rule admits (0x0FF) and Binding; the reply only
    // adds the class bit C1 to the first byte (found by the fuzz target: a method ≥ 0x100
    // puts the first byte over 3, request and reply alike).
    for method in [0x0FF, BINDING] {
        let req = request(method, &[], false);
        assert!(is_stun(&req));
        let bytes = match server().handle(&req, source()) {
            Reply::Success(b) | Reply::Error { bytes: b, .. } => b,
            Reply::Ignore(r) => panic!("{r}"),
        };
        assert!(is_stun(&bytes), "method {method:#x}");
    }
    assert!(!is_stun(&request(0x100, &[], false)));
}

#[test]
fn a_stream_of_two_requests_is_framed_one_message_at_a_time() {
    let one = request(BINDING, &[], true);
    let two = request(BINDING, &[(attr::SOFTWARE, b"x")], true);
    let stream: Vec<u8> = one.iter().chain(two.iter()).copied().collect();
    let limits = Limits::default();
    for cut in 0..one.len() {
        assert_eq!(frame_stream(&stream[..cut], &limits), StreamFrame::Incomplete, "cut at {cut}");
    }
    assert_eq!(frame_stream(&stream, &limits), StreamFrame::Message(one.len()));
    assert_eq!(frame_stream(&stream[one.len()..], &limits), StreamFrame::Message(two.len()));
}

#[test]
fn a_stream_that_is_not_stun_is_refused_as_soon_as_it_shows() {
    let limits = Limits::default();
    // SIP text: the first byte already tells.
    assert!(matches!(frame_stream(b"O", &limits), StreamFrame::Invalid(ParseError::NotStun { .. })));
    // A wrong cookie is refused once its 4 octets are there, before the header is whole.
    let mut bad = request(BINDING, &[], false);
    bad[5] ^= 1;
    assert_eq!(frame_stream(&bad[..4], &limits), StreamFrame::Incomplete);
    assert!(matches!(frame_stream(&bad[..8], &limits), StreamFrame::Invalid(ParseError::BadCookie { .. })));
}

#[test]
fn a_stream_message_over_the_limit_or_unaligned_is_refused_before_its_body_arrives() {
    let limits = Limits { max_message_bytes: 100, max_attributes: 8 };
    let mut header = request(BINDING, &[], false);
    header[2..4].copy_from_slice(&84u16.to_be_bytes());
    assert!(matches!(frame_stream(&header, &limits), StreamFrame::Invalid(ParseError::TooLong { len: 104, max: 100 })));
    header[2..4].copy_from_slice(&80u16.to_be_bytes());
    assert_eq!(frame_stream(&header, &limits), StreamFrame::Incomplete);
    header[2..4].copy_from_slice(&6u16.to_be_bytes());
    assert!(matches!(
        frame_stream(&header, &limits),
        StreamFrame::Invalid(ParseError::UnalignedLength { declared: 6 })
    ));
}
