//! The daemon's STUN service: what every place that answers STUN shares — the sans-IO Binding
//! server (`sbc_media::stun::Server`), the per-source rate limit (`sbc_policy::ratelimit`, one
//! table for every port and transport) and the counters `sbc stats` shows. The engine thread
//! calls it for STUN on the SIP UDP ports; the STUN workers (`net::stun`) for the dedicated UDP
//! and TCP ports. No IO here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use sbc_media::stun;
use sbc_policy::ratelimit::{KeyedLimiter, LimiterConfig, SourceKey, SourcePrefixes, Verdict};

use crate::config::Stun as StunConfig;

/// Counters of every STUN path together (relaxed atomics: read for `sbc stats` only).
#[derive(Debug, Default)]
pub struct Counters {
    pub answered: AtomicU64,
    pub errors: AtomicU64,
    pub ignored: AtomicU64,
    pub rate_limited: AtomicU64,
    pub tcp_connections: AtomicU64,
    pub tcp_refused: AtomicU64,
    pub tcp_closed_invalid: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What one datagram or stream message got.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes back to the source (a success or an error response).
    Reply(Vec<u8>),
    /// Over the source's rate: dropped, unread.
    Limited,
    /// Not answered (malformed, bad FINGERPRINT, an indication or a response).
    Ignored(stun::IgnoreReason),
}

/// The STUN service, shared (in an `Arc`) by the engine thread and the STUN workers.
#[derive(Debug)]
pub struct StunService {
    server: stun::Server,
    limiter: Option<Mutex<KeyedLimiter<SourceKey>>>,
    prefixes: SourcePrefixes,
    pub counters: Counters,
}

/// The limiter, locked: held for a whole batch of datagrams. `None` without a rate limit.
pub type LimiterGuard<'a> = Option<MutexGuard<'a, KeyedLimiter<SourceKey>>>;

impl StunService {
    pub fn new(cfg: &StunConfig, now: Instant) -> anyhow::Result<StunService> {
        let server = stun::Server::new(stun::Config::default()).map_err(|e| anyhow::anyhow!("stun: {e}"))?;
        let limiter = match cfg.rate {
            Some(rate) => Some(Mutex::new(
                KeyedLimiter::new(LimiterConfig { rate, max_keys: cfg.max_sources }, now)
                    .map_err(|e| anyhow::anyhow!("stun rate limit: {e}"))?,
            )),
            None => None,
        };
        Ok(StunService { server, limiter, prefixes: cfg.prefixes, counters: Counters::default() })
    }

    /// Locks the rate limiter for a batch (a poisoned lock is taken over: the table stays
    /// consistent between two checks).
    pub fn lock(&self) -> LimiterGuard<'_> {
        self.limiter.as_ref().map(|m| m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// One STUN message from `source` at `now`: the source's rate first (RFC 8489 §6.3 leaves
    /// a server free to drop), then the Binding server's answer (RFC 8489 §6.3); counted.
    pub fn handle(&self, limiter: &mut LimiterGuard<'_>, now: Instant, data: &[u8], source: SocketAddr) -> Outcome {
        if let Some(l) = limiter.as_mut()
            && let Verdict::Limited { .. } = l.check(&SourceKey::new(source.ip(), self.prefixes), now)
        {
            bump(&self.counters.rate_limited);
            return Outcome::Limited;
        }
        match self.server.handle(data, source) {
            stun::Reply::Success(bytes) => {
                bump(&self.counters.answered);
                Outcome::Reply(bytes)
            }
            stun::Reply::Error { bytes, .. } => {
                bump(&self.counters.errors);
                Outcome::Reply(bytes)
            }
            stun::Reply::Ignore(why) => {
                bump(&self.counters.ignored);
                Outcome::Ignored(why)
            }
        }
    }

    /// Counts a datagram that is not STUN at all on a dedicated STUN port.
    pub fn not_stun(&self) {
        bump(&self.counters.ignored);
    }

    /// The `sbc stats` lines.
    pub fn stats_text(&self) -> String {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (sources, evicted) = match self.lock() {
            Some(l) => (l.len() as u64, l.evicted()),
            None => (0, 0),
        };
        format!(
            "stun.answered {}\nstun.errors {}\nstun.ignored {}\nstun.rate_limited {}\nstun.rate_sources {sources}\n\
             stun.rate_evicted {evicted}\nstun.tcp_connections {}\nstun.tcp_refused {}\nstun.tcp_closed_invalid {}\n",
            get(&c.answered),
            get(&c.errors),
            get(&c.ignored),
            get(&c.rate_limited),
            get(&c.tcp_connections),
            get(&c.tcp_refused),
            get(&c.tcp_closed_invalid),
        )
    }
}
