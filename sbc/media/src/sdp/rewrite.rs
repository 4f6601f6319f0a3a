//! The rewriter: the parsed lines written back with the relay's address and ports (RFC 3264
//! §5, §6, §8), every line it does not own byte-exact, CRLF line breaks (RFC 8866 §5).

use std::net::IpAddr;
use std::ops::Range;

use super::{Kind, Sdp};

/// What the `o=` line says (RFC 8866 §5.2): the anchoring side's own session id and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginPlan {
    pub session_id: u64,
    pub version: u64,
}

/// What one m-line becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPlan {
    /// The relay's ports (an m-line with port 0 stays 0 whatever the plan).
    Anchor { rtp: u16, rtcp: u16 },
    /// Port 0: the stream is refused (RFC 3264 §6), e.g. a transport the relay does not carry.
    Disable,
}

/// The rewrite of one SDP toward one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The relay's address on the side the SDP goes to.
    pub address: IpAddr,
    pub origin: OriginPlan,
    /// One per m-line, in order; a missing one disables its m-line.
    pub media: Vec<MediaPlan>,
}

/// A rewritten body, and where its `o=` line is (to compare two versions without it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub body: Vec<u8>,
    pub origin: Range<usize>,
}

impl Rendered {
    /// A hash of everything but the `o=` line: equal for two renderings that differ only in
    /// their version (RFC 3264 §8: the version changes only when the description does).
    pub fn content_hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.body.get(..self.origin.start).hash(&mut h);
        self.body.get(self.origin.end..).hash(&mut h);
        h.finish()
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() { "IP6" } else { "IP4" }
}

impl Sdp<'_> {
    /// Writes the SDP with `plan` applied (see the module's documentation for each line).
    pub fn render(&self, plan: &Plan) -> Rendered {
        let mut out = Vec::with_capacity(self.lines.iter().map(|(l, _)| l.len() + 2).sum::<usize>() + 64);
        let mut origin = 0..0;
        let addr = format!("IN {} {}", family(plan.address), plan.address);
        // The plan of the m-line whose section we are in; None in the session section.
        let mut current: Option<(usize, MediaPlan)> = None;
        for &(line, kind) in &self.lines {
            match kind {
                Kind::Origin => {
                    let start = out.len();
                    let o = &plan.origin;
                    out.extend_from_slice(format!("o=- {} {} {addr}", o.session_id, o.version).as_bytes());
                    origin = start..out.len() + 2;
                }
                Kind::Connection { hold: true } => out.extend_from_slice(line),
                Kind::Connection { hold: false } => out.extend_from_slice(format!("c={addr}").as_bytes()),
                Kind::Media(i) => {
                    let original = self.media.get(i).map_or(0, |m| m.port);
                    let p = if original == 0 {
                        MediaPlan::Disable
                    } else {
                        plan.media.get(i).copied().unwrap_or(MediaPlan::Disable)
                    };
                    current = Some((i, p));
                    let port = match p {
                        MediaPlan::Anchor { rtp, .. } => rtp,
                        MediaPlan::Disable => 0,
                    };
                    out.extend_from_slice(&media_line(line, port));
                }
                Kind::Rtcp { with_address } => match current {
                    Some((_, MediaPlan::Anchor { rtcp, .. })) => {
                        out.extend_from_slice(format!("a=rtcp:{rtcp}").as_bytes());
                        if with_address {
                            out.push(b' ');
                            out.extend_from_slice(addr.as_bytes());
                        }
                    }
                    // A disabled stream has no RTCP to announce.
                    _ => continue,
                },
                Kind::SessionName => out.extend_from_slice(b"s=-"),
                Kind::Strip => continue,
                Kind::Other => out.extend_from_slice(line),
            }
            out.extend_from_slice(b"\r\n");
        }
        Rendered { body: out, origin }
    }
}

/// `m=<media> <port>[/n] <rest>` with `port` in place of the port (and of a `/1` count).
fn media_line(line: &[u8], port: u16) -> Vec<u8> {
    let ws = |b: &u8| b.is_ascii_whitespace();
    // Fields as the parser's split_ascii_whitespace reads them: leading blanks skipped too.
    let value = line.get(2..).unwrap_or_default();
    let value = value.get(value.iter().position(|b| !ws(b)).unwrap_or(value.len())..).unwrap_or_default();
    let kind_end = value.iter().position(ws).unwrap_or(value.len());
    let kind = value.get(..kind_end).unwrap_or_default();
    let after_kind = value.get(kind_end..).unwrap_or_default();
    let port_start = after_kind.iter().position(|b| !ws(b)).unwrap_or(after_kind.len());
    let from_port = after_kind.get(port_start..).unwrap_or_default();
    let port_end = from_port.iter().position(ws).unwrap_or(from_port.len());
    let after_port = from_port.get(port_end..).unwrap_or_default();
    let rest_start = after_port.iter().position(|b| !ws(b)).unwrap_or(after_port.len());
    let rest = after_port.get(rest_start..).unwrap_or_default();
    let mut out = Vec::with_capacity(line.len() + 6);
    out.extend_from_slice(b"m=");
    out.extend_from_slice(kind);
    out.extend_from_slice(format!(" {port} ").as_bytes());
    out.extend_from_slice(rest);
    out
}
