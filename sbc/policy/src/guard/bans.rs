//! The ban table: who is banned, by which jail, why, on what evidence, until when; the
//! recidive memory (how many times a prefix was banned recently, which multiplies its next
//! bantime); and the [`BanAction`]s the daemon applies (XDP blocklist, log, store).
//!
//! Bounded: at most `max_bans` bans (the XDP blocklist's capacity; full, the ban expiring first
//! makes room and is reported as [`UnbanReason::Evicted`]), a recidive memory of at most
//! `max_tracked` prefixes, each forgotten `recidive_memory` after its ban ended.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::bounded::BoundedMap;
use crate::Prefix;

/// A ban's origin and evidence, as kept in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub prefix: Prefix,
    /// The jail's name, or "manual" for an operator's.
    pub jail: String,
    pub reason: String,
    pub evidence: String,
    /// The events that led to it.
    pub hits: u32,
    /// 1 for a first ban, 2 for the next one within the recidive memory, ...
    pub offence: u32,
    pub since: Instant,
    pub until: Instant,
    /// Requests dropped in userspace since (XDP drops are counted by XDP).
    pub dropped: u64,
}

impl Ban {
    pub fn remaining(&self, now: Instant) -> Duration {
        self.until.saturating_duration_since(now)
    }
}

/// Why a ban ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UnbanReason {
    Expired,
    /// `sbc bans del`.
    Deleted,
    /// The table was full and a newer ban needed its slot.
    Evicted,
    /// The prefix became exempt (an allowlist reload listed it, or `guard.ignore` covers it).
    Exempt,
}

impl UnbanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UnbanReason::Expired => "expired",
            UnbanReason::Deleted => "deleted",
            UnbanReason::Evicted => "evicted",
            UnbanReason::Exempt => "exempt",
        }
    }
}

/// What the guard asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BanAction {
    /// Drop everything from `prefix` until `until` (XDP blocklist with the expiry, userspace,
    /// the shared store), and log it. Sent again with a later `until` when a ban is extended.
    Ban { prefix: Prefix, until: Instant, jail: String, reason: String, evidence: String },
    /// `prefix` is no longer banned, for `reason`; `jail` and `ban_reason` are the ban's own
    /// (for the log).
    Unban { prefix: Prefix, reason: UnbanReason, jail: String, ban_reason: String },
}

/// A ban request, before the table applies recidive and capacity.
#[derive(Debug, Clone)]
pub struct NewBan {
    pub prefix: Prefix,
    pub jail: String,
    pub reason: String,
    pub evidence: String,
    pub hits: u32,
    pub bantime: Duration,
    pub bantime_factor: u32,
    pub bantime_max: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Offences {
    count: u32,
    /// Forgotten after this.
    until: Instant,
}

pub struct BanTable {
    bans: HashMap<Prefix, Ban>,
    expiry: BTreeSet<(Instant, Prefix)>,
    /// Prefix lengths in use per family (IPv4, IPv6) and how many bans have each: a lookup
    /// tries each length present, longest first.
    lengths: [BTreeMap<u8, usize>; 2],
    history: BoundedMap<Prefix, Offences>,
    recidive_memory: Duration,
    max: usize,
    actions: VecDeque<BanAction>,
    max_actions: usize,
    pub(super) actions_dropped: u64,
    pub(super) evicted: u64,
}

fn family(p: &Prefix) -> usize {
    usize::from(!p.is_ipv4())
}

impl BanTable {
    pub fn new(max: usize, max_tracked: usize, recidive_memory: Duration) -> BanTable {
        BanTable {
            bans: HashMap::new(),
            expiry: BTreeSet::new(),
            lengths: [BTreeMap::new(), BTreeMap::new()],
            history: BoundedMap::new(max_tracked),
            recidive_memory,
            max: max.max(1),
            actions: VecDeque::new(),
            max_actions: max.saturating_mul(2).saturating_add(1024),
            actions_dropped: 0,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.bans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    /// The ban covering `ip` (the longest banned prefix containing it).
    pub fn find(&self, ip: IpAddr) -> Option<&Ban> {
        let ip = ip.to_canonical();
        let lengths = self.lengths.get(usize::from(ip.is_ipv6()))?;
        lengths.keys().rev().find_map(|&len| self.bans.get(&Prefix::new_truncating(ip, len)?))
    }

    pub fn find_mut(&mut self, ip: IpAddr) -> Option<&mut Ban> {
        let prefix = self.find(ip)?.prefix;
        self.bans.get_mut(&prefix)
    }

    pub fn get(&self, prefix: &Prefix) -> Option<&Ban> {
        self.bans.get(prefix)
    }

    /// Every ban, by prefix.
    pub fn list(&self) -> Vec<&Ban> {
        let mut v: Vec<&Ban> = self.bans.values().collect();
        v.sort_by_key(|b| b.prefix);
        v
    }

    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiry.first().map(|&(at, _)| at)
    }

    /// Earlier bans of `prefix` still remembered.
    pub fn offences(&self, now: Instant, prefix: &Prefix) -> u32 {
        self.history.get(prefix).filter(|o| o.until > now).map_or(0, |o| o.count)
    }

    /// Bans `req.prefix`: bantime × factor^(earlier offences), at most bantime_max. An existing
    /// ban is extended (never shortened). Returns the ban as it stands.
    pub fn ban(&mut self, now: Instant, req: NewBan) -> Option<&Ban> {
        let offence = self.offences(now, &req.prefix).saturating_add(1);
        let factor = u64::from(req.bantime_factor).saturating_pow(offence - 1);
        let secs =
            req.bantime.as_secs().saturating_mul(factor).min(req.bantime_max.as_secs().max(req.bantime.as_secs()));
        let until = now.checked_add(Duration::from_secs(secs)).unwrap_or(now + req.bantime);
        self.insert(Ban {
            prefix: req.prefix,
            jail: req.jail,
            reason: req.reason,
            evidence: req.evidence,
            hits: req.hits,
            offence,
            since: now,
            until,
            dropped: 0,
        })
    }

    /// Puts `ban` in the table (restored from the state file, or made by [`BanTable::ban`]),
    /// records the offence, and queues its action.
    pub fn insert(&mut self, ban: Ban) -> Option<&Ban> {
        let prefix = ban.prefix;
        if let Some(old) = self.bans.get(&prefix) {
            if old.until >= ban.until {
                return self.bans.get(&prefix);
            }
            self.expiry.remove(&(old.until, prefix));
        } else {
            while self.bans.len() >= self.max {
                let Some((_, victim)) = self.expiry.first().copied() else { break };
                self.remove(&victim, UnbanReason::Evicted);
                self.evicted += 1;
            }
            *self.lengths.get_mut(family(&prefix))?.entry(prefix.prefix_len()).or_insert(0) += 1;
        }
        let memory = ban.until.checked_add(self.recidive_memory).unwrap_or(ban.until);
        let count = ban.offence;
        if let Some(o) =
            self.history.get_or_insert_with(prefix, || Offences { count, until: memory }, |o| u64::from(o.count))
        {
            *o = Offences { count, until: memory };
        }
        self.expiry.insert((ban.until, prefix));
        self.push(BanAction::Ban {
            prefix,
            until: ban.until,
            jail: ban.jail.clone(),
            reason: ban.reason.clone(),
            evidence: ban.evidence.clone(),
        });
        self.bans.insert(prefix, ban);
        self.bans.get(&prefix)
    }

    /// Lifts the ban on exactly `prefix`.
    pub fn remove(&mut self, prefix: &Prefix, reason: UnbanReason) -> Option<Ban> {
        let ban = self.bans.remove(prefix)?;
        self.expiry.remove(&(ban.until, *prefix));
        if let Some(lengths) = self.lengths.get_mut(family(prefix))
            && let Some(n) = lengths.get_mut(&prefix.prefix_len())
        {
            *n -= 1;
            if *n == 0 {
                lengths.remove(&prefix.prefix_len());
            }
        }
        self.push(BanAction::Unban { prefix: *prefix, reason, jail: ban.jail.clone(), ban_reason: ban.reason.clone() });
        Some(ban)
    }

    /// Forgets the recidive history of `prefix` (an operator forgave it).
    pub fn forgive(&mut self, prefix: &Prefix) {
        self.history.remove(prefix);
    }

    /// Ends the bans due by `now`; forgets offences past their memory.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(&(at, prefix)) = self.expiry.first() {
            if at > now {
                break;
            }
            self.remove(&prefix, UnbanReason::Expired);
            n += 1;
        }
        n
    }

    pub fn sweep(&mut self, now: Instant) {
        self.history.retain(|_, o| o.until > now);
    }

    pub fn remembered(&self) -> usize {
        self.history.len()
    }

    fn push(&mut self, action: BanAction) {
        if self.actions.len() >= self.max_actions {
            self.actions.pop_front();
            self.actions_dropped += 1;
        }
        self.actions.push_back(action);
    }

    pub fn poll_action(&mut self) -> Option<BanAction> {
        self.actions.pop_front()
    }
}
