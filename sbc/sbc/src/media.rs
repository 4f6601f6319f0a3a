//! The media seam's adapter: sbc-proto's `MediaHook` over sbc-media's relay sessions and body
//! policy (`sbc_media::anchor`). The sessions sit behind a mutex the relay workers share (they
//! lock it once per round of datagrams, `net::relay`, and sweep idle sessions); the SIP engine
//! only reaches them here.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sbc_media::anchor::{self, Action, Crossing, Role};
use sbc_media::session::{Sessions, Side as MediaSide};
use sbc_proto::dialog::DialogEnd;
use sbc_proto::engine::{BodyCrossing, BodyRole, BodyVerdict, MediaHook};
use sbc_proto::flow::Side;
use sbc_proto::sip::Method;

pub type SharedSessions = Arc<Mutex<Sessions>>;

/// The engine's media hook.
pub struct MediaAnchor {
    sessions: SharedSessions,
}

impl MediaAnchor {
    pub fn new(sessions: SharedSessions) -> MediaAnchor {
        MediaAnchor { sessions }
    }
}

fn side(s: Side) -> MediaSide {
    match s {
        Side::External => MediaSide::External,
        Side::Internal => MediaSide::Internal,
    }
}

impl MediaHook for MediaAnchor {
    fn on_body(&mut self, now: Instant, c: &BodyCrossing<'_>) -> BodyVerdict {
        let Ok(mut sessions) = self.sessions.lock() else { return BodyVerdict::Replace(Vec::new()) };
        let crossing = Crossing {
            dialog: c.dialog,
            from: side(c.from),
            role: match c.role {
                BodyRole::Offer => Role::Offer,
                BodyRole::Answer => Role::Answer,
            },
            offer_answer: matches!(c.method, Method::Invite | Method::Update | Method::Prack | Method::Ack),
            content_type: c.content_type,
            body: c.body,
        };
        match anchor::on_body(&mut sessions, now, &crossing) {
            Action::Keep => BodyVerdict::Keep,
            Action::Replace(b) => BodyVerdict::Replace(b),
            Action::Strip(why) => {
                tracing::warn!(dialog = c.dialog.unwrap_or("-"), method = ?c.method, status = ?c.status, %why, "body stripped");
                BodyVerdict::Replace(Vec::new())
            }
            Action::Refuse { code, reason, retry_after, why } => {
                tracing::warn!(dialog = c.dialog.unwrap_or("-"), method = ?c.method, status = ?c.status, %why, code, "offer refused");
                BodyVerdict::Refuse { code, reason, retry_after }
            }
        }
    }

    fn on_dialog_end(&mut self, _now: Instant, dialog: &str, _why: DialogEnd) {
        if let Ok(mut s) = self.sessions.lock() {
            s.end(dialog);
        }
    }
}

/// Calls listed one by one in `sbc stats` at most (the totals cover every call).
pub const CALLS_LISTED: usize = 200;

/// The `media.*` lines of `sbc stats`: the totals, then one group of lines per active call
/// (at most [`CALLS_LISTED`], oldest first), each named `media.call.<n>.<counter>` with `<n>`
/// the call's relay session number (see README.md, "sbc stats"). `from_external` counts what
/// arrived from outside and was relayed to the core; `from_internal` the other way.
pub fn stats_text(sessions: &SharedSessions) -> String {
    let Ok(s) = sessions.lock() else { return String::new() };
    let st = s.stats();
    let mut out = format!(
        "media.sessions {}\nmedia.port_pairs_in_use {}\nmedia.port_pairs {}\nmedia.port_pairs_allocated {}\n\
         media.port_pairs_released {}\nmedia.offers {}\nmedia.answers {}\n\
         media.refused {}\nmedia.expired {}\nmedia.forwarded_packets {}\nmedia.forwarded_bytes {}\n\
         media.dropped_unknown_port {}\nmedia.dropped_not_media {}\nmedia.dropped_source {}\n\
         media.dropped_no_destination {}\n",
        st.sessions,
        st.port_pairs_in_use,
        st.port_pairs,
        st.port_pairs_allocated,
        st.port_pairs_released,
        st.offers,
        st.answers,
        st.refused,
        st.expired,
        st.forwarded_packets,
        st.forwarded_bytes,
        st.dropped_unknown_port,
        st.dropped_not_media,
        st.dropped_source,
        st.dropped_no_destination,
    );
    let calls = s.calls(CALLS_LISTED);
    out.push_str(&format!("media.calls_listed {}\n", calls.len()));
    for c in calls {
        let (n, k) = (c.id, c.counters);
        out.push_str(&format!(
            "media.call.{n}.port_pairs {}\nmedia.call.{n}.packets_from_external {}\n\
             media.call.{n}.bytes_from_external {}\nmedia.call.{n}.dropped_from_external {}\n\
             media.call.{n}.packets_from_internal {}\nmedia.call.{n}.bytes_from_internal {}\n\
             media.call.{n}.dropped_from_internal {}\n",
            c.port_pairs,
            k.packets.external,
            k.bytes.external,
            k.dropped.external,
            k.packets.internal,
            k.bytes.internal,
            k.dropped.internal,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sbc_media::session::{Config, LatchConfig, PerSide};
    use std::time::Duration;

    const OFFER: &str =
        "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 14000 RTP/AVP 0\r\n";

    fn hook() -> (MediaAnchor, SharedSessions) {
        let s = Arc::new(Mutex::new(Sessions::new(Config {
            address: PerSide { external: "203.0.113.1".parse().unwrap(), internal: "10.1.0.1".parse().unwrap() },
            ports: (30000, 30099),
            max_sessions: 10,
            max_streams: 4,
            trust_private: PerSide { external: false, internal: true },
            is_private: sbc_proto::nat::is_private,
            latch: LatchConfig::default(),
            idle: Duration::from_secs(60),
            sdp_limits: sbc_media::sdp::Limits::default(),
            origin_seed: 1,
        })));
        (MediaAnchor::new(s.clone()), s)
    }

    fn crossing<'a>(method: Method, ct: &'a [u8], body: &'a [u8]) -> BodyCrossing<'a> {
        BodyCrossing {
            dialog: Some("d"),
            from: Side::Internal,
            to: Side::External,
            method,
            status: None,
            role: BodyRole::Offer,
            content_type: ct,
            body,
        }
    }

    #[test]
    fn core_offer_reaches_outside_anchored_and_bye_releases_its_ports() {
        let (mut h, s) = hook();
        let BodyVerdict::Replace(out) =
            h.on_body(Instant::now(), &crossing(Method::Invite, b"application/sdp", OFFER.as_bytes()))
        else {
            panic!("not anchored")
        };
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("c=IN IP4 203.0.113.1\r\n") && !out.contains("10.0.0.5") && !out.contains("14000"),
            "{out}"
        );
        assert_eq!(s.lock().unwrap().stats().port_pairs_in_use, 2);
        let text = stats_text(&s);
        assert!(text.contains("media.port_pairs_in_use 2\n"), "{text}");
        assert!(
            text.contains("media.calls_listed 1\nmedia.call.1.port_pairs 2\nmedia.call.1.packets_from_external 0\n"),
            "{text}"
        );
        h.on_dialog_end(Instant::now(), "d", DialogEnd::Bye);
        assert_eq!(s.lock().unwrap().stats().port_pairs_in_use, 0);
        let text = stats_text(&s);
        assert!(text.contains("media.port_pairs_released 2\nmedia.offers 1\n"), "{text}");
        assert!(text.contains("media.calls_listed 0\n") && !text.contains("media.call.1."), "{text}");
    }

    #[test]
    fn sdp_in_a_method_without_offer_answer_is_emptied_and_other_bodies_pass() {
        let (mut h, _) = hook();
        let out = h.on_body(Instant::now(), &crossing(Method::Message, b"application/sdp", OFFER.as_bytes()));
        assert_eq!(out, BodyVerdict::Replace(Vec::new()));
        assert_eq!(
            h.on_body(Instant::now(), &crossing(Method::Info, b"application/dtmf-relay", b"Signal=1\r\n")),
            BodyVerdict::Keep
        );
    }
}
