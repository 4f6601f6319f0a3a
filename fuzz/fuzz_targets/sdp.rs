//! Fuzzes SDP anchoring (sbc_media::sdp and sbc_media::session): the input parsed under the
//! default limits and tight ones, rendered onto a relay address (IPv4 or IPv6, picked by the
//! last input byte), then driven through a `Sessions` as an offer from outside and the answer
//! from the core, and once as a datagram on the relay ports. Beyond "never panics", it
//! asserts: what parses is within its limits; the rendering parses again with the same number
//! of m-lines, every `c=` is the relay's address or the hold marker, the `o=` address is the
//! relay's, ports are the plan's (0 kept 0) and no ICE candidate survives; the sessions' output
//! parses the same way and every port they hold goes back on `end`.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sbc_media::sdp::{self, Address, Limits, MediaPlan, OriginPlan, Plan};
use sbc_media::session::{Config, LatchConfig, PerSide, Sessions, Side};

const TIGHT: Limits = Limits { max_bytes: 512, max_lines: 16, max_line_len: 80, max_media: 2 };
/// Room for a rendering: each line may grow by a longer port or address.
const ROOMY: Limits = Limits { max_bytes: 1 << 20, max_lines: 1 << 16, max_line_len: 1 << 16, max_media: 1 << 10 };

fuzz_target!(|data: &[u8]| {
    let relay: IpAddr = match data.last() {
        Some(b) if b & 1 == 1 => "2001:db8::1".parse().expect("literal"),
        _ => "203.0.113.1".parse().expect("literal"),
    };
    for limits in [Limits::default(), TIGHT] {
        let Ok(parsed) = sdp::parse(data, &limits) else { continue };
        assert!(data.len() <= limits.max_bytes && parsed.media.len() <= limits.max_media);
        let media: Vec<MediaPlan> = (0..parsed.media.len())
            .map(|i| {
                if i % 3 == 2 {
                    MediaPlan::Disable
                } else {
                    MediaPlan::Anchor { rtp: 30000 + 2 * i as u16, rtcp: 30001 + 2 * i as u16 }
                }
            })
            .collect();
        let plan = Plan { address: relay, origin: OriginPlan { session_id: 1, version: 2 }, media: media.clone() };
        let out = parsed.render(&plan);
        check(&out.body, relay, parsed.media.len());
        let again = sdp::parse(&out.body, &ROOMY).expect("a rendering parses");
        for (i, (m, before)) in again.media.iter().zip(&parsed.media).enumerate() {
            let want = match media.get(i) {
                _ if before.port == 0 => 0,
                Some(MediaPlan::Anchor { rtp, .. }) => *rtp,
                _ => 0,
            };
            assert_eq!(m.port, want, "m-line {i}");
        }
    }
    sessions(data);
});

/// The rendered SDP names no address but the relay's (and the hold marker).
fn check(body: &[u8], relay: IpAddr, media: usize) {
    let again = sdp::parse(body, &ROOMY).expect("a rendering parses");
    assert_eq!(again.media.len(), media);
    assert_eq!(again.origin.address, Address::Ip(relay));
    for m in &again.media {
        assert!(m.connection == Address::Ip(relay) || m.connection.is_hold_marker(), "{:?}", m.connection);
        if let Some((_, Some(a))) = &m.rtcp {
            assert_eq!(*a, Address::Ip(relay));
        }
    }
    for line in body.split(|&b| b == b'\n') {
        let name = line.strip_prefix(b"a=").map(|a| a.split(|&b| b == b':' || b == b'\r').next().unwrap_or_default());
        assert!(!matches!(name, Some(b"candidate" | b"remote-candidates")), "an ICE candidate left");
    }
}

fn sessions(data: &[u8]) {
    let ext: IpAddr = "203.0.113.1".parse().expect("literal");
    let int: IpAddr = "10.1.0.1".parse().expect("literal");
    let mut s = Sessions::new(Config {
        address: PerSide { external: ext, internal: int },
        ports: (30000, 30063),
        max_sessions: 4,
        max_streams: 8,
        trust_private: PerSide { external: false, internal: true },
        is_private: |ip| match ip {
            IpAddr::V4(a) => a.is_private(),
            IpAddr::V6(a) => (a.segments()[0] & 0xfe00) == 0xfc00,
        },
        latch: LatchConfig::default(),
        idle: Duration::from_secs(60),
        sdp_limits: Limits::default(),
        origin_seed: 7,
    });
    let t = Instant::now();
    if let Ok(out) = s.offer(t, "d", Side::External, data) {
        check(&out, int, sdp::parse(data, &Limits::default()).map(|p| p.media.len()).unwrap_or(0));
        if let Ok(back) = s.answer(t, "d", Side::Internal, data) {
            check(&back, ext, sdp::parse(data, &Limits::default()).map(|p| p.media.len()).unwrap_or(0));
        }
    }
    let src: SocketAddr = "198.51.100.7:40000".parse().expect("literal");
    for port in s.ports("d", Side::External).into_iter().flatten() {
        for i in 0..4 {
            let _ = s.on_packet(t + Duration::from_millis(i * 20), port, src, data);
            let _ = s.on_packet(t, port + 1, src, data);
        }
    }
    s.handle_timeout(t + Duration::from_secs(1));
    s.end("d");
    let st = s.stats();
    assert_eq!((st.sessions, st.port_pairs_in_use), (0, 0), "everything released");
}
