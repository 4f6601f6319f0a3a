//! Symmetric RTP latching (RFC 4961's symmetric RTP, as SBCs use it for endpoints behind NAT):
//! which source one relay endpoint accepts packets from, and where the other leg's packets go.
//!
//! Safe against the hijack of rtpengine's advisory ES2025-01 (the first packet to arrive, from
//! anyone, took the stream): a source is latched only
//! - at once when it is the address the SDP named and that address is trusted (a public one,
//!   or any on a side whose private addresses are reachable, e.g. the core's), or
//! - when it proves itself: [`LatchConfig::packets`] RTP packets with one SSRC within
//!   [`LatchConfig::window`] of its first one, after the offer/answer armed the endpoint.
//!
//! Once latched, packets from any other source are dropped (and counted) unless the latched
//! source has been silent for [`LatchConfig::silence`] and the new one proves itself the same
//! way (a phone whose NAT mapping changed). A re-offer that changes the SDP address re-arms.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How a source earns the latch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatchConfig {
    /// RTP packets with one SSRC a source must send to be latched without the SDP's word.
    pub packets: u32,
    /// Those packets must arrive within this time of the first.
    pub window: Duration,
    /// A latched source silent this long may be replaced by one that proves itself.
    pub silence: Duration,
}

impl Default for LatchConfig {
    fn default() -> Self {
        LatchConfig { packets: 3, window: Duration::from_secs(2), silence: Duration::from_secs(3) }
    }
}

/// Sources tracked at once while learning: a flood from one source cannot keep another from
/// proving itself, and a flood from many is bounded.
const CANDIDATES: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    src: SocketAddr,
    ssrc: u32,
    count: u32,
    first: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum State {
    /// No SDP has named this side's media yet: everything is dropped.
    #[default]
    Unarmed,
    Learning,
    Latched {
        src: SocketAddr,
        last: Instant,
    },
}

/// Why a packet was not accepted from its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No offer or answer has described this side's media yet.
    NotNegotiated,
    /// The source is not (yet) proven.
    Learning,
    /// Another source holds the latch.
    WrongSource,
}

/// One direction's latch: the endpoint facing one side, for RTP or for RTCP.
#[derive(Debug, Clone, Default)]
pub struct Latch {
    /// The address the SDP named, when it may be sent to and trusted.
    expected: Option<SocketAddr>,
    state: State,
    candidates: Vec<Candidate>,
}

impl Latch {
    /// The offer or answer described this side's media at `expected` (None: an address that
    /// cannot be trusted, a private one behind NAT or the hold marker). The same address as
    /// before keeps a latch; another one re-arms (RFC 3264 §8: the description changed).
    pub fn arm(&mut self, expected: Option<SocketAddr>) {
        if self.state != State::Unarmed && self.expected == expected {
            return;
        }
        self.expected = expected;
        self.state = State::Learning;
        self.candidates.clear();
    }

    /// Where the other leg's packets go: the latched source, else the trusted SDP address.
    pub fn destination(&self) -> Option<SocketAddr> {
        match self.state {
            State::Latched { src, .. } => Some(src),
            _ => self.expected,
        }
    }

    pub fn latched(&self) -> Option<SocketAddr> {
        match self.state {
            State::Latched { src, .. } => Some(src),
            _ => None,
        }
    }

    /// A packet from `src`; `ssrc` is Some for an RTP packet (the only kind that can prove a
    /// source), None for RTCP, DTLS and the like.
    pub fn check(
        &mut self,
        now: Instant,
        src: SocketAddr,
        ssrc: Option<u32>,
        cfg: &LatchConfig,
    ) -> Result<(), Refusal> {
        match self.state {
            State::Unarmed => Err(Refusal::NotNegotiated),
            State::Latched { src: held, .. } if held == src => {
                self.state = State::Latched { src, last: now };
                Ok(())
            }
            State::Latched { last, .. } => {
                if now.saturating_duration_since(last) < cfg.silence {
                    return Err(Refusal::WrongSource);
                }
                self.learn(now, src, ssrc, cfg).map_err(|_| Refusal::WrongSource)
            }
            State::Learning if Some(src) == self.expected => {
                self.state = State::Latched { src, last: now };
                Ok(())
            }
            State::Learning => self.learn(now, src, ssrc, cfg),
        }
    }

    /// Latches to `src` without proof: the RTCP of a source whose RTP is latched.
    pub fn latch_to(&mut self, now: Instant, src: SocketAddr) {
        if self.state != State::Unarmed {
            self.state = State::Latched { src, last: now };
            self.candidates.clear();
        }
    }

    fn learn(&mut self, now: Instant, src: SocketAddr, ssrc: Option<u32>, cfg: &LatchConfig) -> Result<(), Refusal> {
        let Some(ssrc) = ssrc else { return Err(Refusal::Learning) };
        self.candidates.retain(|c| now.saturating_duration_since(c.first) <= cfg.window);
        let count = match self.candidates.iter_mut().find(|c| c.src == src) {
            Some(c) if c.ssrc == ssrc => {
                c.count += 1;
                c.count
            }
            // A new SSRC from the same source starts its proof over.
            Some(c) => {
                *c = Candidate { src, ssrc, count: 1, first: now };
                1
            }
            None => {
                if self.candidates.len() >= CANDIDATES {
                    return Err(Refusal::Learning);
                }
                self.candidates.push(Candidate { src, ssrc, count: 1, first: now });
                1
            }
        };
        if count >= cfg.packets {
            self.state = State::Latched { src, last: now };
            self.candidates.clear();
            Ok(())
        } else {
            Err(Refusal::Learning)
        }
    }
}
