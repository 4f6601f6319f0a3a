use std::net::IpAddr;

use super::*;

pub(crate) const BARESIP: &str = "v=0\r\n\
o=- 1282327549 1282327549 IN IP4 192.168.1.10\r\n\
s=-\r\n\
c=IN IP4 192.168.1.10\r\n\
t=0 0\r\n\
m=audio 10248 RTP/AVP 96 97 0 8 101\r\n\
b=AS:1064\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=fmtp:96 stereo=1;sprop-stereo=1\r\n\
a=rtpmap:97 G722/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
a=rtcp-mux\r\n\
a=label:1\r\n";

pub(crate) const LINPHONE: &str = "v=0\r\n\
o=alice 2364 1283 IN IP4 192.168.1.20\r\n\
s=Talk\r\n\
c=IN IP4 192.168.1.20\r\n\
t=0 0\r\n\
a=ice-pwd:2e0f34a7d7fd2f9fa1d5d8e4\r\n\
a=ice-ufrag:9d8f0c1a\r\n\
a=group:BUNDLE as vs\r\n\
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\r\n\
m=audio 7078 RTP/AVP 96 0 8 101\r\n\
c=IN IP4 192.168.1.20\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=rtpmap:101 telephone-event/48000\r\n\
a=rtcp:7079\r\n\
a=mid:as\r\n\
a=candidate:1 1 UDP 2130706303 192.168.1.20 7078 typ host\r\n\
a=candidate:1 2 UDP 2130706302 192.168.1.20 7079 typ host\r\n\
a=candidate:2 1 UDP 1694498687 203.0.113.5 40556 typ srflx raddr 192.168.1.20 rport 7078\r\n\
a=end-of-candidates\r\n\
m=video 9078 RTP/AVP 96 97\r\n\
c=IN IP4 192.168.1.20\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtpmap:97 H264/90000\r\n\
a=rtcp:9079 IN IP4 192.168.1.20\r\n\
a=mid:vs\r\n\
a=candidate:1 1 UDP 2130706303 192.168.1.20 9078 typ host\r\n\
a=remote-candidates:1 192.168.1.20 9078\r\n";

pub(crate) const ASTERISK: &str = "v=0\r\n\
o=- 1702451112 1702451112 IN IP4 10.0.0.5\r\n\
s=Asterisk\r\n\
c=IN IP4 10.0.0.5\r\n\
t=0 0\r\n\
m=audio 14000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=maxptime:150\r\n\
a=sendrecv\r\n";

/// sipp's built-in uac scenario, as it goes out (LF line breaks when the scenario file has them).
pub(crate) const SIPP: &str = "v=0\n\
o=user1 53655765 2353687637 IN IP4 10.0.0.7\n\
s=-\n\
c=IN IP4 10.0.0.7\n\
t=0 0\n\
m=audio 6000 RTP/AVP 0\n\
a=rtpmap:0 PCMU/8000\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn plan(address: &str, media: Vec<MediaPlan>) -> Plan {
    Plan { address: ip(address), origin: OriginPlan { session_id: 77, version: 3 }, media }
}

fn anchor(rtp: u16) -> MediaPlan {
    MediaPlan::Anchor { rtp, rtcp: rtp + 1 }
}

fn render(body: &str, p: &Plan) -> String {
    let sdp = parse(body.as_bytes(), &Limits::default()).unwrap();
    String::from_utf8(sdp.render(p).body).unwrap()
}

#[test]
fn baresip_offer_anchored_on_the_relay_with_rtcp_mux_kept() {
    let out = render(BARESIP, &plan("203.0.113.1", vec![anchor(30000)]));
    assert!(out.starts_with("v=0\r\no=- 77 3 IN IP4 203.0.113.1\r\n"), "{out}");
    assert!(out.contains("\r\nc=IN IP4 203.0.113.1\r\n"));
    assert!(out.contains("\r\nm=audio 30000 RTP/AVP 96 97 0 8 101\r\n"));
    assert!(out.contains("\r\na=rtcp-mux\r\n"));
    assert!(out.contains("a=fmtp:96 stereo=1;sprop-stereo=1\r\n"));
    assert!(!out.contains("192.168.1.10"));
    assert!(!out.contains("10248"));
}

#[test]
fn linphone_ice_bundle_and_candidate_addresses_removed() {
    let sdp = parse(LINPHONE.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(sdp.media.len(), 2);
    assert_eq!(sdp.media[0].rtcp, Some((7079, None)));
    assert_eq!(sdp.media[1].rtcp, Some((9079, Some(Address::Ip(ip("192.168.1.20"))))));
    let out = render(LINPHONE, &plan("203.0.113.1", vec![anchor(30000), anchor(30002)]));
    for gone in ["candidate", "ice-", "BUNDLE", "192.168.1.20", "203.0.113.5", "7078", "9078", "alice"] {
        assert!(!out.contains(gone), "{gone} left in {out}");
    }
    assert!(out.contains("m=audio 30000 RTP/AVP 96 0 8 101\r\nc=IN IP4 203.0.113.1\r\n"));
    assert!(out.contains("a=rtcp:30001\r\n"));
    assert!(out.contains("a=rtcp:30003 IN IP4 203.0.113.1\r\n"));
    assert!(out.contains("a=mid:vs\r\n"), "unrelated attributes pass");
}

#[test]
fn asterisk_answer_parsed_with_session_connection_and_sendrecv() {
    let sdp = parse(ASTERISK.as_bytes(), &Limits::default()).unwrap();
    let m = &sdp.media[0];
    assert_eq!((m.port, m.rtcp_port(), m.direction), (14000, 14001, Direction::SendRecv));
    assert_eq!(m.connection, Address::Ip(ip("10.0.0.5")));
    assert_eq!(sdp.origin.version, "1702451112");
    let out = render(ASTERISK, &plan("198.51.100.9", vec![anchor(31000)]));
    assert!(!out.contains("10.0.0.5") && !out.contains("14000"));
    assert!(out.ends_with("a=sendrecv\r\n"));
}

#[test]
fn sipp_default_with_bare_lf_breaks_is_read_and_written_with_crlf() {
    let out = render(SIPP, &plan("198.51.100.9", vec![anchor(32000)]));
    assert_eq!(
        out,
        "v=0\r\no=- 77 3 IN IP4 198.51.100.9\r\ns=-\r\nc=IN IP4 198.51.100.9\r\nt=0 0\r\n\
         m=audio 32000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    );
}

#[test]
fn ipv4_description_toward_an_ipv6_relay_address_changes_family() {
    let out = render(LINPHONE, &plan("2001:db8::1", vec![anchor(30000), anchor(30002)]));
    assert!(out.contains("o=- 77 3 IN IP6 2001:db8::1\r\n"));
    assert!(out.contains("c=IN IP6 2001:db8::1\r\n"));
    assert!(out.contains("a=rtcp:30003 IN IP6 2001:db8::1\r\n"));
    assert!(!out.contains("IP4"));
}

#[test]
fn ipv6_description_parsed_and_anchored_to_ipv4() {
    let body = "v=0\r\no=- 1 1 IN IP6 fd00::5\r\ns=-\r\nc=IN IP6 fd00::5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let sdp = parse(body.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(sdp.media[0].connection.ip(), Some(ip("fd00::5")));
    let out = render(body, &plan("192.0.2.1", vec![anchor(30000)]));
    assert!(!out.contains("fd00") && out.contains("c=IN IP4 192.0.2.1\r\n"));
}

#[test]
fn disabled_stream_keeps_port_zero_and_loses_its_rtcp_line() {
    let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
                m=audio 4000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\na=rtcp:4001\r\n";
    let out = render(body, &plan("192.0.2.1", vec![anchor(30000), anchor(30002)]));
    assert!(out.contains("m=video 0 RTP/AVP 96\r\n"));
    assert!(!out.contains("a=rtcp"));
}

#[test]
fn hold_marker_connection_kept_and_direction_attributes_pass() {
    let body = "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
                m=audio 4000 RTP/AVP 0\r\na=sendonly\r\nm=video 4002 RTP/AVP 96\r\na=inactive\r\n";
    let sdp = parse(body.as_bytes(), &Limits::default()).unwrap();
    assert!(sdp.media[0].connection.is_hold_marker());
    assert_eq!(sdp.media[0].connection.ip(), None);
    assert_eq!(sdp.media[0].direction, Direction::SendOnly);
    assert_eq!(sdp.media[1].direction, Direction::Inactive);
    let out = render(body, &plan("192.0.2.1", vec![anchor(30000), anchor(30002)]));
    assert!(out.contains("c=IN IP4 0.0.0.0\r\n"));
    assert!(out.contains("m=audio 30000 RTP/AVP 0\r\na=sendonly\r\n"));
    assert!(out.contains("a=inactive\r\n"));
    assert!(!out.contains("10.0.0.1"));
}

#[test]
fn session_level_direction_applies_to_media_without_their_own() {
    let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\na=recvonly\r\n\
                m=audio 4000 RTP/AVP 0\r\n";
    let sdp = parse(body.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(sdp.media[0].direction, Direction::RecvOnly);
}

#[test]
fn tcp_streams_are_told_apart_and_disabled_by_the_plan() {
    let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
                m=message 2855 TCP/MSRP *\r\nm=image 4000 udptl t38\r\n";
    let sdp = parse(body.as_bytes(), &Limits::default()).unwrap();
    assert!(!sdp.media[0].is_udp());
    assert!(sdp.media[1].is_udp());
    let out = render(body, &plan("192.0.2.1", vec![MediaPlan::Disable, anchor(30000)]));
    assert!(out.contains("m=message 0 TCP/MSRP *\r\nm=image 30000 udptl t38\r\n"));
}

#[test]
fn missing_plan_entries_disable_their_media() {
    let out = render(LINPHONE, &plan("192.0.2.1", vec![anchor(30000)]));
    assert!(out.contains("m=video 0 RTP/AVP 96 97\r\n"));
}

#[test]
fn extra_spaces_in_the_m_line_survive_the_port_splice() {
    let body =
        "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio  4000/1  RTP/AVP 0 8\r\n";
    let out = render(body, &plan("192.0.2.1", vec![anchor(30000)]));
    assert!(out.contains("m=audio 30000 RTP/AVP 0 8\r\n"), "{out}");
}

#[test]
fn blanks_before_the_media_type_do_not_shift_the_port_found_by_fuzzing() {
    let body = "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm= \taudio 1 RTP/AVP 0\r\n";
    let out = render(body, &plan("192.0.2.1", vec![anchor(30000)]));
    assert!(out.contains("m=audio 30000 RTP/AVP 0\r\n"), "{out}");
    assert_eq!(parse(out.as_bytes(), &Limits::default()).unwrap().media[0].port, 30000);
}

#[test]
fn multicast_suffix_and_host_names_are_read() {
    let body = "v=0\r\no=- 1 1 IN IP4 host.example.com\r\ns=-\r\nc=IN IP4 233.252.0.1/127/2\r\nt=0 0\r\n\
                m=audio 4000 RTP/AVP 0\r\nc=IN IP4 media.example.com\r\n";
    let sdp = parse(body.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(sdp.origin.address, Address::Name("host.example.com".into()));
    assert_eq!(sdp.media[0].connection, Address::Name("media.example.com".into()));
    assert_eq!(sdp.media[0].connection.ip(), None);
    let out = render(body, &plan("192.0.2.1", vec![anchor(30000)]));
    assert!(!out.contains("example.com") && !out.contains("233.252"));
}

#[test]
fn content_hash_ignores_only_the_origin_line() {
    let sdp = parse(ASTERISK.as_bytes(), &Limits::default()).unwrap();
    let mut p = plan("192.0.2.1", vec![anchor(30000)]);
    let a = sdp.render(&p);
    p.origin.version = 4;
    let b = sdp.render(&p);
    assert_ne!(a.body, b.body);
    assert_eq!(a.content_hash(), b.content_hash());
    p.media = vec![anchor(30002)];
    assert_ne!(sdp.render(&p).content_hash(), a.content_hash());
    assert_eq!(b.body.get(b.origin.clone()).unwrap(), b"o=- 77 4 IN IP4 192.0.2.1\r\n");
}

#[test]
fn limits_are_enforced_before_anything_is_trusted() {
    let small = Limits { max_bytes: 100, max_lines: 5, max_line_len: 40, max_media: 1 };
    assert_eq!(parse(ASTERISK.as_bytes(), &small).unwrap_err(), SdpError::TooLarge { len: ASTERISK.len(), max: 100 });
    let lines = Limits { max_bytes: 8192, max_lines: 5, ..Limits::default() };
    assert_eq!(parse(ASTERISK.as_bytes(), &lines).unwrap_err(), SdpError::TooManyLines { max: 5 });
    let long = Limits { max_line_len: 20, ..Limits::default() };
    assert_eq!(parse(ASTERISK.as_bytes(), &long).unwrap_err(), SdpError::LineTooLong { line: 2, max: 20 });
    let media = Limits { max_media: 1, ..Limits::default() };
    assert_eq!(parse(LINPHONE.as_bytes(), &media).unwrap_err(), SdpError::TooManyMedia { max: 1 });
}

#[test]
fn garbage_gives_typed_errors() {
    let l = Limits::default();
    let cases: &[(&[u8], SdpError)] = &[
        (b"", SdpError::NoVersion),
        (b"\r\n\r\n", SdpError::NoVersion),
        (b"v=1\r\n", SdpError::NoVersion),
        (b"o=- 1 1 IN IP4 1.2.3.4\r\n", SdpError::NoVersion),
        (b"v=0\r\nxyz\r\n", SdpError::BadLine { line: 2 }),
        (b"v=0\r\nO=x\r\n", SdpError::BadLine { line: 2 }),
        (b"v=0\r\ns=-\r\n", SdpError::NoOrigin),
        (b"v=0\r\no=- x 1 IN IP4 1.2.3.4\r\n", SdpError::Malformed { line: 2, what: "o= line" }),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP6 1.2.3.4\r\n", SdpError::Malformed { line: 3, what: "c= line" }),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=ATM NSAP x\r\n", SdpError::Malformed { line: 3, what: "c= line" }),
        (
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n",
            SdpError::Malformed { line: 3, what: "m= line" },
        ),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio\r\n", SdpError::Malformed { line: 3, what: "m= line" }),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4000/2 RTP/AVP 0\r\n", SdpError::PortCount { media: 0, count: 2 }),
        (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\n", SdpError::NoConnection { media: 0 }),
        (
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:x\r\n",
            SdpError::Malformed { line: 5, what: "a=rtcp (RFC 3605)" },
        ),
        (b"v=0\r\no=\xff 1 1 IN IP4 1.2.3.4\r\n", SdpError::Malformed { line: 2, what: "o= line" }),
        // Found by fuzzing: a laxer parser would read a second line after the bare CR.
        (
            b"v=0\r\na=x\ra=candidate:1 1 UDP 1 10.0.0.1 5 typ host\r\n",
            SdpError::Malformed { line: 2, what: "line with a bare CR" },
        ),
    ];
    for (body, want) in cases {
        assert_eq!(parse(body, &l).unwrap_err(), *want, "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn session_level_rtcp_attribute_is_removed() {
    let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\na=rtcp:5 IN IP4 10.0.0.1\r\n\
                m=audio 4000 RTP/AVP 0\r\n";
    let out = render(body, &plan("192.0.2.1", vec![anchor(30000)]));
    assert!(!out.contains("10.0.0.1") && !out.contains("a=rtcp"));
}

#[test]
fn session_name_information_uri_email_and_phone_of_the_endpoint_are_not_forwarded() {
    let body = "v=0\r\no=pbx 1 1 IN IP4 10.0.0.1\r\ns=CorePBX media\r\ni=Core PBX of Example Corp\r\n\
                u=http://pbx.example.internal/\r\ne=ops@example.internal\r\np=+1 555 0100\r\n\
                c=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\ni=line 1\r\n";
    let out = render(body, &plan("203.0.113.1", vec![anchor(30000)]));
    assert_eq!(
        out,
        "v=0\r\no=- 77 3 IN IP4 203.0.113.1\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n"
    );
}
