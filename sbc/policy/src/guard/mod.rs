//! The guard: rate limits and fail2ban-style bans, decided in process (sans-IO) so that a ban
//! can reach the XDP blocklist within milliseconds of the failure that crossed `maxretry`,
//! instead of seconds later from a log tail. The daemon wires it in `sbc/sbc/src/guard.rs`.
//!
//! ```text
//!  Event ──► Guard::handle_event(now, &event, &exempt) ──► Decision (Admit / Reject 503 / Drop)
//!                │  banned? ─ signature ─ behaviour ─ rate limits ─ jails
//!                ▼
//!  poll_action() → BanAction::Ban { prefix, until, jail, reason, evidence } / Unban
//!  poll_timeout() / handle_timeout(now): ban expiries and the sweep of idle state
//! ```
//!
//! It owns:
//! - [`limits`]: [`crate::ratelimit::KeyedLimiter`]s (governor's GCRA) per (source prefix, method class) for access traffic, and per
//!   trunk (requests/s, calls/s, concurrent calls) for providers; over a limit, 503 with
//!   Retry-After or a silent drop, per class; each hit is a `rate-limited` event for the jails.
//! - [`scanner`]: signatures (User-Agent, From) and behaviour (many distinct target users, or
//!   many out-of-dialog requests, from one source in a window without any success).
//! - [`jail`]: fail2ban's jails (findtime, maxretry, bantime, recidive growth to a maximum),
//!   keyed by source prefix or by target user.
//! - [`bans`]: the ban table (list/show/add/delete with jail, reason, evidence, hits, remaining
//!   time), the recidive memory and the [`BanAction`]s the daemon applies.
//! - [`persist`]: the state file of the ban table (its atomic write is the daemon's, described
//!   there); [`config`]: `[guard]`, raw → validated with every error's path.
//!
//! Keys: an IPv4 source is limited and banned per address, an IPv6 source per configured
//! prefix (/64 by default), so that rotating through one's own /64 does not help.
//!
//! Never banned, only rate limited (a UDP source address can be spoofed to get a victim
//! banned): requests of a trunk (the allowlist named their provider), the configured `ignore`
//! prefixes, and any address the [`Exempt`] the caller passes says is exempt (the allowlist:
//! it changes on reload, the guard's state does not, so it is passed in, not owned).
//!
//! Every kind of state an outsider can create is bounded and expires: limiter keys
//! (`max_sources` per class, the quietest eighth evicted when full, swept when their bucket is full again), jail and
//! behaviour tracks (`max_tracked` each, at most `maxretry` hits per key, swept after
//! findtime/window), bans (`max_bans`, the soonest to expire evicted), the recidive memory
//! (`max_tracked`, forgotten `recidive_memory` after the ban), queued actions.
//!
//! # Wiring it (the daemon's part: `sbc/sbc/src/guard.rs`)
//!
//! - An `engine::Guard` adapter: `admit` → [`Event::Request`] (method class, the Request-URI
//!   user, From name/user/host, User-Agent, Authorization present, `in_dialog` = matched a
//!   dialog, the trunk from the allowlist lookup) and [`Decision`] → `Admit` (a `Reject` of an
//!   ACK is a drop: nothing answers an ACK); `on_final` → [`Event::Final`] (the engine's
//!   `Final` needs the credentials flag and the target user); sanity failures →
//!   [`Event::Malformed`]; [`Event::CallEnded`] once per admitted trunk call (failed INVITE or
//!   dialog end).
//! - [`BanAction`]s → the XDP blocklist (the expiry converted from `Instant` to the kernel's
//!   monotonic clock), the log (jail, reason, evidence), the shared store; [`Guard::restore`]
//!   at start, [`Guard::render_bans`] written atomically when [`Guard::take_dirty`] says so.
//! - One guard for the daemon's life (not rebuilt on allowlist reload: call
//!   [`Guard::lift_exempt`] then), its timeout in the event loop, [`Guard::stats_text`] in
//!   `sbc stats`, `sbc bans list|show|add|del` on [`Guard::bans`], [`Guard::show`],
//!   [`Guard::add`], [`Guard::delete`].

pub mod bans;
mod bounded;
pub mod config;
pub mod event;
pub mod jail;
pub mod key;
pub mod limits;
pub mod persist;
pub mod scanner;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

pub use bans::{Ban, BanAction, UnbanReason};
pub use config::Config;
pub use event::{Decision, Event, EventKind, FinalResponse, MethodClass, Request, Why};
pub use persist::{PersistError, PersistErrorKind};

use bans::{BanTable, NewBan};
use config::Over;
use jail::{Jails, Verdict};
use key::{clean, source_key};
use limits::Limits;
use scanner::Behaviour;

use crate::Prefix;
use crate::allowlist::Allowlist;

/// How often idle state is swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// The jail name of an operator's ban.
pub const MANUAL_JAIL: &str = "manual";

/// Addresses that are never banned (only rate limited): the trunk allowlist, or any predicate.
pub trait Exempt {
    fn is_exempt(&self, ip: IpAddr) -> bool;

    /// Whether `prefix` holds an exempt address (a ban of it must not be made). By default,
    /// whether its first address is exempt.
    fn overlaps(&self, prefix: Prefix) -> bool {
        self.is_exempt(prefix.addr())
    }
}

impl Exempt for Allowlist {
    fn is_exempt(&self, ip: IpAddr) -> bool {
        self.contains(ip.to_canonical())
    }

    fn overlaps(&self, prefix: Prefix) -> bool {
        self.entries().iter().any(|e| e.prefix.contains(prefix.addr()) || prefix.contains(e.prefix.addr()))
    }
}

impl<F: Fn(IpAddr) -> bool> Exempt for F {
    fn is_exempt(&self, ip: IpAddr) -> bool {
        self(ip)
    }
}

/// No address is exempt beyond the configured `ignore` prefixes.
pub struct NoExempt;

impl Exempt for NoExempt {
    fn is_exempt(&self, _: IpAddr) -> bool {
        false
    }
}

/// What the guard counted since it started (for `sbc stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub admitted: u64,
    pub rejected: u64,
    pub dropped_banned: u64,
    pub dropped_rate: u64,
    /// Rate-limit hits per method class (per-source limits).
    pub rate_hits: [u64; 4],
    pub trunk_rate_hits: u64,
    pub trunk_concurrent_hits: u64,
    /// Events counted per [`EventKind`].
    pub events: [u64; 7],
    /// Events from exempt sources (allowlisted, ignored), which no jail counts.
    pub exempt_events: u64,
    pub bans: u64,
    pub bans_manual: u64,
    pub unbans: u64,
    /// Limiter keys, jail/behaviour tracks and bans evicted to make room.
    pub limiter_evicted: u64,
    pub tracks_evicted: u64,
    pub bans_evicted: u64,
    pub actions_dropped: u64,
}

/// The sizes of the guard's state now (gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    pub bans: usize,
    pub limiter_keys: usize,
    pub tracks: usize,
    pub recidive_memory: usize,
}

/// A ban as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanView {
    pub prefix: Prefix,
    pub jail: String,
    pub reason: String,
    pub evidence: String,
    pub hits: u32,
    pub offence: u32,
    pub remaining: Duration,
    pub dropped: u64,
}

/// One line for `sbc bans list|show`: the prefix, then `key=value` fields, the texts quoted
/// and escaped as Rust strings.
impl fmt::Display for BanView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} jail={} remaining={}s hits={} offence={} dropped={} reason={:?} evidence={:?}",
            self.prefix,
            self.jail,
            self.remaining.as_secs(),
            self.hits,
            self.offence,
            self.dropped,
            self.reason,
            self.evidence
        )
    }
}

impl BanView {
    fn of(b: &Ban, now: Instant) -> BanView {
        BanView {
            prefix: b.prefix,
            jail: b.jail.clone(),
            reason: b.reason.clone(),
            evidence: b.evidence.clone(),
            hits: b.hits,
            offence: b.offence,
            remaining: b.remaining(now),
            dropped: b.dropped,
        }
    }
}

/// Why an operator's ban was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    #[error("{prefix} is exempt (allowlisted or in guard.ignore): it is only rate limited")]
    Exempt { prefix: Prefix },
    #[error("a ban of {secs}s is out of range 1..={max}")]
    Duration { secs: u64, max: u64 },
}

/// How much later than the ban held a shared copy of it must end to extend it.
pub const SHARED_SLACK: Duration = Duration::from_secs(3);

/// Longest operator ban.
pub const MAX_MANUAL_BAN: Duration = Duration::from_secs(365 * 86_400);

pub struct Guard {
    config: Config,
    limits: Limits,
    jails: Jails,
    behaviour: Behaviour,
    bans: BanTable,
    counters: Counters,
    next_sweep: Instant,
    dirty: bool,
    verdicts: Vec<Verdict>,
}

impl Guard {
    pub fn new(config: Config, now: Instant) -> Guard {
        Guard {
            limits: Limits::new(&config, now),
            jails: Jails::new(&config.jails, config.max_tracked, now),
            behaviour: Behaviour::new(&config.scanner, config.max_tracked),
            bans: BanTable::new(config.max_bans, config.max_tracked, config.recidive_memory),
            counters: Counters::default(),
            next_sweep: now + SWEEP_INTERVAL,
            dirty: false,
            verdicts: Vec::new(),
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The prefix `ip` is limited and banned as.
    pub fn key(&self, ip: IpAddr) -> Prefix {
        source_key(ip, self.config.ipv6_prefix_len)
    }

    fn is_exempt(&self, ip: IpAddr, exempt: &dyn Exempt) -> bool {
        let ip = ip.to_canonical();
        self.config.ignore.iter().any(|p| p.contains(ip)) || exempt.is_exempt(ip)
    }

    /// Whether a ban of `prefix` would touch an exempt address: it overlaps an `ignore` prefix
    /// or an exempt one ([`Exempt::overlaps`]).
    fn covers_exempt(&self, prefix: &Prefix, exempt: &dyn Exempt) -> bool {
        self.config.ignore.iter().any(|i| i.contains(prefix.addr()) || prefix.contains(i.addr()))
            || exempt.overlaps(*prefix)
    }

    /// Lifts the bans of prefixes that became exempt (call after an allowlist reload).
    /// Returns how many.
    pub fn lift_exempt(&mut self, exempt: &dyn Exempt) -> usize {
        let lifted: Vec<Prefix> =
            self.bans.list().iter().map(|b| b.prefix).filter(|p| self.covers_exempt(p, exempt)).collect();
        for p in &lifted {
            self.bans.remove(p, UnbanReason::Exempt);
        }
        if !lifted.is_empty() {
            self.dirty = true;
        }
        lifted.len()
    }

    /// Takes one event; for a request, decides its admission (see [`Decision`]).
    pub fn handle_event(&mut self, now: Instant, event: &Event<'_>, exempt: &dyn Exempt) -> Decision {
        match event {
            Event::Request(req) => self.on_request(now, req, exempt),
            Event::Final(f) => {
                self.on_final(now, f, exempt);
                self.banned_verdict(f.source)
            }
            Event::Malformed { source, what } => {
                let evidence = format!("malformed: {}", clean(what));
                self.record(now, EventKind::Malformed, *source, None, &evidence, exempt);
                self.banned_verdict(*source)
            }
            Event::UnknownDomain { source, domain } => {
                let evidence = format!("request for unknown domain \"{}\"", clean(domain));
                self.record(now, EventKind::UnknownDomain, *source, None, &evidence, exempt);
                self.banned_verdict(*source)
            }
            Event::RateLimited { source, what } => {
                let evidence = format!("over a rate limit: {}", clean(what));
                self.record(now, EventKind::RateLimited, *source, None, &evidence, exempt);
                self.banned_verdict(*source)
            }
            Event::CallEnded { trunk } => {
                self.limits.call_ended(trunk);
                Decision::Admit
            }
        }
    }

    fn banned_verdict(&self, ip: IpAddr) -> Decision {
        if self.bans.find(ip).is_some() { Decision::Drop { why: Why::Banned } } else { Decision::Admit }
    }

    fn on_request(&mut self, now: Instant, req: &Request<'_>, exempt: &dyn Exempt) -> Decision {
        self.counters.requests += 1;
        if let Some(ban) = self.bans.find_mut(req.source) {
            ban.dropped += 1;
            self.counters.dropped_banned += 1;
            return Decision::Drop { why: Why::Banned };
        }
        let key = self.key(req.source);
        let exempt = req.trunk.is_some() || self.is_exempt(req.source, exempt);
        if !exempt {
            if let Some(evidence) = scanner::signature(&self.config.scanner, req) {
                self.record_key(now, EventKind::ScannerSignature, key, req.target_user, &evidence);
            }
            if let Some(evidence) = self.behaviour.on_request(now, key, req) {
                self.record_key(now, EventKind::ScannerBehaviour, key, req.target_user, &evidence);
            }
            if self.bans.get(&key).is_some() {
                self.counters.dropped_banned += 1;
                return Decision::Drop { why: Why::Banned };
            }
        }
        let hit = match req.trunk {
            Some(trunk) => {
                let new_call = req.class == MethodClass::Invite && !req.in_dialog;
                self.limits.check_trunk(now, trunk, new_call)
            }
            None => self.limits.check_source(now, key, req.class),
        };
        let Err(hit) = hit else {
            self.counters.admitted += 1;
            return Decision::Admit;
        };
        match hit.why {
            Why::SourceRate(c) => {
                if let Some(n) = self.counters.rate_hits.get_mut(c.index()) {
                    *n += 1;
                }
            }
            Why::TrunkConcurrent => self.counters.trunk_concurrent_hits += 1,
            _ => self.counters.trunk_rate_hits += 1,
        }
        if exempt {
            self.counters.exempt_events += 1;
        } else {
            let evidence = match self.config.rate(req.class) {
                Some(r) => format!("over the {} rate ({}/s, burst {})", req.class.as_str(), r.per_second, r.burst),
                None => format!("over the {} rate", req.class.as_str()),
            };
            self.record_key(now, EventKind::RateLimited, key, req.target_user, &evidence);
            if self.bans.get(&key).is_some() {
                self.counters.dropped_banned += 1;
                return Decision::Drop { why: Why::Banned };
            }
        }
        match hit.over {
            Over::Reject => {
                self.counters.rejected += 1;
                Decision::Reject { code: 503, retry_after: hit.retry_after, why: hit.why }
            }
            Over::Drop => {
                self.counters.dropped_rate += 1;
                Decision::Drop { why: hit.why }
            }
        }
    }

    fn on_final(&mut self, now: Instant, f: &FinalResponse<'_>, exempt: &dyn Exempt) {
        let auth = matches!(f.class, MethodClass::Register | MethodClass::Invite);
        if auth && (200..300).contains(&f.code) && !f.in_dialog {
            self.behaviour.on_success(self.key(f.source));
            return;
        }
        let Some(kind) = f.auth_failure() else { return };
        let method = if f.class == MethodClass::Register { "REGISTER" } else { "INVITE" };
        let evidence = match f.target_user {
            Some(u) => format!("{} to {method} for user \"{}\"", f.code, clean(u)),
            None => format!("{} to {method}", f.code),
        };
        self.record(now, kind, f.source, f.target_user, &evidence, exempt);
    }

    /// Counts an event of a (possibly exempt) source.
    fn record(
        &mut self,
        now: Instant,
        kind: EventKind,
        ip: IpAddr,
        user: Option<&str>,
        evidence: &str,
        exempt: &dyn Exempt,
    ) {
        if self.is_exempt(ip, exempt) {
            self.counters.exempt_events += 1;
            return;
        }
        self.record_key(now, kind, self.key(ip), user, evidence);
    }

    /// Counts an event of a source known not to be exempt, and applies the bans it triggers.
    fn record_key(&mut self, now: Instant, kind: EventKind, key: Prefix, user: Option<&str>, evidence: &str) {
        if let Some(n) = self.counters.events.get_mut(kind.index()) {
            *n += 1;
        }
        let mut verdicts = std::mem::take(&mut self.verdicts);
        self.jails.record(now, kind, key, user, evidence, &mut verdicts);
        for v in verdicts.drain(..) {
            let Some(jail) = self.jails.config(v.jail).cloned() else { continue };
            for prefix in &v.sources {
                let ban = NewBan {
                    prefix: *prefix,
                    jail: jail.name.clone(),
                    reason: v.reason.clone(),
                    evidence: v.evidence.clone(),
                    hits: v.hits,
                    bantime: jail.bantime,
                    bantime_factor: jail.bantime_factor,
                    bantime_max: jail.bantime_max,
                };
                if self.bans.ban(now, ban).is_some() {
                    self.counters.bans += 1;
                    self.dirty = true;
                }
            }
        }
        self.verdicts = verdicts;
    }

    /// The next action for the daemon.
    pub fn poll_action(&mut self) -> Option<BanAction> {
        let action = self.bans.poll_action();
        if let Some(BanAction::Unban { .. }) = action {
            self.counters.unbans += 1;
        }
        action
    }

    /// When [`Guard::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.bans.next_expiry().map_or(self.next_sweep, |at| at.min(self.next_sweep)))
    }

    /// Ends due bans; sweeps idle state when its time has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.bans.expire(now) > 0 {
            self.dirty = true;
        }
        if now >= self.next_sweep {
            self.limits.sweep(now);
            self.jails.sweep(now);
            self.behaviour.sweep(now);
            self.bans.sweep(now);
            self.next_sweep = now + SWEEP_INTERVAL;
        }
    }

    /// The packet filter before the SIP engine: whether `ip` is banned; a banned packet is
    /// counted on its ban (`dropped`) and in `dropped_banned`.
    pub fn drop_if_banned(&mut self, ip: IpAddr) -> bool {
        match self.bans.find_mut(ip) {
            Some(ban) => {
                ban.dropped += 1;
                self.counters.dropped_banned += 1;
                true
            }
            None => false,
        }
    }

    /// Every ban, by prefix.
    pub fn bans(&self, now: Instant) -> Vec<BanView> {
        self.bans.list().into_iter().map(|b| BanView::of(b, now)).collect()
    }

    /// The ban covering `ip`, if any.
    pub fn show(&self, now: Instant, ip: IpAddr) -> Option<BanView> {
        self.bans.find(ip).map(|b| BanView::of(b, now))
    }

    /// An operator's ban of `prefix` for `duration` (no recidive growth).
    pub fn add(
        &mut self,
        now: Instant,
        prefix: Prefix,
        duration: Duration,
        reason: &str,
        exempt: &dyn Exempt,
    ) -> Result<BanView, AddError> {
        if duration.is_zero() || duration > MAX_MANUAL_BAN {
            return Err(AddError::Duration { secs: duration.as_secs(), max: MAX_MANUAL_BAN.as_secs() });
        }
        if self.covers_exempt(&prefix, exempt) {
            return Err(AddError::Exempt { prefix });
        }
        let ban = NewBan {
            prefix,
            jail: MANUAL_JAIL.into(),
            reason: format!("operator: {}", clean(reason)),
            evidence: String::new(),
            hits: 0,
            bantime: duration,
            bantime_factor: 1,
            bantime_max: duration,
        };
        self.counters.bans_manual += 1;
        self.dirty = true;
        match self.bans.ban(now, ban) {
            Some(b) => Ok(BanView::of(b, now)),
            None => Err(AddError::Duration { secs: duration.as_secs(), max: MAX_MANUAL_BAN.as_secs() }),
        }
    }

    /// Lifts the ban on `prefix` (or the one covering it, given a host prefix) at once, and
    /// forgets its recidive history and jail hits: the operator forgave it.
    pub fn delete(&mut self, now: Instant, prefix: Prefix) -> Option<BanView> {
        let target = match self.bans.get(&prefix) {
            Some(b) => b.prefix,
            None => self.bans.find(prefix.addr()).filter(|_| prefix.prefix_len() == host_len(&prefix))?.prefix,
        };
        let ban = self.bans.remove(&target, UnbanReason::Deleted)?;
        self.bans.forgive(&target);
        self.jails.forget(target);
        self.behaviour.on_success(target);
        self.dirty = true;
        Some(BanView::of(&ban, now))
    }

    pub fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        c.limiter_evicted = self.limits.evicted();
        c.tracks_evicted = self.jails.evicted() + self.behaviour.evicted();
        c.bans_evicted = self.bans.evicted;
        c.actions_dropped = self.bans.actions_dropped;
        c
    }

    pub fn sizes(&self) -> Sizes {
        Sizes {
            bans: self.bans.len(),
            limiter_keys: self.limits.keys(),
            tracks: self.jails.tracked() + self.behaviour.tracked(),
            recidive_memory: self.bans.remembered(),
        }
    }

    /// Counters and sizes as `sbc stats` lines: `guard.<name> <value>`.
    pub fn stats_text(&self) -> String {
        let c = self.counters();
        let s = self.sizes();
        let mut lines: Vec<(String, u64)> = vec![
            ("requests".into(), c.requests),
            ("admitted".into(), c.admitted),
            ("rejected".into(), c.rejected),
            ("dropped_banned".into(), c.dropped_banned),
            ("dropped_rate".into(), c.dropped_rate),
        ];
        for class in MethodClass::ALL {
            let n = c.rate_hits.get(class.index()).copied().unwrap_or(0);
            lines.push((format!("rate_hits.{}", class.as_str()), n));
        }
        lines.push(("rate_hits.trunk".into(), c.trunk_rate_hits));
        lines.push(("rate_hits.trunk_concurrent".into(), c.trunk_concurrent_hits));
        for kind in EventKind::ALL {
            let n = c.events.get(kind.index()).copied().unwrap_or(0);
            lines.push((format!("events.{}", kind.as_str()), n));
        }
        let usize64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        lines.extend([
            ("events.exempt".into(), c.exempt_events),
            ("bans".into(), c.bans),
            ("bans_manual".into(), c.bans_manual),
            ("unbans".into(), c.unbans),
            ("evicted.limiter_keys".into(), c.limiter_evicted),
            ("evicted.tracks".into(), c.tracks_evicted),
            ("evicted.bans".into(), c.bans_evicted),
            ("actions_dropped".into(), c.actions_dropped),
            ("state.bans".into(), usize64(s.bans)),
            ("state.limiter_keys".into(), usize64(s.limiter_keys)),
            ("state.tracks".into(), usize64(s.tracks)),
            ("state.recidive_memory".into(), usize64(s.recidive_memory)),
        ]);
        lines.iter().map(|(k, v)| format!("guard.{k} {v}\n")).collect()
    }

    /// The trunk's calls in progress.
    pub fn concurrent_calls(&self, trunk: &str) -> u32 {
        self.limits.concurrent(trunk)
    }

    /// Whether the ban table changed since the last call (time to write the state file).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The state file for the ban table (see [`persist`]); `wall` is the wall clock at `now`.
    pub fn render_bans(&self, now: Instant, wall: SystemTime) -> String {
        persist::render(&self.bans.list(), now, wall)
    }

    /// One ban as a one-ban state file ([`persist`]): what the daemon shares with the other
    /// appliances through the store. None when `prefix` is not banned.
    pub fn render_ban(&self, prefix: &Prefix, now: Instant, wall: SystemTime) -> Option<String> {
        self.bans.get(prefix).map(|b| persist::render(&[b], now, wall))
    }

    /// A ban another appliance shared (a one-ban state file, [`Guard::render_ban`]): applied
    /// as a restored ban (queued as a [`BanAction::Ban`] for XDP), unless it is over, the
    /// prefix is exempt here (the exemption check stays local), or the table already holds it
    /// as long. Returns the prefix when the table changed.
    pub fn insert_shared(
        &mut self,
        now: Instant,
        wall: SystemTime,
        record: &[u8],
        exempt: &dyn Exempt,
    ) -> Result<Option<Prefix>, PersistError> {
        let [r] = persist::parse(record)?.try_into().map_err(|v: Vec<persist::Restored>| PersistError {
            line: 0,
            kind: PersistErrorKind::Syntax(format!("{} bans in a shared record, 1 expected", v.len())),
        })?;
        // The record's times are whole seconds, and each conversion floors one: a ban already
        // held until within SHARED_SLACK of it is the same ban (announced twice, e.g. queued and
        // republished after an outage).
        let before = self.bans.get(&r.prefix).map(|b| b.until);
        let until = persist::from_unix(r.until, now, wall);
        if let (Some(held), Some(until)) = (before, until)
            && held + SHARED_SLACK >= until
        {
            return Ok(None);
        }
        if self.restore(now, wall, record, exempt)? == 0 || self.bans.get(&r.prefix).map(|b| b.until) == before {
            return Ok(None);
        }
        self.dirty = true;
        Ok(Some(r.prefix))
    }

    /// Another appliance's operator lifted the ban on `prefix` at Unix time `deleted_at` (a
    /// tombstone found on resynchronisation, missed while away): lifted here too when this
    /// table's ban of it began before (a ban made since is a new one and stays).
    pub fn lift_deleted(&mut self, now: Instant, wall: SystemTime, prefix: Prefix, deleted_at: u64) -> Option<BanView> {
        let since = self.bans.get(&prefix).map(|b| persist::to_unix(b.since, now, wall))?;
        if since > deleted_at {
            return None;
        }
        self.delete(now, prefix)
    }

    /// Restores the bans of a state file (each queued as a [`BanAction::Ban`] again, for XDP);
    /// bans already over, and of prefixes exempt now, are skipped. Returns how many were
    /// restored.
    pub fn restore(
        &mut self,
        now: Instant,
        wall: SystemTime,
        file: &[u8],
        exempt: &dyn Exempt,
    ) -> Result<usize, PersistError> {
        let restored = persist::parse(file)?;
        let mut n = 0;
        for r in restored {
            let Some(until) = persist::from_unix(r.until, now, wall) else { continue };
            if until <= now || self.covers_exempt(&r.prefix, exempt) {
                continue;
            }
            let until = until.min(now + MAX_MANUAL_BAN);
            let since = persist::from_unix(r.since, now, wall).unwrap_or(now).min(now);
            let ban = Ban {
                prefix: r.prefix,
                jail: r.jail,
                reason: r.reason,
                evidence: r.evidence,
                hits: r.hits,
                offence: r.offence,
                since,
                until,
                dropped: 0,
            };
            if self.bans.insert(ban).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }
}

fn host_len(p: &Prefix) -> u8 {
    if p.is_ipv4() { 32 } else { 128 }
}
