//! The jails: fail2ban's counting, in process. Each jail counts the event kinds it is
//! configured for, per key (the source's prefix, or the target user), keeps the last `maxretry`
//! hits, and asks for a ban when `maxretry` of them fall within `findtime`; the key's hits are
//! then cleared (as fail2ban does). A user-keyed jail bans every source that contributed.
//!
//! Bounded: at most `max_tracked` keys per jail (sampled eviction of the key with the fewest
//! hits), at most `maxretry` hits per key; the sweep drops keys whose newest hit is older than
//! `findtime`.

use std::collections::VecDeque;
use std::fmt::Write;
use std::time::Instant;

use super::bounded::BoundedMap;
use super::config::{Jail, JailKey};
use super::event::EventKind;
use super::key::clean;
use crate::Prefix;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Source(Prefix),
    User(Box<str>),
}

#[derive(Debug)]
struct Track {
    /// When (milliseconds since the jails' epoch) and what: the last `maxretry` hits, oldest
    /// first. 16 bytes a hit.
    hits: VecDeque<(u64, EventKind)>,
    /// Each hit's source, for a user-keyed jail only (a source-keyed jail knows it: the key).
    sources: VecDeque<Prefix>,
    /// The newest hit's evidence.
    evidence: Box<str>,
}

/// A jail's request for bans: every source in `sources`, for `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The jail's index in the configuration.
    pub jail: usize,
    pub sources: Vec<Prefix>,
    pub hits: u32,
    pub reason: String,
    pub evidence: String,
}

pub struct Jails {
    jails: Vec<(Jail, BoundedMap<Key, Track>)>,
    epoch: Instant,
}

impl Jails {
    pub fn new(jails: &[Jail], max_tracked: usize, now: Instant) -> Jails {
        Jails { jails: jails.iter().map(|j| (j.clone(), BoundedMap::new(max_tracked))).collect(), epoch: now }
    }

    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    pub fn config(&self, jail: usize) -> Option<&Jail> {
        self.jails.get(jail).map(|(j, _)| j)
    }

    /// Counts one event of `kind` from `source` (aimed at `user`, when known) in every jail
    /// that counts it; the bans that it triggers go to `out`.
    pub fn record(
        &mut self,
        now: Instant,
        kind: EventKind,
        source: Prefix,
        user: Option<&str>,
        evidence: &str,
        out: &mut Vec<Verdict>,
    ) {
        let at = self.ms(now);
        for (index, (jail, tracks)) in self.jails.iter_mut().enumerate() {
            if !jail.events.contains(&kind) {
                continue;
            }
            let key = match jail.key {
                JailKey::Source => Key::Source(source),
                JailKey::User => match user {
                    Some(u) if !u.is_empty() => Key::User(clean(u).into()),
                    _ => continue,
                },
            };
            let by_user = jail.key == JailKey::User;
            let max = usize::try_from(jail.maxretry).unwrap_or(usize::MAX);
            let findtime = u64::try_from(jail.findtime.as_millis()).unwrap_or(u64::MAX);
            let Some(track) = tracks.get_or_insert_with(
                key.clone(),
                || Track { hits: VecDeque::new(), sources: VecDeque::new(), evidence: Box::default() },
                |t| t.hits.len() as u64,
            ) else {
                continue;
            };
            while track.hits.front().is_some_and(|&(t, _)| at.saturating_sub(t) > findtime) || track.hits.len() >= max {
                track.hits.pop_front();
                track.sources.pop_front();
            }
            track.hits.push_back((at, kind));
            if by_user {
                track.sources.push_back(source);
            }
            track.evidence = evidence.into();
            if track.hits.len() < max {
                continue;
            }
            out.push(verdict(index, jail, &key, track, at));
            tracks.remove(&key);
        }
    }

    /// Forgets keys whose newest hit is older than their jail's findtime.
    pub fn sweep(&mut self, now: Instant) {
        let at = self.ms(now);
        for (jail, tracks) in &mut self.jails {
            let findtime = u64::try_from(jail.findtime.as_millis()).unwrap_or(u64::MAX);
            tracks.retain(|_, t| t.hits.back().is_some_and(|&(t, _)| at.saturating_sub(t) <= findtime));
        }
    }

    /// Forgets the source-keyed hits of `prefix` (its ban was lifted by hand).
    pub fn forget(&mut self, prefix: Prefix) {
        for (_, tracks) in &mut self.jails {
            tracks.remove(&Key::Source(prefix));
        }
    }

    /// Keys followed, over all jails.
    pub fn tracked(&self) -> usize {
        self.jails.iter().map(|(_, t)| t.len()).sum()
    }

    pub fn evicted(&self) -> u64 {
        self.jails.iter().map(|(_, t)| t.evicted()).sum()
    }
}

fn verdict(index: usize, jail: &Jail, key: &Key, track: &Track, at: u64) -> Verdict {
    let sources: Vec<Prefix> = match key {
        Key::Source(p) => vec![*p],
        Key::User(_) => {
            let mut v: Vec<Prefix> = Vec::new();
            for s in &track.sources {
                if !v.contains(s) {
                    v.push(*s);
                }
            }
            v
        }
    };
    let span_secs = track.hits.front().map_or(0, |&(t, _)| at.saturating_sub(t) / 1000);
    let mut kinds: Vec<(EventKind, u32)> = Vec::new();
    for &(_, k) in &track.hits {
        match kinds.iter_mut().find(|(kk, _)| *kk == k) {
            Some((_, n)) => *n += 1,
            None => kinds.push((k, 1)),
        }
    }
    let mut reason = String::new();
    for (i, (k, n)) in kinds.iter().enumerate() {
        let _ = write!(reason, "{}{n} {}", if i > 0 { ", " } else { "" }, k.as_str());
    }
    let _ = write!(reason, " in {span_secs}s (maxretry {}, findtime {}s)", jail.maxretry, jail.findtime.as_secs());
    if let Key::User(u) = key {
        let _ = write!(reason, " against user \"{u}\" from {} source(s)", sources.len());
    }
    Verdict {
        jail: index,
        sources,
        hits: u32::try_from(track.hits.len()).unwrap_or(u32::MAX),
        reason,
        evidence: track.evidence.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::config::Jail;
    use std::time::Duration;

    fn jail(key: JailKey, maxretry: u32, findtime: u64) -> Jail {
        Jail {
            name: "t".into(),
            events: vec![EventKind::AuthFailure],
            key,
            findtime: Duration::from_secs(findtime),
            maxretry,
            bantime: Duration::from_secs(60),
            bantime_factor: 2,
            bantime_max: Duration::from_secs(600),
        }
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn user_keyed_jail_bans_every_contributing_source() {
        let t0 = Instant::now();
        let mut j = Jails::new(&[jail(JailKey::User, 3, 60)], 10, t0);
        let mut out = Vec::new();
        for (i, s) in ["198.51.100.1", "198.51.100.2", "198.51.100.1"].iter().enumerate() {
            j.record(t0 + Duration::from_secs(i as u64), EventKind::AuthFailure, p(s), Some("1001"), "401", &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].sources, [p("198.51.100.1"), p("198.51.100.2")]);
        assert!(out[0].reason.contains("3 auth-failure in 2s"), "{}", out[0].reason);
        assert!(out[0].reason.contains("user \"1001\" from 2 source(s)"), "{}", out[0].reason);
        // Events without a user do not count in a user-keyed jail; other kinds are not counted.
        j.record(t0, EventKind::AuthFailure, p("198.51.100.3"), None, "", &mut out);
        j.record(t0, EventKind::Malformed, p("198.51.100.3"), Some("1001"), "", &mut out);
        assert_eq!(j.tracked(), 0);
    }

    #[test]
    fn sweep_forgets_keys_past_findtime() {
        let t0 = Instant::now();
        let mut j = Jails::new(&[jail(JailKey::Source, 5, 60)], 10, t0);
        let mut out = Vec::new();
        j.record(t0, EventKind::AuthFailure, p("198.51.100.1"), None, "", &mut out);
        j.sweep(t0 + Duration::from_secs(60));
        assert_eq!(j.tracked(), 1);
        j.sweep(t0 + Duration::from_secs(61));
        assert_eq!(j.tracked(), 0);
    }
}
