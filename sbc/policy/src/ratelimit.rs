//! Keyed rate limits with bounded memory: [`KeyedLimiter`] admits or refuses one event per key
//! (a source prefix, or a source and a method class) with governor's GCRA, on a time the caller
//! passes in (sans-IO), in a table that never holds more than `max_keys` keys however many
//! (spoofed) sources send. [`SourceKey`] keys by source address, IPv6 by a shorter prefix
//! (a subscriber usually gets a whole /64, so a /128 key would let one host rotate freely).
//!
//! Used by the STUN server now; the guard's per-source, per-method-class limits will share it.
//!
//! How the table stays bounded: governor's state for a key is its theoretical arrival time
//! (TAT, the GCRA's one number). A key whose TAT has passed is indistinguishable from a key never
//! seen, so it can be dropped at no cost. When a new key arrives at a full table, those are
//! dropped first; if that frees nothing, the eighth of the table closest to fresh (lowest TAT)
//! is dropped, and counted in [`KeyedLimiter::evicted`]: those sources get a fresh burst a little
//! early. Each such sweep is linear in the table but frees an eighth of it, so a flood of new
//! keys costs a bounded, amortised amount per key.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use crate::Prefix;

/// How many events a key may have: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// What a [`KeyedLimiter`] is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterConfig {
    pub rate: Rate,
    /// Most keys held at once (at least 8).
    pub max_keys: usize,
}

/// A [`LimiterConfig`] the limiter refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimiterError {
    #[error("max_keys {0} is below the minimum of 8")]
    TooFewKeys(usize),
}

/// The limiter's decision for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the rate; the key may try again at `retry_at`.
    Limited {
        retry_at: Instant,
    },
}

/// A rate limiter per key, with its time passed in and its table bounded (see the module doc).
/// `Send`, not `Sync`: one owner, or a `Mutex` around it when threads share it (the STUN workers
/// lock it once per batch of datagrams).
#[derive(Debug)]
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    quota: Quota,
    /// Every key's GCRA state. Lent to a governor `RateLimiter` for each check: governor keeps
    /// the store of a limiter private (`into_state_store` is the only way back), and a limiter
    /// is only its quota, a clock and a start, so building one per check costs a few moves.
    store: BoundedStore<K>,
    /// The instant governor's times count from.
    base: Instant,
    max_keys: usize,
    evicted: u64,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// An empty limiter; `now` is any time not later than the first [`KeyedLimiter::check`].
    pub fn new(config: LimiterConfig, now: Instant) -> Result<KeyedLimiter<K>, LimiterError> {
        if config.max_keys < 8 {
            return Err(LimiterError::TooFewKeys(config.max_keys));
        }
        let quota = Quota::per_second(config.rate.per_second).allow_burst(config.rate.burst);
        Ok(KeyedLimiter {
            quota,
            store: BoundedStore { map: RefCell::new(HashMap::new()) },
            base: now,
            max_keys: config.max_keys,
            evicted: 0,
        })
    }

    /// One event of `key` at `now`: allowed (and counted against the key) or over its rate.
    pub fn check(&mut self, key: &K, now: Instant) -> Verdict {
        let since = now.saturating_duration_since(self.base);
        let map = self.store.map.get_mut();
        if map.len() >= self.max_keys && !map.contains_key(key) {
            self.evicted += make_room(map, Nanos::from(since), self.max_keys);
        }
        // governor's start is the clock's reading at construction (zero), so its times are
        // `since`, the same scale as the stored TATs.
        let store = std::mem::replace(&mut self.store, BoundedStore { map: RefCell::new(HashMap::new()) });
        let limiter: RateLimiter<K, BoundedStore<K>, ArgClock, NoOpMiddleware<Duration>> =
            RateLimiter::new(self.quota, store, ArgClock(Cell::new(Duration::ZERO)));
        limiter.clock().0.set(since);
        let verdict = match limiter.check_key(key) {
            Ok(()) => Verdict::Allow,
            Err(not_until) => {
                let at: Duration = not_until.earliest_possible();
                Verdict::Limited { retry_at: self.base + at }
            }
        };
        self.store = limiter.into_state_store();
        verdict
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.store.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys dropped before they were fresh again, to make room for new ones (a full table).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Drops every key that is back to a fresh state at `now`: housekeeping for quiet times
    /// (a full table does it by itself).
    pub fn forget_fresh(&mut self, now: Instant) {
        let since = Nanos::from(now.saturating_duration_since(self.base)).as_u64();
        self.store.map.get_mut().retain(|_, tat| *tat > since);
    }
}

/// Frees room in a full table at `now`: the keys back to fresh (their TAT has passed), or else
/// the eighth closest to fresh. Returns how many keys were dropped before they were fresh.
fn make_room<K>(map: &mut HashMap<K, u64>, now: Nanos, max_keys: usize) -> u64 {
    map.retain(|_, tat| *tat > now.as_u64());
    if map.len() < max_keys {
        return 0;
    }
    let mut tats: Vec<u64> = map.values().copied().collect();
    let cut = (max_keys / 8).max(1).min(tats.len().saturating_sub(1));
    let (_, threshold, _) = tats.select_nth_unstable(cut);
    let threshold = *threshold;
    let before = map.len();
    map.retain(|_, tat| *tat > threshold);
    (before - map.len()) as u64
}

/// A governor clock that reads the time the caller set: sans-IO time for governor.
#[derive(Debug)]
struct ArgClock(Cell<Duration>);

impl Clock for ArgClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.0.get()
    }
}

/// governor's keyed state: one TAT (nanoseconds since the limiter's base) per key.
#[derive(Debug)]
struct BoundedStore<K> {
    map: RefCell<HashMap<K, u64>>,
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.map.borrow_mut();
        let (result, tat) = f(map.get(key).map(|t| Nanos::from(*t)))?;
        map.insert(key.clone(), tat.as_u64());
        Ok(result)
    }
}

/// The prefix lengths a source address is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePrefixes {
    /// 1..=32; 32 keys each IPv4 address apart.
    pub ipv4: u8,
    /// 1..=128; 64 (the default) keys a subscriber's /64 as one source.
    pub ipv6: u8,
}

impl Default for SourcePrefixes {
    fn default() -> Self {
        SourcePrefixes { ipv4: 32, ipv6: 64 }
    }
}

/// A source as a rate limit sees it: its address cut to the configured prefix. An
/// IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 peer) counts as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(Prefix);

impl SourceKey {
    pub fn new(source: IpAddr, prefixes: SourcePrefixes) -> SourceKey {
        let source = source.to_canonical();
        let len = if source.is_ipv4() { prefixes.ipv4.min(32) } else { prefixes.ipv6.min(128) };
        // A length within the family's width always makes a prefix; the host prefix is the
        // (unreachable) fallback.
        SourceKey(Prefix::new_truncating(source, len).unwrap_or_else(|| Prefix::host(source)))
    }

    pub fn prefix(&self) -> Prefix {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u32, burst: u32) -> Rate {
        Rate { per_second: NonZeroU32::new(per_second).unwrap(), burst: NonZeroU32::new(burst).unwrap() }
    }

    fn limiter(per_second: u32, burst: u32, max_keys: usize, t0: Instant) -> KeyedLimiter<u32> {
        KeyedLimiter::new(LimiterConfig { rate: rate(per_second, burst), max_keys }, t0).unwrap()
    }

    #[test]
    fn a_burst_is_allowed_then_the_key_is_limited_until_it_refills() {
        let t0 = Instant::now();
        let mut l = limiter(10, 5, 100, t0);
        for i in 0..5 {
            assert_eq!(l.check(&1, t0), Verdict::Allow, "event {i} of the burst");
        }
        let Verdict::Limited { retry_at } = l.check(&1, t0) else { panic!("6th event allowed") };
        assert_eq!(retry_at, t0 + Duration::from_millis(100));
        // Another key is not affected.
        assert_eq!(l.check(&2, t0), Verdict::Allow);
        // 100 ms later one more event fits (10 per second), then limited again.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.check(&1, t1), Verdict::Allow);
        assert!(matches!(l.check(&1, t1), Verdict::Limited { .. }));
        // After a whole burst's worth of time, the whole burst again.
        let t2 = t1 + Duration::from_millis(500);
        for _ in 0..5 {
            assert_eq!(l.check(&1, t2), Verdict::Allow);
        }
        assert!(matches!(l.check(&1, t2), Verdict::Limited { .. }));
    }

    #[test]
    fn a_steady_rate_under_the_limit_is_never_limited() {
        let t0 = Instant::now();
        let mut l = limiter(100, 1, 100, t0);
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(10 * i);
            assert_eq!(l.check(&7, now), Verdict::Allow, "event {i}");
        }
    }

    #[test]
    fn a_flood_of_new_keys_never_grows_the_table_past_its_bound() {
        let t0 = Instant::now();
        let mut l = limiter(1, 2, 64, t0);
        // 10 000 spoofed sources, one event each, all within one millisecond: none is fresh
        // again, so room is made by eviction.
        for k in 0..10_000u32 {
            assert_eq!(l.check(&k, t0 + Duration::from_nanos(u64::from(k) * 100)), Verdict::Allow);
            assert!(l.len() <= 64, "{} keys after {k}", l.len());
        }
        assert!(l.evicted() > 0);
        // A key already held and over its rate stays limited: it is not evicted for a newcomer
        // while it is the most recent.
        let now = t0 + Duration::from_millis(1);
        assert_eq!(l.check(&99_999, now), Verdict::Allow);
        assert_eq!(l.check(&99_999, now), Verdict::Allow);
        assert!(matches!(l.check(&99_999, now), Verdict::Limited { .. }));
    }

    #[test]
    fn keys_back_to_fresh_are_dropped_before_any_is_evicted() {
        let t0 = Instant::now();
        let mut l = limiter(10, 1, 8, t0);
        for k in 0..8 {
            l.check(&k, t0);
        }
        assert_eq!(l.len(), 8);
        // 1 s later every key is fresh again: a newcomer drops them, evicting none.
        l.check(&100, t0 + Duration::from_secs(1));
        assert_eq!(l.len(), 1);
        assert_eq!(l.evicted(), 0);
        // Housekeeping does the same without a newcomer.
        l.forget_fresh(t0 + Duration::from_secs(2));
        assert!(l.is_empty());
    }

    #[test]
    fn a_dropped_fresh_key_gets_what_a_new_key_gets() {
        let t0 = Instant::now();
        let mut kept = limiter(10, 3, 8, t0);
        let mut fresh = limiter(10, 3, 8, t0);
        kept.check(&1, t0);
        let later = t0 + Duration::from_secs(1);
        kept.forget_fresh(later);
        for _ in 0..4 {
            assert_eq!(kept.check(&1, later), fresh.check(&1, later));
        }
    }

    #[test]
    fn too_small_a_table_is_refused() {
        let cfg = LimiterConfig { rate: rate(1, 1), max_keys: 7 };
        assert_eq!(KeyedLimiter::<u32>::new(cfg, Instant::now()).unwrap_err(), LimiterError::TooFewKeys(7));
    }

    #[test]
    fn ipv6_sources_are_keyed_by_their_prefix_and_ipv4_by_address() {
        let p = SourcePrefixes::default();
        let k = |s: &str| SourceKey::new(s.parse().unwrap(), p);
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_ne!(k("203.0.113.1"), k("203.0.113.2"));
        assert_eq!(k("::ffff:203.0.113.1"), k("203.0.113.1"));
        assert_eq!(k("2001:db8:1:2::1").prefix().to_string(), "2001:db8:1:2::/64");
        let wide = SourcePrefixes { ipv4: 24, ipv6: 48 };
        assert_eq!(
            SourceKey::new("203.0.113.1".parse().unwrap(), wide),
            SourceKey::new("203.0.113.200".parse().unwrap(), wide)
        );
    }
}
