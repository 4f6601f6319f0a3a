//! What happens to a message body crossing the SBC when media anchoring is on: the policy
//! behind the engine's media seam (`sbc_proto::engine::MediaHook`, adapted in the daemon).
//!
//! - `application/sdp` in an offer/answer exchange (INVITE, UPDATE, PRACK, ACK and their
//!   responses, RFC 3264 §2, RFC 3311, RFC 3262) within a dialog: anchored by [`Sessions`].
//! - An offer that cannot be anchored is **refused** ([`Action::Refuse`]): with 503 and a
//!   Retry-After when the relay is full (no ports left, `max_calls` sessions: RFC 3261
//!   §21.5.4, the caller may retry or try another SBC), with 488 Not Acceptable Here when the
//!   SDP itself is unusable (malformed, over a limit: §21.4.26). Nothing another call holds is
//!   touched. The engine answers a refused request itself; a refused offer in a response (late
//!   offer in a 2xx) cannot be answered and is stripped instead.
//! - `application/sdp` anywhere else (an OPTIONS answer's capabilities, a MESSAGE, no dialog),
//!   or an answer that cannot be anchored (malformed, to no offer): **stripped** (the body is
//!   replaced by an empty one). It names the endpoint's addresses, and the relay would not
//!   carry its media anyway.
//! - `multipart/*` (RFC 2046 §5.1, e.g. SDP beside an ISUP body, RFC 3204): stripped whole,
//!   since an SDP inside it would cross unanchored. Rewriting the SDP part in place is a later
//!   step.
//! - Any other type (`application/dtmf-relay`, `text/plain`, `application/isup`...): kept. It
//!   is not a session description; the relay does not read it.

use std::time::Instant;

use crate::session::{MediaError, Sessions, Side};

/// RFC 3264's role of the body (as the SIP layer tells it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Offer,
    Answer,
}

/// A body crossing from `from` to the other side.
#[derive(Debug, Clone, Copy)]
pub struct Crossing<'a> {
    pub dialog: Option<&'a str>,
    pub from: Side,
    pub role: Role,
    /// INVITE, UPDATE, PRACK or ACK (or a response to one): a method that carries offers and
    /// answers.
    pub offer_answer: bool,
    pub content_type: &'a [u8],
    pub body: &'a [u8],
}

/// Why a body was stripped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripReason {
    #[error("SDP outside an offer/answer exchange in a dialog")]
    OutsideOfferAnswer,
    #[error("SDP not anchored: {0}")]
    NotAnchored(#[from] MediaError),
    #[error("multipart body (the SDP inside would cross unanchored)")]
    Multipart,
}

/// What the SIP layer forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The body as it came.
    Keep,
    /// The anchored SDP.
    Replace(Vec<u8>),
    /// An empty body instead.
    Strip(StripReason),
    /// Refuse the message carrying the offer with `code` (a Retry-After of `retry_after`
    /// seconds with a 503), for `why`.
    Refuse { code: u16, reason: &'static str, retry_after: Option<u32>, why: MediaError },
}

/// The Retry-After (seconds) of the 503 sent when the relay is full.
pub const RETRY_AFTER_SECS: u32 = 5;

/// How an offer that cannot be anchored is refused (see the module's documentation).
pub fn refusal(why: MediaError) -> Action {
    match why {
        MediaError::SessionLimit { .. } | MediaError::PortsExhausted { .. } => {
            Action::Refuse { code: 503, reason: "Service Unavailable", retry_after: Some(RETRY_AFTER_SECS), why }
        }
        why => Action::Refuse { code: 488, reason: "Not Acceptable Here", retry_after: None, why },
    }
}

/// The media type of a Content-Type value (RFC 3261 §20.15, RFC 2045 §5.1), lower case.
fn media_type(content_type: &[u8]) -> String {
    let t = content_type.split(|&b| b == b';').next().unwrap_or_default();
    String::from_utf8_lossy(t).trim().to_ascii_lowercase()
}

/// Applies the policy (see the module's documentation) to one body.
pub fn on_body(sessions: &mut Sessions, now: Instant, c: &Crossing<'_>) -> Action {
    let t = media_type(c.content_type);
    if t.starts_with("multipart/") {
        return Action::Strip(StripReason::Multipart);
    }
    if t != "application/sdp" {
        return Action::Keep;
    }
    let Some(dialog) = c.dialog.filter(|_| c.offer_answer) else {
        return Action::Strip(StripReason::OutsideOfferAnswer);
    };
    match c.role {
        Role::Offer => match sessions.offer(now, dialog, c.from, c.body) {
            Ok(b) => Action::Replace(b),
            Err(e) => refusal(e),
        },
        Role::Answer => match sessions.answer(now, dialog, c.from, c.body) {
            Ok(b) => Action::Replace(b),
            Err(e) => Action::Strip(e.into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::tests::{ASTERISK, BARESIP};
    use crate::session::{Config, LatchConfig, PerSide};
    use std::time::Duration;

    fn sessions() -> Sessions {
        Sessions::new(Config {
            address: PerSide { external: "203.0.113.1".parse().unwrap(), internal: "10.1.0.1".parse().unwrap() },
            ports: (30000, 30099),
            max_sessions: 10,
            max_streams: 4,
            trust_private: PerSide { external: false, internal: true },
            is_private: |_| true,
            latch: LatchConfig::default(),
            idle: Duration::from_secs(60),
            sdp_limits: crate::sdp::Limits::default(),
            origin_seed: 1,
        })
    }

    fn crossing<'a>(ct: &'a str, body: &'a str) -> Crossing<'a> {
        Crossing {
            dialog: Some("d"),
            from: Side::Internal,
            role: Role::Offer,
            offer_answer: true,
            content_type: ct.as_bytes(),
            body: body.as_bytes(),
        }
    }

    #[test]
    fn sdp_offer_in_a_dialog_is_anchored_whatever_the_content_type_case_and_parameters() {
        let mut s = sessions();
        let Action::Replace(b) =
            on_body(&mut s, Instant::now(), &crossing("Application/SDP ; charset=utf-8", ASTERISK))
        else {
            panic!("not anchored")
        };
        let b = String::from_utf8(b).unwrap();
        assert!(b.contains("c=IN IP4 203.0.113.1") && !b.contains("10.0.0.5"));
    }

    #[test]
    fn multipart_with_sdp_inside_is_stripped_not_forwarded() {
        let mut s = sessions();
        let body = format!("--b\r\nContent-Type: application/sdp\r\n\r\n{ASTERISK}\r\n--b--\r\n");
        let a = on_body(&mut s, Instant::now(), &crossing("multipart/mixed;boundary=b", &body));
        assert_eq!(a, Action::Strip(StripReason::Multipart));
        assert_eq!(s.stats().port_pairs_in_use, 0);
    }

    #[test]
    fn sdp_outside_a_dialog_or_outside_offer_answer_is_stripped() {
        let mut s = sessions();
        let mut c = crossing("application/sdp", ASTERISK);
        c.dialog = None;
        assert_eq!(on_body(&mut s, Instant::now(), &c), Action::Strip(StripReason::OutsideOfferAnswer));
        let mut c = crossing("application/sdp", ASTERISK);
        c.offer_answer = false;
        assert_eq!(on_body(&mut s, Instant::now(), &c), Action::Strip(StripReason::OutsideOfferAnswer));
    }

    #[test]
    fn a_malformed_offer_is_refused_488_and_an_orphan_answer_stripped() {
        let mut s = sessions();
        let a = on_body(&mut s, Instant::now(), &crossing("application/sdp", "v=0\r\nc=IN IP4 10.0.0.5\r\n"));
        assert!(matches!(a, Action::Refuse { code: 488, retry_after: None, why: MediaError::Sdp(_), .. }), "{a:?}");
        let mut c = crossing("application/sdp", BARESIP);
        c.role = Role::Answer;
        assert_eq!(on_body(&mut s, Instant::now(), &c), Action::Strip(StripReason::NotAnchored(MediaError::NoOffer)));
    }

    #[test]
    fn other_body_types_pass_unchanged() {
        let mut s = sessions();
        for ct in ["application/dtmf-relay", "text/plain", "application/isup; version=itu-t92+"] {
            assert_eq!(on_body(&mut s, Instant::now(), &crossing(ct, "Signal=5\r\n")), Action::Keep);
        }
    }

    #[test]
    fn offers_past_max_calls_or_the_port_pool_are_refused_503_and_release_nothing_of_other_calls() {
        // 10 sessions at most, 25 pairs per side (30000-30099): the 11th call is refused for
        // max_calls; with 3 m-lines per offer, the pool runs out at the 9th call.
        let mut s = sessions();
        let offer = |s: &mut Sessions, d: &str| {
            let mut c = crossing("application/sdp", ASTERISK);
            c.dialog = Some(d);
            on_body(s, Instant::now(), &c)
        };
        for i in 0..10 {
            assert!(matches!(offer(&mut s, &format!("d{i}")), Action::Replace(_)));
        }
        let before = s.stats();
        let a = offer(&mut s, "d10");
        assert!(
            matches!(
                a,
                Action::Refuse {
                    code: 503,
                    retry_after: Some(RETRY_AFTER_SECS),
                    why: MediaError::SessionLimit { .. },
                    ..
                }
            ),
            "{a:?}"
        );
        let after = s.stats();
        assert_eq!((after.sessions, after.port_pairs_in_use), (before.sessions, before.port_pairs_in_use));
        assert!(s.ports("d3", Side::Internal).iter().all(Option::is_some), "another call kept its ports");
        // A re-offer in a call that exists is still anchored at the limit.
        assert!(matches!(offer(&mut s, "d3"), Action::Replace(_)));
        // The pool: three streams per call, 25 pairs per side.
        let three = ASTERISK.to_string()
            + &ASTERISK[ASTERISK.find("m=").unwrap()..]
            + &ASTERISK[ASTERISK.find("m=").unwrap()..];
        let mut s = sessions();
        let mut refused = None;
        for i in 0..10 {
            let mut c = crossing("application/sdp", &three);
            let d = format!("p{i}");
            c.dialog = Some(&d);
            match on_body(&mut s, Instant::now(), &c) {
                Action::Replace(_) => {}
                a => {
                    refused = Some((i, a));
                    break;
                }
            }
        }
        let Some((i, a)) = refused else { panic!("the pool never ran out") };
        assert_eq!(i, 8, "25 pairs per side hold 8 calls of 3 streams");
        assert!(
            matches!(a, Action::Refuse { code: 503, retry_after: Some(_), why: MediaError::PortsExhausted { .. }, .. }),
            "{a:?}"
        );
        assert_eq!(s.stats().port_pairs_in_use, 8 * 3 * 2, "the refused call holds nothing, the others all theirs");
        assert_eq!(s.stats().sessions, 8);
    }
}
