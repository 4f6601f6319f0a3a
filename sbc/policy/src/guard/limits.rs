//! Rate limits: governor's GCRA per (source prefix, method class) and per trunk (calls per
//! second, requests per second), and each trunk's concurrent calls. Each limit is one
//! [`crate::ratelimit::KeyedLimiter`] (the crate's one keyed limiter, shared with STUN): time
//! passed in, the key table bounded however many spoofed sources send, keys back to a fresh
//! state forgotten by the sweep. The limits are independent of the allowlist: a reload keeps
//! them.

use std::hash::Hash;
use std::time::{Duration, Instant};

use super::bounded::BoundedMap;
use super::config::{Config, Over, Rate};
use super::event::{MethodClass, Why};
use crate::Prefix;
use crate::ratelimit::{self, KeyedLimiter, LimiterConfig, Verdict};

/// One keyed limit and what to do over it.
struct Limiter<K: Hash + Eq + Clone> {
    inner: KeyedLimiter<K>,
    rate: Rate,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// None only for a table under KeyedLimiter's minimum of 8 keys, which `max(8)` rules out.
    fn new(rate: Rate, cap: usize, now: Instant) -> Option<Limiter<K>> {
        let config = LimiterConfig {
            rate: ratelimit::Rate { per_second: rate.per_second, burst: rate.burst },
            max_keys: cap.max(8),
        };
        KeyedLimiter::new(config, now).ok().map(|inner| Limiter { inner, rate })
    }

    /// Ok, or how long until the key conforms again.
    fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        match self.inner.check(key, now) {
            Verdict::Allow => Ok(()),
            Verdict::Limited { retry_at } => Err(retry_at.saturating_duration_since(now)),
        }
    }
}

/// Over a limit: what to do, why, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub over: Over,
    pub why: Why,
    pub retry_after: Duration,
}

/// Every rate limit of the guard and the trunks' concurrent calls.
pub struct Limits {
    per_class: [Option<Limiter<Prefix>>; 4],
    trunk_calls: Option<Limiter<Box<str>>>,
    trunk_requests: Option<Limiter<Box<str>>>,
    trunk_over: Over,
    concurrent: BoundedMap<Box<str>, u32>,
    max_concurrent: Option<u32>,
}

/// Most trunks followed (their names come from the allowlist, not from outsiders).
const MAX_TRUNKS: usize = 65_536;

impl Limits {
    pub fn new(config: &Config, now: Instant) -> Limits {
        let per_class = MethodClass::ALL.map(|c| config.rate(c).and_then(|r| Limiter::new(r, config.max_sources, now)));
        Limits {
            per_class,
            trunk_calls: config.trunk.calls.and_then(|r| Limiter::new(r, MAX_TRUNKS, now)),
            trunk_requests: config.trunk.requests.and_then(|r| Limiter::new(r, MAX_TRUNKS, now)),
            trunk_over: config.trunk.over,
            concurrent: BoundedMap::new(MAX_TRUNKS),
            max_concurrent: config.trunk.max_concurrent,
        }
    }

    /// The per-source limit of `class` for `key`.
    pub fn check_source(&mut self, now: Instant, key: Prefix, class: MethodClass) -> Result<(), Hit> {
        let Some(limiter) = self.per_class.get_mut(class.index()).and_then(Option::as_mut) else {
            return Ok(());
        };
        limiter.check(&key, now).map_err(|wait| Hit {
            over: limiter.rate.over,
            why: Why::SourceRate(class),
            retry_after: retry_after(wait),
        })
    }

    /// The trunk's limits: every request counts toward its requests per second; a new call
    /// (`new_call`: an out-of-dialog INVITE) toward its calls per second and, admitted, its
    /// concurrent calls until [`Limits::call_ended`].
    pub fn check_trunk(&mut self, now: Instant, trunk: &str, new_call: bool) -> Result<(), Hit> {
        let over = self.trunk_over;
        let key: Box<str> = trunk.into();
        if let Some(l) = &mut self.trunk_requests {
            l.check(&key, now).map_err(|w| Hit { over, why: Why::TrunkRequestRate, retry_after: retry_after(w) })?;
        }
        if !new_call {
            return Ok(());
        }
        if let Some(max) = self.max_concurrent
            && self.concurrent.get(&key).is_some_and(|&n| n >= max)
        {
            return Err(Hit { over, why: Why::TrunkConcurrent, retry_after: Duration::from_secs(1) });
        }
        if let Some(l) = &mut self.trunk_calls {
            l.check(&key, now).map_err(|w| Hit { over, why: Why::TrunkCallRate, retry_after: retry_after(w) })?;
        }
        if let Some(n) = self.concurrent.get_or_insert_with(key, || 0, |&n| u64::from(n)) {
            *n = n.saturating_add(1);
        }
        Ok(())
    }

    pub fn call_ended(&mut self, trunk: &str) {
        let key: Box<str> = trunk.into();
        let Some(&n) = self.concurrent.get(&key) else { return };
        if n <= 1 {
            self.concurrent.remove(&key);
        } else if let Some(v) = self.concurrent.get_mut(&key) {
            *v = n - 1;
        }
    }

    /// The trunk's calls in progress.
    pub fn concurrent(&self, trunk: &str) -> u32 {
        self.concurrent.get(&Box::<str>::from(trunk)).copied().unwrap_or(0)
    }

    /// Forgets keys a fresh state would replace exactly.
    pub fn sweep(&mut self, now: Instant) {
        for l in self.per_class.iter_mut().flatten() {
            l.inner.forget_fresh(now);
        }
        for l in [&mut self.trunk_calls, &mut self.trunk_requests].into_iter().flatten() {
            l.inner.forget_fresh(now);
        }
    }

    /// Keys held by every limiter.
    pub fn keys(&self) -> usize {
        let trunks = [&self.trunk_calls, &self.trunk_requests].into_iter().flatten().map(|l| l.inner.len());
        self.per_class.iter().flatten().map(|l| l.inner.len()).chain(trunks).sum::<usize>() + self.concurrent.len()
    }

    /// Keys evicted to make room.
    pub fn evicted(&self) -> u64 {
        self.per_class.iter().flatten().map(|l| l.inner.evicted()).sum()
    }
}

/// Retry-After is whole seconds (RFC 3261 §20.33): rounded up, at least 1.
fn retry_after(wait: Duration) -> Duration {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Duration::from_secs(secs.clamp(1, 3600))
}
