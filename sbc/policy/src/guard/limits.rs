//! Rate limits: governor's GCRA per (source prefix, method class) and per trunk (calls per
//! second, requests per second), and each trunk's concurrent calls. Sans-IO: governor reads a
//! [`FakeRelativeClock`] that [`Limits::advance`] moves to the `now` it is given.
//!
//! Bounded: governor's keyed state lives in [`Store`], our [`governor::state::StateStore`] over a
//! capped map (`BoundedMap`). Full, a new key evicts the sampled key with the earliest theoretical arrival
//! time (the one that has been quiet longest; a source being limited has its TAT in the
//! future, so it is not the one evicted); the sweep drops keys whose state is indistinguishable
//! from a fresh one. The limits are independent of the allowlist: a reload keeps them.

use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use super::bounded::BoundedMap;
use super::config::{Config, Over, Rate};
use super::event::{MethodClass, Why};
use crate::Prefix;

/// Longest time step given to the fake clock at once: past it, every bucket is full anyway.
const MAX_STEP: Duration = Duration::from_secs(86_400);

/// governor's keyed state, bounded (see the module's doc). Shared with our `Limiter` for the
/// sweep and the counts: governor keeps its store private.
#[derive(Debug)]
pub struct Store<K> {
    map: Arc<Mutex<BoundedMap<K, u64>>>,
}

fn locked<K>(map: &Mutex<BoundedMap<K, u64>>) -> MutexGuard<'_, BoundedMap<K, u64>> {
    // Nothing panics while holding it; a poisoned lock still holds a consistent map.
    map.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K: Hash + Eq + Clone> StateStore for Store<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = locked(&self.map);
        let known = map.get(key).map(|&tat| Nanos::from(tat));
        let (out, tat) = f(known)?;
        // A full map evicts the sampled key with the earliest TAT: the quietest source.
        if let Some(slot) = map.get_or_insert_with(key.clone(), || 0, |&tat| tat) {
            *slot = tat.as_u64();
        }
        Ok(out)
    }
}

type Gov<K> = RateLimiter<K, Store<K>, FakeRelativeClock, NoOpMiddleware<Nanos>>;

/// One keyed limit.
struct Limiter<K: Hash + Eq + Clone> {
    gov: Gov<K>,
    map: Arc<Mutex<BoundedMap<K, u64>>>,
    rate: Rate,
    /// governor's emission interval (1 / rate), in nanoseconds.
    t: u64,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(rate: Rate, cap: usize, clock: &FakeRelativeClock) -> Limiter<K> {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        let t = u64::try_from(quota.replenish_interval().as_nanos()).unwrap_or(u64::MAX);
        let map = Arc::new(Mutex::new(BoundedMap::new(cap)));
        let store = Store { map: map.clone() };
        Limiter { gov: RateLimiter::new(quota, store, clock.clone()), map, rate, t }
    }

    /// Ok, or how long until the key conforms again.
    fn check(&self, key: &K) -> Result<(), Duration> {
        self.gov.check_key(key).map_err(|not_until| not_until.wait_time_from(self.gov.clock().now()))
    }

    /// Drops keys whose TAT is past by one interval: a fresh state would behave the same. TATs
    /// count from the clock's reading when the limiter was made, which is 0 ([`Limits::new`]
    /// makes every limiter before the clock first moves).
    fn sweep(&self) {
        let now = self.gov.clock().now().as_u64();
        let t = self.t;
        locked(&self.map).retain(|_, tat| tat.saturating_add(t) > now);
    }

    fn len(&self) -> usize {
        locked(&self.map).len()
    }

    fn evicted(&self) -> u64 {
        locked(&self.map).evicted()
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
    clock: FakeRelativeClock,
    last: Instant,
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
        let clock = FakeRelativeClock::default();
        let per_class = MethodClass::ALL.map(|c| config.rate(c).map(|r| Limiter::new(r, config.max_sources, &clock)));
        Limits {
            per_class,
            trunk_calls: config.trunk.calls.map(|r| Limiter::new(r, MAX_TRUNKS, &clock)),
            trunk_requests: config.trunk.requests.map(|r| Limiter::new(r, MAX_TRUNKS, &clock)),
            trunk_over: config.trunk.over,
            concurrent: BoundedMap::new(MAX_TRUNKS),
            max_concurrent: config.trunk.max_concurrent,
            clock,
            last: now,
        }
    }

    /// Moves governor's clock to `now` (never backwards).
    pub fn advance(&mut self, now: Instant) {
        if now > self.last {
            self.clock.advance((now - self.last).min(MAX_STEP));
            self.last = now;
        }
    }

    /// The per-source limit of `class` for `key`.
    pub fn check_source(&mut self, now: Instant, key: Prefix, class: MethodClass) -> Result<(), Hit> {
        self.advance(now);
        let Some(limiter) = self.per_class.get(class.index()).and_then(Option::as_ref) else {
            return Ok(());
        };
        limiter.check(&key).map_err(|wait| Hit {
            over: limiter.rate.over,
            why: Why::SourceRate(class),
            retry_after: retry_after(wait),
        })
    }

    /// The trunk's limits: every request counts toward its requests per second; a new call
    /// (`new_call`: an out-of-dialog INVITE) toward its calls per second and, admitted, its
    /// concurrent calls until [`Limits::call_ended`].
    pub fn check_trunk(&mut self, now: Instant, trunk: &str, new_call: bool) -> Result<(), Hit> {
        self.advance(now);
        let over = self.trunk_over;
        let key: Box<str> = trunk.into();
        if let Some(l) = &self.trunk_requests {
            l.check(&key).map_err(|w| Hit { over, why: Why::TrunkRequestRate, retry_after: retry_after(w) })?;
        }
        if !new_call {
            return Ok(());
        }
        if let Some(max) = self.max_concurrent
            && self.concurrent.get(&key).is_some_and(|&n| n >= max)
        {
            return Err(Hit { over, why: Why::TrunkConcurrent, retry_after: Duration::from_secs(1) });
        }
        if let Some(l) = &self.trunk_calls {
            l.check(&key).map_err(|w| Hit { over, why: Why::TrunkCallRate, retry_after: retry_after(w) })?;
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
        self.advance(now);
        for l in self.per_class.iter().flatten() {
            l.sweep();
        }
        for l in [&self.trunk_calls, &self.trunk_requests].into_iter().flatten() {
            l.sweep();
        }
    }

    /// Keys held by every limiter.
    pub fn keys(&self) -> usize {
        let trunks = [&self.trunk_calls, &self.trunk_requests].into_iter().flatten().map(Limiter::len);
        self.per_class.iter().flatten().map(Limiter::len).chain(trunks).sum::<usize>() + self.concurrent.len()
    }

    /// Keys evicted to make room.
    pub fn evicted(&self) -> u64 {
        self.per_class.iter().flatten().map(Limiter::evicted).sum()
    }
}

/// Retry-After is whole seconds (RFC 3261 §20.33): rounded up, at least 1.
fn retry_after(wait: Duration) -> Duration {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Duration::from_secs(secs.clamp(1, 3600))
}
