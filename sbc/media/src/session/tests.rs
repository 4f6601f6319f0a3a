use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::sdp::tests::{ASTERISK, BARESIP, LINPHONE};

fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_private(),
        IpAddr::V6(a) => (a.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn cfg() -> Config {
    Config {
        address: PerSide { external: "203.0.113.1".parse().unwrap(), internal: "10.1.0.1".parse().unwrap() },
        ports: (30000, 30019),
        max_sessions: 2,
        max_streams: 4,
        trust_private: PerSide { external: false, internal: true },
        is_private: private,
        latch: LatchConfig::default(),
        idle: Duration::from_secs(60),
        sdp_limits: sdp::Limits::default(),
        origin_seed: 0,
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn rtp(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 1, 0, 0, 0, 160];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xff; 160]);
    p
}

fn rtcp(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0; 20]);
    p
}

const PHONE_NAT: &str = "198.51.100.7:40000";
const CORE: &str = "10.0.0.5:14000";

struct Call {
    s: Sessions,
    t: Instant,
    ext: u16,
    int: u16,
    to_core: String,
    to_phone: String,
}

/// A phone outside (baresip, private address behind NAT) calls the core (Asterisk answers).
fn call() -> Call {
    let mut s = Sessions::new(cfg());
    let t = Instant::now();
    let to_core = String::from_utf8(s.offer(t, "d1", Side::External, BARESIP.as_bytes()).unwrap()).unwrap();
    let to_phone = String::from_utf8(s.answer(t, "d1", Side::Internal, ASTERISK.as_bytes()).unwrap()).unwrap();
    let ext = s.ports("d1", Side::External)[0].unwrap();
    let int = s.ports("d1", Side::Internal)[0].unwrap();
    Call { s, t, ext, int, to_core, to_phone }
}

impl Call {
    fn phone_sends(&mut self, after_ms: u64, src: &str, p: &[u8]) -> Verdict {
        self.s.on_packet(self.t + Duration::from_millis(after_ms), self.ext, sa(src), p)
    }
    fn core_sends(&mut self, after_ms: u64, p: &[u8]) -> Verdict {
        self.s.on_packet(self.t + Duration::from_millis(after_ms), self.int, sa(CORE), p)
    }
    fn latch_phone(&mut self) {
        for i in 0..3 {
            self.phone_sends(i * 20, PHONE_NAT, &rtp(7));
        }
    }
}

#[test]
fn offer_allocates_a_pair_per_side_and_the_answer_anchors_the_other_way() {
    let c = call();
    assert_ne!(c.ext, c.int);
    assert_eq!((c.ext % 2, c.int % 2), (0, 0), "RTP ports are even");
    assert!(c.to_core.contains("c=IN IP4 10.1.0.1\r\n"), "{}", c.to_core);
    assert!(c.to_core.contains(&format!("m=audio {} RTP/AVP", c.int)));
    assert!(c.to_phone.contains("c=IN IP4 203.0.113.1\r\n"));
    assert!(c.to_phone.contains(&format!("m=audio {} RTP/AVP 0 8 101", c.ext)));
    assert!(!c.to_phone.contains("10.0.0.5") && !c.to_core.contains("192.168.1.10"));
    let st = c.s.stats();
    assert_eq!((st.sessions, st.port_pairs_in_use, st.port_pairs, st.offers, st.answers), (1, 2, 10, 1, 1));
}

#[test]
fn phone_behind_nat_latched_only_after_three_packets_with_one_ssrc() {
    let mut c = call();
    let learning = Verdict::Drop(DropReason::Source(Refusal::Learning));
    assert_eq!(c.phone_sends(0, PHONE_NAT, &rtp(7)), learning);
    assert_eq!(c.phone_sends(20, PHONE_NAT, &rtp(7)), learning);
    assert_eq!(c.phone_sends(40, PHONE_NAT, &rtp(7)), Verdict::Forward { from_port: c.int, to: sa(CORE) });
    assert_eq!(c.phone_sends(60, PHONE_NAT, &rtp(7)), Verdict::Forward { from_port: c.int, to: sa(CORE) });
}

#[test]
fn core_media_waits_for_the_phone_to_latch_then_goes_to_its_nat_address() {
    let mut c = call();
    assert_eq!(
        c.core_sends(0, &rtp(9)),
        Verdict::Drop(DropReason::NoDestination),
        "the private SDP address is not sent to"
    );
    c.latch_phone();
    assert_eq!(c.core_sends(70, &rtp(9)), Verdict::Forward { from_port: c.ext, to: sa(PHONE_NAT) });
    let n = c.s.counters("d1").unwrap();
    assert_eq!((n.packets.external, n.packets.internal), (1, 1));
    assert_eq!(n.bytes.internal, rtp(9).len() as u64);
    assert_eq!((n.dropped.external, n.dropped.internal), (2, 1));
}

#[test]
fn proof_packets_spread_over_more_than_the_window_do_not_latch() {
    let mut c = call();
    c.phone_sends(0, PHONE_NAT, &rtp(7));
    c.phone_sends(1000, PHONE_NAT, &rtp(7));
    assert_eq!(c.phone_sends(2500, PHONE_NAT, &rtp(7)), Verdict::Drop(DropReason::Source(Refusal::Learning)));
}

#[test]
fn ssrc_change_restarts_the_proof() {
    let mut c = call();
    for (i, ssrc) in [1, 1, 2, 2].into_iter().enumerate() {
        assert!(matches!(c.phone_sends(i as u64 * 20, PHONE_NAT, &rtp(ssrc)), Verdict::Drop(_)));
    }
    assert!(matches!(c.phone_sends(100, PHONE_NAT, &rtp(2)), Verdict::Forward { .. }));
}

#[test]
fn hijacker_is_dropped_while_the_latched_phone_talks_es2025_01() {
    let mut c = call();
    c.latch_phone();
    for i in 0..10 {
        assert_eq!(
            c.phone_sends(60 + i * 10, "192.0.2.66:5000", &rtp(0xbad)),
            Verdict::Drop(DropReason::Source(Refusal::WrongSource))
        );
    }
    assert_eq!(c.core_sends(200, &rtp(9)), Verdict::Forward { from_port: c.ext, to: sa(PHONE_NAT) });
    assert_eq!(c.s.stats().dropped_source, 12, "2 while learning, 10 from the hijacker");
}

#[test]
fn hijacker_racing_the_phone_needs_proof_and_rtcp_cannot_give_it() {
    let mut c = call();
    for i in 0..5 {
        assert!(
            matches!(c.phone_sends(i, "192.0.2.66:5000", &rtcp(1)), Verdict::Drop(_)),
            "RTCP-typed packets prove nothing"
        );
    }
    let mut dtls = vec![22u8, 254, 253];
    dtls.extend_from_slice(&[0; 40]);
    assert!(matches!(c.phone_sends(6, "192.0.2.66:5000", &dtls), Verdict::Drop(_)));
}

#[test]
fn new_source_relatches_only_after_silence_and_proof() {
    let mut c = call();
    c.latch_phone();
    let moved = "198.51.100.7:40002";
    assert!(matches!(c.phone_sends(1000, moved, &rtp(7)), Verdict::Drop(_)));
    // 3 s of silence from the latched source (its last packet at 40 ms).
    assert!(matches!(c.phone_sends(3100, moved, &rtp(7)), Verdict::Drop(_)));
    assert!(matches!(c.phone_sends(3120, moved, &rtp(7)), Verdict::Drop(_)));
    assert!(matches!(c.phone_sends(3140, moved, &rtp(7)), Verdict::Forward { .. }));
    assert_eq!(c.core_sends(3150, &rtp(9)), Verdict::Forward { from_port: c.ext, to: sa(moved) });
    assert!(matches!(c.phone_sends(3160, PHONE_NAT, &rtp(7)), Verdict::Drop(_)), "the old source lost the latch");
}

#[test]
fn public_sdp_address_is_latched_on_its_first_packet_and_sent_to_before() {
    let mut s = Sessions::new(cfg());
    let t = Instant::now();
    let public = BARESIP.replace("192.168.1.10", "198.51.100.20");
    s.offer(t, "d", Side::External, public.as_bytes()).unwrap();
    s.answer(t, "d", Side::Internal, ASTERISK.as_bytes()).unwrap();
    let (ext, int) = (s.ports("d", Side::External)[0].unwrap(), s.ports("d", Side::Internal)[0].unwrap());
    assert_eq!(
        s.on_packet(t, int, sa(CORE), &rtp(9)),
        Verdict::Forward { from_port: ext, to: sa("198.51.100.20:10248") }
    );
    assert!(matches!(s.on_packet(t, ext, sa("192.0.2.66:10248"), &rtp(1)), Verdict::Drop(_)));
    assert!(matches!(s.on_packet(t, ext, sa("198.51.100.20:10248"), &rtp(7)), Verdict::Forward { .. }));
}

#[test]
fn rtcp_follows_the_latched_rtp_host_to_the_peers_rtcp_port() {
    let mut c = call();
    c.latch_phone();
    let v = c.s.on_packet(c.t, c.ext + 1, sa("198.51.100.7:40001"), &rtcp(7));
    assert_eq!(v, Verdict::Forward { from_port: c.int + 1, to: sa("10.0.0.5:14001") });
    let v = c.s.on_packet(c.t, c.ext + 1, sa("192.0.2.66:40001"), &rtcp(7));
    assert!(matches!(v, Verdict::Drop(DropReason::Source(_))));
    let v = c.s.on_packet(c.t, c.int + 1, sa("10.0.0.5:14001"), &rtcp(9));
    assert_eq!(v, Verdict::Forward { from_port: c.ext + 1, to: sa("198.51.100.7:40001") });
}

#[test]
fn muxed_rtcp_on_the_rtp_port_passes_from_the_latched_source() {
    let mut c = call();
    c.latch_phone();
    assert_eq!(c.phone_sends(80, PHONE_NAT, &rtcp(7)), Verdict::Forward { from_port: c.int, to: sa(CORE) });
}

#[test]
fn stun_garbage_and_unknown_ports_are_dropped() {
    let mut c = call();
    let stun = [0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(c.phone_sends(0, PHONE_NAT, &stun), Verdict::Drop(DropReason::NotMedia));
    assert_eq!(c.phone_sends(0, PHONE_NAT, &[]), Verdict::Drop(DropReason::NotMedia));
    assert_eq!(c.phone_sends(0, PHONE_NAT, &[0x80, 0]), Verdict::Drop(DropReason::NotMedia));
    assert_eq!(c.s.on_packet(c.t, 30018, sa(PHONE_NAT), &rtp(1)), Verdict::Drop(DropReason::UnknownPort));
    assert_eq!(c.s.on_packet(c.t, 29999, sa(PHONE_NAT), &rtp(1)), Verdict::Drop(DropReason::UnknownPort));
}

#[test]
fn bye_releases_every_port_and_later_packets_are_unknown() {
    let mut c = call();
    c.latch_phone();
    c.s.end("d1");
    let st = c.s.stats();
    assert_eq!((st.sessions, st.port_pairs_in_use), (0, 0));
    assert_eq!(c.phone_sends(100, PHONE_NAT, &rtp(7)), Verdict::Drop(DropReason::UnknownPort));
    assert!(c.s.counters("d1").is_none());
}

#[test]
fn failed_or_cancelled_offer_releases_its_ports() {
    let mut s = Sessions::new(cfg());
    let t = Instant::now();
    s.offer(t, "d", Side::External, LINPHONE.as_bytes()).unwrap();
    assert_eq!(s.stats().port_pairs_in_use, 4);
    s.end("d");
    assert_eq!(s.stats().port_pairs_in_use, 0);
}

#[test]
fn unchanged_reoffer_keeps_ports_and_version_changed_one_raises_it() {
    let mut c = call();
    let version = |sdp: &str| sdp.lines().find(|l| l.starts_with("o=")).unwrap().split(' ').nth(2).unwrap().to_owned();
    let again = String::from_utf8(c.s.offer(c.t, "d1", Side::External, BARESIP.as_bytes()).unwrap()).unwrap();
    assert_eq!(again, c.to_core, "a session refresh re-INVITE changes nothing, version included");
    let answer = String::from_utf8(c.s.answer(c.t, "d1", Side::Internal, ASTERISK.as_bytes()).unwrap()).unwrap();
    assert_eq!(answer, c.to_phone, "a repeated answer (183 then 200) is the same");
    let hold = BARESIP.replace("a=sendrecv", "a=sendonly");
    let held = String::from_utf8(c.s.offer(c.t, "d1", Side::External, hold.as_bytes()).unwrap()).unwrap();
    assert_eq!(version(&held).parse::<u64>().unwrap(), version(&c.to_core).parse::<u64>().unwrap() + 1);
    assert!(held.contains("a=sendonly") && held.contains(&format!("m=audio {} ", c.int)));
    assert_eq!(c.s.stats().port_pairs_in_use, 2);
}

#[test]
fn hold_with_the_rfc2543_marker_keeps_it_and_the_ports() {
    let mut c = call();
    c.latch_phone();
    let hold = BARESIP.replace("c=IN IP4 192.168.1.10", "c=IN IP4 0.0.0.0");
    let held = String::from_utf8(c.s.offer(c.t, "d1", Side::External, hold.as_bytes()).unwrap()).unwrap();
    assert!(held.contains("c=IN IP4 0.0.0.0\r\n") && !held.contains("192.168"));
    c.s.answer(c.t, "d1", Side::Internal, ASTERISK.as_bytes()).unwrap();
    assert_eq!(c.s.ports("d1", Side::External)[0], Some(c.ext));
    // Resumed: the phone's latch survived (its SDP address was untrusted both times).
    c.s.offer(c.t, "d1", Side::External, BARESIP.as_bytes()).unwrap();
    c.s.answer(c.t, "d1", Side::Internal, ASTERISK.as_bytes()).unwrap();
    assert!(matches!(c.phone_sends(100, PHONE_NAT, &rtp(7)), Verdict::Forward { .. }));
}

#[test]
fn core_reinvite_to_a_new_port_redirects_the_phones_media() {
    let mut c = call();
    c.latch_phone();
    let moved = ASTERISK.replace("m=audio 14000", "m=audio 16000");
    let out = String::from_utf8(c.s.offer(c.t, "d1", Side::Internal, moved.as_bytes()).unwrap()).unwrap();
    assert!(out.contains(&format!("m=audio {} ", c.ext)), "the phone keeps its relay port");
    assert_eq!(
        c.phone_sends(100, PHONE_NAT, &rtp(7)),
        Verdict::Forward { from_port: c.int, to: sa(CORE) },
        "until the answer"
    );
    c.s.answer(c.t, "d1", Side::External, BARESIP.as_bytes()).unwrap();
    assert_eq!(c.phone_sends(120, PHONE_NAT, &rtp(7)), Verdict::Forward { from_port: c.int, to: sa("10.0.0.5:16000") });
    assert!(matches!(c.core_sends(130, &rtp(9)), Verdict::Drop(DropReason::Source(_))), "the old core port");
}

#[test]
fn answer_refusing_a_stream_with_port_zero_releases_it() {
    let mut s = Sessions::new(cfg());
    let t = Instant::now();
    s.offer(t, "d", Side::External, LINPHONE.as_bytes()).unwrap();
    let answer = LINPHONE.replace("m=video 9078", "m=video 0").replace("192.168.1.20", "10.0.0.9");
    let out = String::from_utf8(s.answer(t, "d", Side::Internal, answer.as_bytes()).unwrap()).unwrap();
    assert!(out.contains("m=video 0 RTP/AVP"));
    assert_eq!(s.stats().port_pairs_in_use, 2);
    assert_eq!(s.ports("d", Side::External).get(1), Some(&None));
}

#[test]
fn tcp_streams_get_no_ports_and_are_disabled() {
    let mut s = Sessions::new(cfg());
    let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=message 2855 TCP/MSRP *\r\n";
    let out = String::from_utf8(s.offer(Instant::now(), "d", Side::Internal, body.as_bytes()).unwrap()).unwrap();
    assert!(out.contains("m=message 0 TCP/MSRP"));
    assert_eq!(s.stats().port_pairs_in_use, 0);
}

#[test]
fn limits_refuse_sessions_streams_and_exhausted_ports_without_leaking_any() {
    let mut s = Sessions::new(Config { ports: (30000, 30009), ..cfg() });
    let t = Instant::now();
    s.offer(t, "a", Side::External, LINPHONE.as_bytes()).unwrap();
    assert_eq!(s.stats().port_pairs_in_use, 4);
    // 1 pair left: the two streams of this offer need 4.
    assert_eq!(s.offer(t, "b", Side::External, LINPHONE.as_bytes()), Err(MediaError::PortsExhausted { in_use: 4 }));
    assert_eq!((s.stats().port_pairs_in_use, s.stats().sessions), (4, 1), "the partial allocation went back");
    s.end("a");
    s.offer(t, "b", Side::External, BARESIP.as_bytes()).unwrap();
    s.offer(t, "c", Side::External, BARESIP.as_bytes()).unwrap();
    assert_eq!(s.offer(t, "d", Side::External, BARESIP.as_bytes()), Err(MediaError::SessionLimit { max: 2 }));
    let five = format!("{BARESIP}{}", "m=audio 1 RTP/AVP 0\r\n".repeat(4));
    assert_eq!(s.offer(t, "b", Side::External, five.as_bytes()), Err(MediaError::StreamLimit { count: 5, max: 4 }));
    assert_eq!(s.stats().refused, 3);
}

#[test]
fn answers_without_a_matching_offer_are_refused() {
    let mut c = call();
    assert_eq!(c.s.answer(c.t, "nope", Side::Internal, ASTERISK.as_bytes()), Err(MediaError::NoOffer));
    assert_eq!(
        c.s.answer(c.t, "d1", Side::External, BARESIP.as_bytes()),
        Err(MediaError::NoOffer),
        "the offerer cannot answer itself"
    );
    assert_eq!(
        c.s.answer(c.t, "d1", Side::Internal, LINPHONE.as_bytes()),
        Err(MediaError::MediaCount { offer: 1, answer: 2 })
    );
}

#[test]
fn idle_session_expires_and_a_later_reoffer_starts_over() {
    let mut c = call();
    c.latch_phone();
    c.s.handle_timeout(c.t + Duration::from_secs(59));
    assert_eq!(c.s.stats().sessions, 1, "packets at 40 ms keep it alive until 60 s after");
    c.s.handle_timeout(c.t + Duration::from_secs(61));
    let st = c.s.stats();
    assert_eq!((st.sessions, st.port_pairs_in_use, st.expired), (0, 0, 1));
    c.s.offer(c.t, "d1", Side::External, BARESIP.as_bytes()).unwrap();
    assert_eq!(c.s.stats().port_pairs_in_use, 2);
}

#[test]
fn pool_hands_out_even_pairs_once_per_side_and_reuses_the_oldest_released() {
    let mut p = PortPool::new(30001, 30010);
    assert_eq!(p.capacity(), 4, "30002/3, 30004/5, 30006/7, 30008/9; 30010 has no partner");
    let pairs: Vec<_> = p.pairs().collect();
    assert_eq!(
        pairs,
        [(30002, Side::External), (30004, Side::Internal), (30006, Side::External), (30008, Side::Internal)],
        "pairs alternate sides, each faces one side for good"
    );
    let (e, i) = (Side::External, Side::Internal);
    assert_eq!((p.allocate(e), p.allocate(e), p.allocate(e)), (Some(30002), Some(30006), None));
    assert_eq!(p.allocate(i), Some(30004));
    p.release(30006);
    p.release(30006);
    p.release(30007);
    p.release(1);
    assert_eq!(p.in_use(), 2);
    p.release(30002);
    assert_eq!((p.allocate(e), p.allocate(e)), (Some(30006), Some(30002)));
    assert_eq!(p.allocate(i), Some(30008));
    assert_eq!(PortPool::new(40000, 40000).capacity(), 0);
    assert_eq!(PortPool::new(40000, 40001).capacity(), 1);
}

#[test]
fn pool_counters_show_ports_kept_across_hold_resume_and_moves_and_released_at_the_end() {
    let mut c = call();
    c.latch_phone();
    let st = c.s.stats();
    assert_eq!((st.port_pairs_allocated, st.port_pairs_released), (2, 0));
    // Hold, resume, and a re-offer moving the phone's port: the relay keeps its pairs.
    for body in [
        BARESIP.replace("a=sendrecv", "a=sendonly"),
        BARESIP.to_owned(),
        BARESIP.replace("m=audio 10248", "m=audio 10250"),
    ] {
        c.s.offer(c.t, "d1", Side::External, body.as_bytes()).unwrap();
        c.s.answer(c.t, "d1", Side::Internal, ASTERISK.as_bytes()).unwrap();
        assert_eq!(c.s.ports("d1", Side::External)[0], Some(c.ext));
        let st = c.s.stats();
        assert_eq!((st.port_pairs_allocated, st.port_pairs_released, st.port_pairs_in_use), (2, 0, 2));
    }
    c.s.end("d1");
    let st = c.s.stats();
    assert_eq!((st.port_pairs_allocated, st.port_pairs_released, st.port_pairs_in_use), (2, 2, 0));
}

#[test]
fn per_call_counters_list_each_active_call_bounded_by_the_limit() {
    let mut c = call();
    c.latch_phone();
    c.core_sends(70, &rtp(9));
    c.s.offer(c.t, "d2", Side::External, BARESIP.as_bytes()).unwrap();
    let calls = c.s.calls(10);
    assert_eq!(calls.len(), 2);
    let first = &calls[0];
    assert_eq!((first.dialog.as_str(), first.port_pairs), ("d1", 2));
    assert_eq!(Some(first.counters), c.s.counters("d1"));
    assert_eq!((first.counters.packets.external, first.counters.packets.internal), (1, 1));
    assert_eq!(c.s.calls(1).len(), 1, "the listing is bounded");
    c.s.end("d1");
    assert_eq!(c.s.calls(10).iter().map(|k| k.dialog.as_str()).collect::<Vec<_>>(), ["d2"]);
}
