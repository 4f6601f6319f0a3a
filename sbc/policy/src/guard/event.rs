//! What the guard is told ([`Event`]) and what it answers about a request ([`Decision`]): the
//! typed vocabulary between the SIP engine's guard seam and the guard. Strings borrowed from a
//! message are the sender's, untrusted: the guard bounds and escapes whatever it keeps of them.

use std::net::IpAddr;
use std::time::Duration;

/// The method classes rate limits are configured for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MethodClass {
    Register,
    Invite,
    Options,
    /// Every other method (ACK, BYE, CANCEL, SUBSCRIBE, MESSAGE, ...).
    Other,
}

impl MethodClass {
    pub const ALL: [MethodClass; 4] =
        [MethodClass::Register, MethodClass::Invite, MethodClass::Options, MethodClass::Other];

    /// The class of a request method name (RFC 3261 §7.1; methods are case-sensitive).
    pub fn of(method: &str) -> MethodClass {
        match method {
            "REGISTER" => MethodClass::Register,
            "INVITE" => MethodClass::Invite,
            "OPTIONS" => MethodClass::Options,
            _ => MethodClass::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MethodClass::Register => "register",
            MethodClass::Invite => "invite",
            MethodClass::Options => "options",
            MethodClass::Other => "other",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            MethodClass::Register => 0,
            MethodClass::Invite => 1,
            MethodClass::Options => 2,
            MethodClass::Other => 3,
        }
    }
}

/// A new request (retransmissions excepted) from `source`, as the engine's guard seam sees it
/// before routing.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The packet's real source address (never a header: a `From` is trivially forged).
    pub source: IpAddr,
    pub class: MethodClass,
    /// The request matched an existing dialog (not merely carries a To tag: the engine knows).
    pub in_dialog: bool,
    /// The user part of the Request-URI (or of To for REGISTER): whom it is aimed at.
    pub target_user: Option<&'a str>,
    /// From's display name, user and host.
    pub from_name: Option<&'a str>,
    pub from_user: Option<&'a str>,
    pub from_host: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// The request carried Authorization or Proxy-Authorization (RFC 3261 §22.2, §22.3).
    pub credentials: bool,
    /// The provider (trunk) the source address belongs to, from the allowlist; None for access
    /// traffic. A trunk's requests are limited per trunk, not per source.
    pub trunk: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// A request of `class` from `source`, out of any dialog, with nothing else known.
    pub fn new(source: IpAddr, class: MethodClass) -> Request<'a> {
        Request {
            source,
            class,
            in_dialog: false,
            target_user: None,
            from_name: None,
            from_user: None,
            from_host: None,
            user_agent: None,
            credentials: false,
            trunk: None,
        }
    }
}

/// A final response on its way back to `source` (relayed from the core or the SBC's own).
#[derive(Debug, Clone)]
pub struct FinalResponse<'a> {
    pub source: IpAddr,
    pub class: MethodClass,
    pub code: u16,
    /// True when the SBC answered itself, false when it relays the core's answer.
    pub by_sbc: bool,
    /// The request carried credentials: a 401/407 to it is a failed attempt, not the challenge
    /// every first REGISTER gets (RFC 3261 §22.2).
    pub credentials: bool,
    pub in_dialog: bool,
    pub target_user: Option<&'a str>,
    pub trunk: Option<&'a str>,
}

impl FinalResponse<'_> {
    /// The authentication failure this response is, if any: the core's 401/407 to a REGISTER
    /// or INVITE that carried credentials (the first challenge every REGISTER gets is not one),
    /// or its 403 to a REGISTER or INVITE. The SBC's own answers and a trunk's are not. The
    /// jails count exactly these, and the daemon logs one `auth failure` line per each (the
    /// line fail2ban's filter matches), so both count the same thing.
    pub fn auth_failure(&self) -> Option<EventKind> {
        if self.by_sbc || self.trunk.is_some() || !matches!(self.class, MethodClass::Register | MethodClass::Invite) {
            return None;
        }
        match self.code {
            401 | 407 if self.credentials => Some(EventKind::AuthFailure),
            403 => Some(EventKind::Forbidden),
            _ => None,
        }
    }
}

/// Everything the guard learns. Each goes through [`super::Guard::handle_event`].
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A new request: rate limits, scanner signatures and behaviour; answered with the
    /// admission [`Decision`].
    Request(Request<'a>),
    /// A final response to a source's request: the core's 401/407 to a request with
    /// credentials and its 403 to REGISTER/INVITE are authentication failures, counted per
    /// source and per target user.
    Final(FinalResponse<'a>),
    /// A message from `source` that failed framing or sanity (RFC 3261 §16.3; the engine's 400).
    Malformed { source: IpAddr, what: &'a str },
    /// A request for a domain the SBC does not serve (a probe, or a misdirected phone).
    UnknownDomain { source: IpAddr, domain: &'a str },
    /// A rate limit outside the guard refused `source` (e.g. the STUN limiter, the XDP
    /// per-source packet limit); the guard's own hits are counted without this event.
    RateLimited { source: IpAddr, what: &'a str },
    /// A call of `trunk` ended (its dialog ended, or its INVITE failed): one less concurrent call.
    CallEnded { trunk: &'a str },
}

/// The kinds of event a jail may count (`events = [...]` in its configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A 401/407 to a REGISTER or INVITE that carried credentials.
    AuthFailure,
    /// A 403 to a REGISTER or INVITE.
    Forbidden,
    /// A scanner's User-Agent or From (bans on first sight with `maxretry = 1`).
    ScannerSignature,
    /// A scanner's behaviour: many distinct target users, or many out-of-dialog requests.
    ScannerBehaviour,
    Malformed,
    UnknownDomain,
    /// A request over a rate limit (the guard's or one reported by [`Event::RateLimited`]).
    RateLimited,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::AuthFailure,
        EventKind::Forbidden,
        EventKind::ScannerSignature,
        EventKind::ScannerBehaviour,
        EventKind::Malformed,
        EventKind::UnknownDomain,
        EventKind::RateLimited,
    ];

    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AuthFailure => "auth-failure",
            EventKind::Forbidden => "forbidden",
            EventKind::ScannerSignature => "scanner-signature",
            EventKind::ScannerBehaviour => "scanner-behaviour",
            EventKind::Malformed => "malformed",
            EventKind::UnknownDomain => "unknown-domain",
            EventKind::RateLimited => "rate-limited",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub(crate) fn index(self) -> usize {
        match self {
            EventKind::AuthFailure => 0,
            EventKind::Forbidden => 1,
            EventKind::ScannerSignature => 2,
            EventKind::ScannerBehaviour => 3,
            EventKind::Malformed => 4,
            EventKind::UnknownDomain => 5,
            EventKind::RateLimited => 6,
        }
    }
}

/// What to do with the message an event is about. For [`Event::Request`], the admission; for
/// the other events, `Drop` when the source is banned (do not even answer it), else `Admit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admit,
    /// Answer 503 with Retry-After (RFC 3261 §21.5.4, §20.33).
    Reject {
        code: u16,
        retry_after: Duration,
        why: Why,
    },
    /// Send nothing.
    Drop {
        why: Why,
    },
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The source's prefix is banned.
    Banned,
    /// A per-source rate limit of this method class.
    SourceRate(MethodClass),
    /// The trunk's calls per second.
    TrunkCallRate,
    /// The trunk's concurrent calls.
    TrunkConcurrent,
    /// The trunk's requests per second.
    TrunkRequestRate,
}

impl Decision {
    pub fn is_admit(&self) -> bool {
        matches!(self, Decision::Admit)
    }
}
