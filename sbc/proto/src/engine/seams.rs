//! The seams the engine drives for the layers that are not SIP: the guard (allowlist, rate
//! limits, bans) and the media hook (SDP rewriting, the relay's sessions). Both are sans-IO
//! components with their own state; the engine calls them at fixed points and drains their
//! outputs through [`super::Engine::poll_output`].

use std::time::Instant;

use crate::dialog::DialogEnd;
use crate::flow::{Flow, Side};
use crate::sip::Method;
use crate::sip::sanity::Checked;

/// The guard seam: the userspace allowlist, rate limits and bans plug in here. It is set once
/// and keeps its state (an allowlist reload changes what it reads, not the guard), sees every
/// request before routing and every final response sent to a requester, and may ask the
/// daemon to act (e.g. push a ban into XDP) and to be woken at a time of its own.
pub trait Guard: Send {
    /// Every request, before anything else looks at it (retransmissions excepted).
    fn admit(&mut self, now: Instant, flow: &Flow, req: &Checked<'_>) -> Admit;
    /// Every final response sent to a requester: relayed from the far side, or the SBC's own
    /// (a sanity rejection, a routing failure, a timeout, the guard's own refusal).
    fn on_final(&mut self, _now: Instant, _outcome: &Final<'_>) {}
    /// A message from `flow` that failed framing or sanity (RFC 3261 §16.3): answered with the
    /// RFC's code or dropped by the engine; `what` is the error.
    fn on_malformed(&mut self, _now: Instant, _flow: &Flow, _what: &str) {}
    /// What the guard asks the daemon to do.
    fn poll_action(&mut self) -> Option<GuardAction> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _now: Instant) {}
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    Accept,
    /// Answered `code`; with `retry_after`, a Retry-After header in seconds (RFC 3261
    /// §20.33, e.g. a 503 over a rate limit).
    Reject {
        code: u16,
        reason: &'static str,
        retry_after: Option<u32>,
    },
    Drop,
    /// Go on with these bytes instead of the request: the guard changed some of its headers
    /// (the trunk's caller-ID policy replaces the From and P-Asserted-Identity user). They are
    /// indexed and checked again; the transaction (Via branch, sent-by, method) must not change.
    Rewrite(Vec<u8>),
}

/// A final response on its way to the requester, for the guard.
#[derive(Debug)]
pub struct Final<'a> {
    /// Where the request came from (and the response goes).
    pub requester: Flow,
    pub method: Method,
    pub code: u16,
    /// True when the SBC answered itself (408, 503, 481...), false when it relays the far side's.
    pub by_sbc: bool,
    /// The request carried Authorization or Proxy-Authorization (RFC 3261 §22.2, §22.3): a
    /// 401/407 to it is a failed attempt, not the first challenge.
    pub credentials: bool,
    /// The request's To header and Call-ID as the requester sent them.
    pub to: &'a [u8],
    pub call_id: &'a [u8],
    /// The dialog the request belongs to or created.
    pub dialog: Option<&'a str>,
}

/// What the guard asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardAction {
    /// Drop everything from `addr`/`prefix_len` until `until` (in XDP where attached, and in
    /// userspace), for `reason`.
    Ban { addr: std::net::IpAddr, prefix_len: u8, until: Instant, reason: String },
    /// `addr`/`prefix_len` is no longer banned (expired, lifted by an operator), for `reason`.
    Unban { addr: std::net::IpAddr, prefix_len: u8, reason: String },
}

/// Admits everything (the default until the guard exists).
#[derive(Debug, Default)]
pub struct AllowAll;
impl Guard for AllowAll {
    fn admit(&mut self, _: Instant, _: &Flow, _: &Checked<'_>) -> Admit {
        Admit::Accept
    }
}

/// RFC 3264's roles of a body crossing the SBC, as far as the engine can tell them: a body in
/// a request is an offer (in an ACK: the answer to an offer made in a 2xx); a body in a
/// response is the answer when its request carried one, else an offer (answered in the ACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRole {
    Offer,
    Answer,
}

/// A message body crossing from one side to the other, for the media seam.
#[derive(Debug)]
pub struct BodyCrossing<'a> {
    /// The dialog (its token) the message belongs to or creates; None outside any dialog.
    pub dialog: Option<&'a str>,
    pub from: Side,
    pub to: Side,
    pub method: Method,
    /// The status of a response; None for a request.
    pub status: Option<u16>,
    pub role: BodyRole,
    pub content_type: &'a [u8],
    pub body: &'a [u8],
}

/// What the media seam makes of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyVerdict {
    /// Forward it unchanged.
    Keep,
    /// Forward this body instead (an empty one: the body is stripped).
    Replace(Vec<u8>),
    /// Answer the request carrying it with `code` instead of forwarding it (RFC 3261 §21.5.4:
    /// 503 with a Retry-After when the relay is full; §21.4.26: 488 for an offer it cannot
    /// anchor). Only a request other than ACK can be refused: for a response or an ACK the
    /// engine forwards an empty body instead.
    Refuse { code: u16, reason: &'static str, retry_after: Option<u32> },
}

/// The media seam: SDP offer/answer rewriting (media anchoring) and the release of what a
/// dialog holds. Sans-IO like the engine: the media relay's sockets live in the daemon.
pub trait MediaHook: Send {
    /// What to forward in place of the body (see [`BodyVerdict`]).
    fn on_body(&mut self, now: Instant, crossing: &BodyCrossing<'_>) -> BodyVerdict;
    /// The dialog ended: release its media.
    fn on_dialog_end(&mut self, now: Instant, dialog: &str, why: DialogEnd);
}
