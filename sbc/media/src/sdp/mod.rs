//! SDP (RFC 8866, formerly RFC 4566) for media anchoring: a bounded parser of our own that
//! keeps every line's bytes and types the few lines anchoring reads or writes (`o=`, `c=`,
//! `m=`, `a=rtcp`, direction, `rtcp-mux`), and a rewriter that puts the relay's address and
//! ports in place of an endpoint's (RFC 3264 offer/answer, §5 and §6).
//!
//! Bounds come first ([`Limits`]: body size, line count, line length, m-line count); anything
//! malformed is a typed [`SdpError`], never a panic.
//!
//! What the rewriter changes and why (every line it does not name passes byte-exact):
//! - `o=` (RFC 8866 §5.2): username becomes `-`, the session id and version are the
//!   anchoring side's own (the version increases on each changed offer, RFC 3264 §8), the
//!   address is the relay's (the original names the endpoint's host: a leak).
//! - `c=` (§5.7), session and media level: the relay's address, in its family (`IN IP4` ↔
//!   `IN IP6` when the two sides' relay addresses differ in family). An unspecified address
//!   (`0.0.0.0`, `::`) is the RFC 2543 hold marker (RFC 3264 §8.4) and is kept as it is.
//! - `m=` ports (§5.14): the relay's RTP port; port 0 (a disabled stream, RFC 3264 §6) stays 0.
//! - `a=rtcp` (RFC 3605): the relay's RTCP port, and its address when one was given.
//! - Removed: ICE (`a=candidate`, `a=remote-candidates`, `a=ice-ufrag`, `a=ice-pwd`,
//!   `a=ice-options`, `a=ice-lite`, `a=ice-mismatch`, `a=end-of-candidates`, RFC 8839): the
//!   candidates carry the endpoint's addresses, and ICE credentials left without candidates
//!   would make an ICE peer run checks against the relay, which is no ICE agent; without them
//!   both ends fall back to plain RTP to the `c=`/`m=` address (RFC 8839 §5.1). `a=alt`
//!   (an ICE predecessor carrying alternative addresses). BUNDLE (`a=group:BUNDLE`,
//!   `a=bundle-only`, RFC 9143): each m-line gets its own relay ports, so streams cannot share
//!   one 5-tuple through the relay.
//! - Kept: direction (`a=sendonly`/`recvonly`/`inactive`/`sendrecv`, hold, RFC 3264 §8.4),
//!   `a=rtcp-mux` (RFC 5761: both legs agree on what the answerer chose, and the relay forwards
//!   RTP port to RTP port), codecs, crypto and DTLS fingerprints (the relay does not touch
//!   payloads), bandwidth, timing, everything else.

mod parse;
mod rewrite;

#[cfg(test)]
pub(crate) mod tests;

use std::net::IpAddr;

pub use parse::parse;
pub use rewrite::{MediaPlan, OriginPlan, Plan, Rendered};

/// Bounds on what [`parse`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body, in octets.
    pub max_bytes: usize,
    /// Most lines.
    pub max_lines: usize,
    /// Longest line, in octets (without its line break).
    pub max_line_len: usize,
    /// Most m-lines (media descriptions).
    pub max_media: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 8192, max_lines: 256, max_line_len: 1024, max_media: 16 }
    }
}

/// Why a body is not an SDP the anchoring can work on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("body of {len} octets over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("more than {max} lines")]
    TooManyLines { max: usize },
    #[error("line {line} longer than {max} octets")]
    LineTooLong { line: usize, max: usize },
    #[error("more than {max} m-lines")]
    TooManyMedia { max: usize },
    #[error("line {line} is not <type>=<value>")]
    BadLine { line: usize },
    #[error("the first line is not v=0 (RFC 8866 §5.1)")]
    NoVersion,
    #[error("no o= line before the first m= (RFC 8866 §5.2)")]
    NoOrigin,
    #[error("line {line}: malformed {what}")]
    Malformed { line: usize, what: &'static str },
    #[error("m-line {media} has no c= and the session has none (RFC 8866 §5.7)")]
    NoConnection { media: usize },
    #[error("m-line {media}: a port count (/{count}) the relay does not carry")]
    PortCount { media: usize, count: u16 },
}

/// An address in a `c=` (or `o=`, `a=rtcp`) line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Ip(IpAddr),
    /// A fully qualified domain name (RFC 8866 §5.7 allows one): anchoring never resolves it.
    Name(String),
}

impl Address {
    /// `0.0.0.0` or `::`: the RFC 2543 hold marker (RFC 3264 §8.4), not a place to send to.
    pub fn is_hold_marker(&self) -> bool {
        matches!(self, Address::Ip(ip) if ip.is_unspecified())
    }

    /// The IP address, if it is one and not the hold marker.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Ip(ip) if !ip.is_unspecified() => Some(*ip),
            _ => None,
        }
    }
}

/// The stream's direction attribute (RFC 3264 §5.1, §8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// One m-line and what anchoring needs to know of its section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, `image`...
    pub kind: String,
    /// 0: the stream is disabled (RFC 3264 §6).
    pub port: u16,
    /// `RTP/AVP`, `RTP/SAVPF`, `udptl`, `TCP/MSRP`...
    pub proto: String,
    /// The connection that applies: the media's own `c=`, else the session's.
    pub connection: Address,
    /// `a=rtcp` (RFC 3605): the RTCP port, and its address when given.
    pub rtcp: Option<(u16, Option<Address>)>,
    /// `a=rtcp-mux` (RFC 5761).
    pub rtcp_mux: bool,
    /// The media-level direction, else the session-level one, else sendrecv (RFC 3264 §5.1).
    pub direction: Direction,
}

impl Media {
    /// Whether the relay carries this stream: a UDP transport (RTP/AVP and its profiles,
    /// UDP/TLS/RTP/..., udptl, plain UDP). TCP-based ones (`TCP/MSRP`, `TCP/BFCP`...) are not.
    pub fn is_udp(&self) -> bool {
        let p = self.proto.to_ascii_uppercase();
        !p.starts_with("TCP") && !p.contains("/TCP")
    }

    /// The RTCP port the endpoint receives on: `a=rtcp`, else the RTP port + 1 (RFC 3550 §11).
    pub fn rtcp_port(&self) -> u16 {
        match self.rtcp {
            Some((p, _)) => p,
            None => self.port.saturating_add(1),
        }
    }

    /// The RTCP address: `a=rtcp`'s when given, else the connection's.
    pub fn rtcp_address(&self) -> &Address {
        match &self.rtcp {
            Some((_, Some(a))) => a,
            _ => &self.connection,
        }
    }
}

/// The `o=` line's fields (RFC 8866 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: String,
    pub version: String,
    pub address: Address,
}

/// Line kinds the rewriter acts on; every other line is kept as it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Origin,
    /// `c=`: keep the ttl / count suffix of a multicast address as it was.
    Connection {
        hold: bool,
    },
    /// `m=`: the media index.
    Media(usize),
    /// `a=rtcp:` with or without an address.
    Rtcp {
        with_address: bool,
    },
    /// `s=`: written as `s=-` (RFC 8866 §5.3).
    SessionName,
    /// Removed by the rewriter (ICE, BUNDLE, alt; `i=`, `u=`, `e=`, `p=`).
    Strip,
    Other,
}

/// A parsed SDP: the body's lines (borrowed) and the typed view of them.
#[derive(Debug, Clone)]
pub struct Sdp<'a> {
    pub(crate) lines: Vec<(&'a [u8], Kind)>,
    pub origin: Origin,
    pub media: Vec<Media>,
}
