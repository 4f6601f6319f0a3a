//! What happens to a message body crossing the SBC when media anchoring is on: the policy
//! behind the engine's media seam (`sbc_proto::engine::MediaHook`, adapted in the daemon).
//!
//! - `application/sdp` in an offer/answer exchange (INVITE, UPDATE, PRACK, ACK and their
//!   responses, RFC 3264 §2, RFC 3311, RFC 3262) within a dialog: anchored by [`Sessions`].
//! - `application/sdp` anywhere else (an OPTIONS answer's capabilities, a MESSAGE, no dialog),
//!   or one that cannot be anchored (malformed, over a limit, no ports left, an answer to no
//!   offer): **stripped** (the body is replaced by an empty one). It names the endpoint's
//!   addresses, and the relay would not carry its media anyway. Stripping an offer turns the
//!   INVITE into one without an offer (RFC 3261 §13.2.1: the answerer then offers in its 2xx);
//!   refusing with 488 instead needs a refusal path in the engine's seam (not there yet).
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
    let r = match c.role {
        Role::Offer => sessions.offer(now, dialog, c.from, c.body),
        Role::Answer => sessions.answer(now, dialog, c.from, c.body),
    };
    match r {
        Ok(b) => Action::Replace(b),
        Err(e) => Action::Strip(e.into()),
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
    fn malformed_sdp_and_orphan_answers_are_stripped() {
        let mut s = sessions();
        let a = on_body(&mut s, Instant::now(), &crossing("application/sdp", "v=0\r\nc=IN IP4 10.0.0.5\r\n"));
        assert!(matches!(a, Action::Strip(StripReason::NotAnchored(MediaError::Sdp(_)))), "{a:?}");
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
}
