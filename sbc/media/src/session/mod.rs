//! Relay sessions (media anchoring, RFC 3264 offer/answer through a relay): one per dialog
//! token, holding per m-line a pair of relay endpoints (one facing each side, each an RTP and
//! an RTCP port from the [`PortPool`]), the offer/answer state, each side's `o=` line, the
//! latches ([`latch`]) and the counters. Sans-IO: the daemon's relay workers own the sockets
//! and call [`Sessions::on_packet`] for every datagram; time is an argument.
//!
//! Lifecycle: an offer allocates (a new stream's ports, and arms the offerer's endpoint), the
//! answer confirms (arms both, releases streams it refused with port 0); a re-offer keeps the
//! streams it still has and allocates new ones; [`Sessions::end`] (BYE, a failed or cancelled
//! call) releases everything; a session with no packet and no SDP for [`Config::idle`] expires
//! in [`Sessions::handle_timeout`]. Every kind of state has a limit: sessions, streams per
//! session, ports (the pool), learning candidates per endpoint.

pub mod latch;
pub mod pool;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::sdp::{self, Address, MediaPlan, OriginPlan, Plan, Sdp, SdpError};
pub use latch::{Latch, LatchConfig, Refusal};
pub use pool::PortPool;

/// The two sides of the SBC, as the media layer names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    External,
    Internal,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::External => Side::Internal,
            Side::Internal => Side::External,
        }
    }
}

/// A value per side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PerSide<T> {
    pub external: T,
    pub internal: T,
}

impl<T> PerSide<T> {
    pub fn get(&self, side: Side) -> &T {
        match side {
            Side::External => &self.external,
            Side::Internal => &self.internal,
        }
    }
    pub fn get_mut(&mut self, side: Side) -> &mut T {
        match side {
            Side::External => &mut self.external,
            Side::Internal => &mut self.internal,
        }
    }
}

/// What the sessions are built from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The relay's address on each side: what the SDP sent to that side names.
    pub address: PerSide<IpAddr>,
    /// The port range (inclusive), cut into even/odd pairs.
    pub ports: (u16, u16),
    /// Sessions (calls with media) at once; above it an offer is refused.
    pub max_sessions: usize,
    /// m-lines anchored per session; an offer with more is refused.
    pub max_streams: usize,
    /// Whether a private address in a side's SDP can be sent to (true for the core's side;
    /// false outside, where a private address means a phone behind NAT).
    pub trust_private: PerSide<bool>,
    /// The private-address test (the SIP layer's NAT hint, `sbc_proto::nat::is_private`).
    pub is_private: fn(IpAddr) -> bool,
    pub latch: LatchConfig,
    /// A session with no packet relayed and no SDP for this long is released.
    pub idle: Duration,
    pub sdp_limits: sdp::Limits,
    /// Mixed into the `o=` session ids (so two SBCs do not number alike).
    pub origin_seed: u64,
}

/// Why an offer or answer could not be anchored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("SDP: {0}")]
    Sdp(#[from] SdpError),
    #[error("{max} media sessions in use")]
    SessionLimit { max: usize },
    #[error("{count} m-lines over the limit of {max}")]
    StreamLimit { count: usize, max: usize },
    #[error("no relay ports left ({in_use} pairs in use)")]
    PortsExhausted { in_use: usize },
    #[error("an answer without an offer from the other side")]
    NoOffer,
    #[error("the answer has {answer} m-lines, the offer {offer} (RFC 3264 §6)")]
    MediaCount { offer: usize, answer: usize },
}

/// Why a datagram is not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No session holds the port.
    UnknownPort,
    /// Not RTP, RTCP or DTLS (RFC 7983 §7): STUN (ICE is stripped), garbage.
    NotMedia,
    /// The source is not accepted ([`Refusal`]).
    Source(Refusal),
    /// The other side's address is unknown yet (behind NAT and silent so far).
    NoDestination,
}

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it from the relay's `from_port` (on the other side's address) to `to`.
    Forward {
        from_port: u16,
        to: SocketAddr,
    },
    Drop(DropReason),
}

/// Packets and bytes relayed, per direction of travel (from the side named).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: PerSide<u64>,
    pub bytes: PerSide<u64>,
    pub dropped: PerSide<u64>,
}

/// Totals over all sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub sessions: usize,
    pub port_pairs_in_use: usize,
    pub port_pairs: usize,
    pub offers: u64,
    pub answers: u64,
    pub refused: u64,
    pub expired: u64,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub dropped_unknown_port: u64,
    pub dropped_not_media: u64,
    pub dropped_source: u64,
    pub dropped_no_destination: u64,
    /// Port pairs handed out and given back since start (each stream takes one per side): a
    /// call that keeps its ports across a re-offer (hold, resume, a moved phone) adds to
    /// neither; every pair handed out is given back once its call ends.
    pub port_pairs_allocated: u64,
    pub port_pairs_released: u64,
}

/// One active call's relay state, for `sbc stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallStats {
    /// The session's number (stable while the call lasts, never reused).
    pub id: u64,
    /// The dialog token it belongs to.
    pub dialog: String,
    /// Port pairs it holds (two per anchored m-line).
    pub port_pairs: usize,
    pub counters: Counters,
}

/// A relay endpoint: the port pair facing one side and the latches of what arrives there.
#[derive(Debug, Clone)]
struct End {
    /// The even RTP port; RTCP is the next one.
    port: u16,
    rtp: Latch,
    rtcp: Latch,
}

#[derive(Debug, Clone)]
struct Stream {
    ends: PerSide<End>,
}

/// The offerer's media, kept until the next offer (an answer may come more than once: in a
/// reliable 183 and again in the 2xx, RFC 3261 §13.2.1).
#[derive(Debug, Clone)]
struct Offer {
    from: Side,
    /// Per m-line: the offerer's (RTP, RTCP) addresses, None for a stream it disabled or the
    /// relay does not carry.
    media: Vec<Option<Targets>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Targets {
    rtp: Option<SocketAddr>,
    rtcp: Option<SocketAddr>,
}

/// The `o=` line the SBC writes toward one side (RFC 3264 §8: same id, version +1 on change).
#[derive(Debug, Clone, Copy)]
struct OriginState {
    version: u64,
    last: Option<u64>,
}

#[derive(Debug, Clone)]
struct Session {
    dialog: String,
    id: u64,
    /// The `o=` session id the SBC writes (RFC 8866 §5.2), both sides.
    origin_id: u64,
    streams: Vec<Option<Stream>>,
    offer: Option<Offer>,
    origin: PerSide<OriginState>,
    active: Instant,
    counters: Counters,
}

/// Where a port leads: the session, the stream, and the side the endpoint faces.
#[derive(Debug, Clone, Copy)]
struct PortRef {
    session: u64,
    stream: usize,
    side: Side,
}

/// Every relay session.
#[derive(Debug)]
pub struct Sessions {
    cfg: Config,
    pool: PortPool,
    by_dialog: HashMap<String, u64>,
    sessions: HashMap<u64, Session>,
    /// RTP port → its endpoint.
    ports: HashMap<u16, PortRef>,
    next_id: u64,
    stats: Stats,
}

impl Sessions {
    pub fn new(cfg: Config) -> Sessions {
        let pool = PortPool::new(cfg.ports.0, cfg.ports.1);
        let stats = Stats { port_pairs: pool.capacity(), ..Stats::default() };
        Sessions {
            cfg,
            pool,
            by_dialog: HashMap::new(),
            sessions: HashMap::new(),
            ports: HashMap::new(),
            next_id: 1,
            stats,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// An offer from `from` in `dialog` (RFC 3264 §5), rewritten for the other side.
    pub fn offer(&mut self, now: Instant, dialog: &str, from: Side, body: &[u8]) -> Result<Vec<u8>, MediaError> {
        let r = self.offer_inner(now, dialog, from, body);
        self.count(&r, true);
        r
    }

    /// An answer from `from` to the other side's offer (RFC 3264 §6), rewritten for it.
    pub fn answer(&mut self, now: Instant, dialog: &str, from: Side, body: &[u8]) -> Result<Vec<u8>, MediaError> {
        let r = self.answer_inner(now, dialog, from, body);
        self.count(&r, false);
        r
    }

    fn count<T>(&mut self, r: &Result<T, MediaError>, offer: bool) {
        match (r, offer) {
            (Err(_), _) => self.stats.refused += 1,
            (Ok(_), true) => self.stats.offers += 1,
            (Ok(_), false) => self.stats.answers += 1,
        }
    }

    fn offer_inner(&mut self, now: Instant, dialog: &str, from: Side, body: &[u8]) -> Result<Vec<u8>, MediaError> {
        let sdp = sdp::parse(body, &self.cfg.sdp_limits)?;
        if sdp.media.len() > self.cfg.max_streams {
            return Err(MediaError::StreamLimit { count: sdp.media.len(), max: self.cfg.max_streams });
        }
        let id = match self.by_dialog.get(dialog) {
            Some(&id) => id,
            None => {
                if self.sessions.len() >= self.cfg.max_sessions {
                    return Err(MediaError::SessionLimit { max: self.cfg.max_sessions });
                }
                self.new_session(now, dialog)
            }
        };
        let to = from.other();
        let targets: Vec<Option<Targets>> = sdp.media.iter().map(|m| self.targets(m, from)).collect();
        let mut fresh = Vec::new();
        let mut plans = Vec::with_capacity(sdp.media.len());
        for (i, t) in targets.iter().enumerate() {
            let Some(t) = t else {
                plans.push(MediaPlan::Disable);
                continue;
            };
            if self.stream_port(id, i, to).is_none() {
                if self.allocate_stream(id, i).is_none() {
                    for &i in &fresh {
                        self.release_stream(id, i);
                    }
                    let in_use = self.pool.in_use();
                    self.drop_if_empty(id);
                    return Err(MediaError::PortsExhausted { in_use });
                }
                fresh.push(i);
                // A new stream: the offerer may send at once (its endpoint learns from now).
                if let Some(s) = self.stream_mut(id, i) {
                    let end = s.ends.get_mut(from);
                    end.rtp.arm(t.rtp);
                    end.rtcp.arm(t.rtcp);
                }
            }
            let Some(port) = self.stream_port(id, i, to) else {
                plans.push(MediaPlan::Disable);
                continue;
            };
            plans.push(MediaPlan::Anchor { rtp: port, rtcp: port + 1 });
        }
        let address = *self.cfg.address.get(to);
        let Some(s) = self.sessions.get_mut(&id) else { return Err(MediaError::NoOffer) };
        s.offer = Some(Offer { from, media: targets });
        s.active = now;
        Ok(render(&sdp, s, to, address, plans))
    }

    fn answer_inner(&mut self, now: Instant, dialog: &str, from: Side, body: &[u8]) -> Result<Vec<u8>, MediaError> {
        let sdp = sdp::parse(body, &self.cfg.sdp_limits)?;
        let id = *self.by_dialog.get(dialog).ok_or(MediaError::NoOffer)?;
        let offerer = from.other();
        let offer = match self.sessions.get(&id).and_then(|s| s.offer.clone()) {
            Some(o) if o.from == offerer => o,
            _ => return Err(MediaError::NoOffer),
        };
        if sdp.media.len() != offer.media.len() {
            return Err(MediaError::MediaCount { offer: offer.media.len(), answer: sdp.media.len() });
        }
        let mut plans = Vec::with_capacity(sdp.media.len());
        for (i, m) in sdp.media.iter().enumerate() {
            let answered = offer.media.get(i).copied().flatten().zip(self.targets(m, from));
            let Some((offered, answered)) = answered else {
                // Refused by the answerer (port 0) or never anchored: its ports go back.
                self.release_stream(id, i);
                plans.push(MediaPlan::Disable);
                continue;
            };
            let Some(s) = self.stream_mut(id, i) else {
                plans.push(MediaPlan::Disable);
                continue;
            };
            let b = s.ends.get_mut(from);
            b.rtp.arm(answered.rtp);
            b.rtcp.arm(answered.rtcp);
            let a = s.ends.get_mut(offerer);
            a.rtp.arm(offered.rtp);
            a.rtcp.arm(offered.rtcp);
            let port = a.port;
            plans.push(MediaPlan::Anchor { rtp: port, rtcp: port + 1 });
        }
        // Streams past the answer's m-lines (from an earlier, longer description) go back.
        let len = self.sessions.get(&id).map_or(0, |s| s.streams.len());
        for i in sdp.media.len()..len {
            self.release_stream(id, i);
        }
        let address = *self.cfg.address.get(offerer);
        let Some(s) = self.sessions.get_mut(&id) else { return Err(MediaError::NoOffer) };
        s.active = now;
        Ok(render(&sdp, s, offerer, address, plans))
    }

    /// The dialog ended (BYE, a failed or cancelled call, an expiry): every port goes back.
    pub fn end(&mut self, dialog: &str) {
        let Some(id) = self.by_dialog.remove(dialog) else { return };
        self.release_session(id);
    }

    /// Releases sessions idle for [`Config::idle`]; the daemon calls it about once a second.
    pub fn handle_timeout(&mut self, now: Instant) {
        let idle = self.cfg.idle;
        let expired: Vec<u64> =
            self.sessions.values().filter(|s| now.saturating_duration_since(s.active) >= idle).map(|s| s.id).collect();
        for id in expired {
            if let Some(s) = self.sessions.get(&id) {
                let dialog = s.dialog.clone();
                self.by_dialog.remove(&dialog);
            }
            self.release_session(id);
            self.stats.expired += 1;
        }
    }

    /// One datagram that arrived on relay port `local_port` from `src` (RFC 7983 §7 demux).
    pub fn on_packet(&mut self, now: Instant, local_port: u16, src: SocketAddr, bytes: &[u8]) -> Verdict {
        let v = self.relay(now, local_port, src, bytes);
        match v {
            Verdict::Forward { .. } => {
                self.stats.forwarded_packets += 1;
                self.stats.forwarded_bytes += bytes.len() as u64;
            }
            Verdict::Drop(DropReason::UnknownPort) => self.stats.dropped_unknown_port += 1,
            Verdict::Drop(DropReason::NotMedia) => self.stats.dropped_not_media += 1,
            Verdict::Drop(DropReason::Source(_)) => self.stats.dropped_source += 1,
            Verdict::Drop(DropReason::NoDestination) => self.stats.dropped_no_destination += 1,
        }
        v
    }

    fn relay(&mut self, now: Instant, local_port: u16, src: SocketAddr, bytes: &[u8]) -> Verdict {
        let rtcp_port = local_port % 2 == 1;
        let Some(r) = self.ports.get(&(local_port & !1)).copied() else {
            return Verdict::Drop(DropReason::UnknownPort);
        };
        let latch = self.cfg.latch;
        let Some(s) = self.sessions.get_mut(&r.session) else { return Verdict::Drop(DropReason::UnknownPort) };
        let Some(Some(stream)) = s.streams.get_mut(r.stream) else { return Verdict::Drop(DropReason::UnknownPort) };
        // RFC 7983 §7: 128..=191 RTP/RTCP (RFC 5761 §4: payload types 192..=223 are RTCP on a
        // muxed port), 20..=63 DTLS; the rest (STUN 0..=3: ICE is stripped; ZRTP...) dropped.
        let ssrc = match (bytes.first(), bytes.get(1)) {
            (Some(128..=191), Some(pt)) if bytes.len() >= 8 => match bytes.get(8..12) {
                Some(&[a, b, c, d]) if !rtcp_port && !(192..=223).contains(pt) => {
                    Some(u32::from_be_bytes([a, b, c, d]))
                }
                _ => None,
            },
            (Some(20..=63), _) => None,
            _ => {
                *s.counters.dropped.get_mut(r.side) += 1;
                return Verdict::Drop(DropReason::NotMedia);
            }
        };
        let end = stream.ends.get_mut(r.side);
        let accepted = if rtcp_port {
            match end.rtcp.check(now, src, None, &latch) {
                Ok(()) => Ok(()),
                // RTCP from the host whose RTP holds the latch (RFC 3550 §11: the next port,
                // but a NAT maps it anywhere) follows it.
                Err(e) => match end.rtp.latched() {
                    Some(rtp) if rtp.ip() == src.ip() && e != Refusal::NotNegotiated => {
                        end.rtcp.latch_to(now, src);
                        Ok(())
                    }
                    _ => Err(e),
                },
            }
        } else {
            end.rtp.check(now, src, ssrc, &latch)
        };
        if let Err(e) = accepted {
            *s.counters.dropped.get_mut(r.side) += 1;
            return Verdict::Drop(DropReason::Source(e));
        }
        let out = stream.ends.get(r.side.other());
        let to = if rtcp_port { out.rtcp.destination() } else { out.rtp.destination() };
        let Some(to) = to else {
            *s.counters.dropped.get_mut(r.side) += 1;
            return Verdict::Drop(DropReason::NoDestination);
        };
        let from_port = if rtcp_port { out.port + 1 } else { out.port };
        *s.counters.packets.get_mut(r.side) += 1;
        *s.counters.bytes.get_mut(r.side) += bytes.len() as u64;
        s.active = now;
        Verdict::Forward { from_port, to }
    }

    /// The counters of the session of `dialog`.
    pub fn counters(&self, dialog: &str) -> Option<Counters> {
        self.by_dialog.get(dialog).and_then(|id| self.sessions.get(id)).map(|s| s.counters)
    }

    /// The relay ports (RTP) of the session of `dialog`, per m-line, facing `side`.
    pub fn ports(&self, dialog: &str, side: Side) -> Vec<Option<u16>> {
        let Some(s) = self.by_dialog.get(dialog).and_then(|id| self.sessions.get(id)) else { return Vec::new() };
        s.streams.iter().map(|st| st.as_ref().map(|st| st.ends.get(side).port)).collect()
    }

    /// Every active call's counters, at most `limit` of them (oldest first): bounded by
    /// [`Config::max_sessions`] anyway, the limit keeps an admin answer small.
    pub fn calls(&self, limit: usize) -> Vec<CallStats> {
        let mut ids: Vec<u64> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .take(limit)
            .filter_map(|id| self.sessions.get(&id))
            .map(|s| CallStats {
                id: s.id,
                dialog: s.dialog.clone(),
                port_pairs: 2 * s.streams.iter().flatten().count(),
                counters: s.counters,
            })
            .collect()
    }

    pub fn stats(&self) -> Stats {
        Stats { sessions: self.sessions.len(), port_pairs_in_use: self.pool.in_use(), ..self.stats }
    }

    /// Where a side's SDP says its media goes, when it can be trusted (see [`latch`]).
    fn targets(&self, m: &sdp::Media, side: Side) -> Option<Targets> {
        if m.port == 0 || !m.is_udp() {
            return None;
        }
        let trust = |a: &Address, port: u16| {
            let ip = a.ip()?;
            ((*self.cfg.trust_private.get(side) || !(self.cfg.is_private)(ip)) && port != 0)
                .then_some(SocketAddr::new(ip, port))
        };
        Some(Targets { rtp: trust(&m.connection, m.port), rtcp: trust(m.rtcp_address(), m.rtcp_port()) })
    }

    fn new_session(&mut self, now: Instant, dialog: &str) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let origin = OriginState { version: 1, last: None };
        self.sessions.insert(
            id,
            Session {
                dialog: dialog.to_owned(),
                id,
                origin_id: (self.cfg.origin_seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15)) & 0x3fff_ffff_ffff_ffff,
                streams: Vec::new(),
                offer: None,
                origin: PerSide { external: origin, internal: origin },
                active: now,
                counters: Counters::default(),
            },
        );
        self.by_dialog.insert(dialog.to_owned(), id);
        id
    }

    /// Two port pairs for stream `index`, one facing each side.
    fn allocate_stream(&mut self, id: u64, index: usize) -> Option<()> {
        let external = self.pool.allocate(Side::External)?;
        let Some(internal) = self.pool.allocate(Side::Internal) else {
            self.pool.release(external);
            return None;
        };
        let s = self.sessions.get_mut(&id)?;
        if s.streams.len() <= index {
            s.streams.resize(index + 1, None);
        }
        let end = |port| End { port, rtp: Latch::default(), rtcp: Latch::default() };
        if let Some(slot) = s.streams.get_mut(index) {
            *slot = Some(Stream { ends: PerSide { external: end(external), internal: end(internal) } });
        }
        self.ports.insert(external, PortRef { session: id, stream: index, side: Side::External });
        self.ports.insert(internal, PortRef { session: id, stream: index, side: Side::Internal });
        self.stats.port_pairs_allocated += 2;
        Some(())
    }

    fn stream_mut(&mut self, id: u64, index: usize) -> Option<&mut Stream> {
        self.sessions.get_mut(&id)?.streams.get_mut(index)?.as_mut()
    }

    fn stream_port(&self, id: u64, index: usize, side: Side) -> Option<u16> {
        Some(self.sessions.get(&id)?.streams.get(index)?.as_ref()?.ends.get(side).port)
    }

    fn release_stream(&mut self, id: u64, index: usize) {
        let Some(stream) = self.sessions.get_mut(&id).and_then(|s| s.streams.get_mut(index)).and_then(Option::take)
        else {
            return;
        };
        for port in [stream.ends.external.port, stream.ends.internal.port] {
            self.ports.remove(&port);
            self.pool.release(port);
        }
        self.stats.port_pairs_released += 2;
    }

    fn release_session(&mut self, id: u64) {
        let n = self.sessions.get(&id).map_or(0, |s| s.streams.len());
        for i in 0..n {
            self.release_stream(id, i);
        }
        self.sessions.remove(&id);
    }

    /// A session an offer created and could not fill is forgotten at once.
    fn drop_if_empty(&mut self, id: u64) {
        if let Some(s) = self.sessions.get(&id)
            && s.offer.is_none()
            && s.streams.iter().all(Option::is_none)
        {
            let dialog = s.dialog.clone();
            self.by_dialog.remove(&dialog);
            self.sessions.remove(&id);
        }
    }
}

/// The SDP toward `to`, its `o=` version raised when the description changed (RFC 3264 §8).
fn render(sdp: &Sdp<'_>, s: &mut Session, to: Side, address: IpAddr, media: Vec<MediaPlan>) -> Vec<u8> {
    let session_id = s.origin_id;
    let st = s.origin.get_mut(to);
    let mut plan = Plan { address, origin: OriginPlan { session_id, version: st.version }, media };
    let mut r = sdp.render(&plan);
    let hash = r.content_hash();
    if st.last.is_some_and(|h| h != hash) {
        st.version += 1;
        plan.origin.version = st.version;
        r = sdp.render(&plan);
    }
    st.last = Some(hash);
    r.body
}
