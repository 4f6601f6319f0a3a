//! The guard's configuration: [`Raw`] (serde, unknown keys refused, every field defaulted) →
//! [`validate`] → [`Config`]. Every problem is reported at once as `(path, message)`, the path
//! under the prefix the caller gives (`guard.jail[2].maxretry`), like the daemon's own config
//! (which will embed [`Raw`] as its `[guard]` table and map the paths to lines).
//!
//! A configured `[[guard.jail]]` list replaces the default jails as a whole.
//!
//! Memory, worst case (every tracked key one hit short of a ban): per jail, `max_tracked` ×
//! `maxretry` × 16 bytes (34 for a user-keyed jail); the behaviour tracker, `max_tracked` ×
//! (`max_targets` + 1) × 8 bytes; each limiter, `max_sources` × about 60 bytes. The defaults
//! (100,000 keys; maxretry 5, 20, 1, 10, 50): 100,000 sources each one event short of a ban in
//! every jail, plus their limiter keys and behaviour tracks, took 250 MB of RSS (measured once,
//! release build); such a state needs 100,000 real sources failing at once.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

use super::event::{EventKind, MethodClass};
use crate::Prefix;

/// The blocklist capacity of the XDP program per family (`sbc_ebpf_common::BLOCK_MAX_ENTRIES`).
pub const MAX_BANS_CEILING: usize = 65_536;
/// Longest pattern, jail name, accepted.
pub const MAX_PATTERN: usize = 128;
pub const MAX_JAIL_NAME: usize = 32;
/// Most hits a jail keeps per key (its `maxretry` ceiling): bounds memory per tracked key.
pub const MAX_RETRY_CEILING: u64 = 100;
/// Most jails.
pub const MAX_JAILS: usize = 16;
/// Most distinct target users the behaviour rule counts (8 bytes each, per tracked source).
pub const MAX_TARGETS_CEILING: u64 = 100;
const DAY: u64 = 86_400;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Raw {
    /// IPv6 sources are limited and banned per prefix of this length (one subscriber's /64).
    pub ipv6_prefix_len: u64,
    /// Prefixes never banned (only rate limited), e.g. the operator's own networks.
    pub ignore: Vec<String>,
    /// Most per-source rate-limiter keys per method class; past it, new sources share one bucket.
    pub max_sources: u64,
    /// Most keys each jail and the scanner-behaviour tracker follow.
    pub max_tracked: u64,
    /// Most bans held (the XDP blocklist's capacity).
    pub max_bans: u64,
    /// How long a ban is remembered for recidive after it ends.
    pub recidive_memory_secs: u64,
    /// The domains the SBC serves: a request whose Request-URI host is none of them (nor an
    /// address of the SBC's, which the daemon adds) is answered 404 and is an `unknown-domain`
    /// event. Empty: any domain.
    pub domains: Vec<String>,
    pub rate: RawRates,
    pub trunk: RawTrunk,
    pub scanner: RawScanner,
    pub jail: Vec<RawJail>,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            ipv6_prefix_len: 64,
            ignore: Vec::new(),
            max_sources: 100_000,
            max_tracked: 100_000,
            max_bans: MAX_BANS_CEILING as u64,
            recidive_memory_secs: 7 * DAY,
            domains: Vec::new(),
            rate: RawRates::default(),
            trunk: RawTrunk::default(),
            scanner: RawScanner::default(),
            jail: default_jails(),
        }
    }
}

/// Per-source limits of each method class (access traffic; trunks have their own).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRates {
    pub register: RawRate,
    pub invite: RawRate,
    pub options: RawRate,
    pub other: RawRate,
}

impl Default for RawRates {
    fn default() -> Self {
        RawRates {
            register: RawRate { per_second: 5, burst: 20, over: "reject".into() },
            invite: RawRate { per_second: 5, burst: 20, over: "reject".into() },
            options: RawRate { per_second: 5, burst: 20, over: "drop".into() },
            other: RawRate { per_second: 50, burst: 100, over: "drop".into() },
        }
    }
}

/// A GCRA limit: `per_second` sustained, `burst` at once; 0 per second: no limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRate {
    pub per_second: u64,
    pub burst: u64,
    /// "reject" (503 with Retry-After) or "drop" (no answer).
    pub over: String,
}

impl Default for RawRate {
    fn default() -> Self {
        RawRate { per_second: 0, burst: 1, over: "reject".into() }
    }
}

/// Per-trunk (provider) limits. A trunk's requests are not limited per source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTrunk {
    /// New calls (out-of-dialog INVITEs) per second.
    pub calls_per_second: u64,
    pub calls_burst: u64,
    /// Concurrent calls; 0: no limit.
    pub max_concurrent: u64,
    /// Every request of the trunk.
    pub requests_per_second: u64,
    pub requests_burst: u64,
    /// "reject" or "drop".
    pub over: String,
}

impl Default for RawTrunk {
    fn default() -> Self {
        RawTrunk {
            calls_per_second: 100,
            calls_burst: 200,
            max_concurrent: 0,
            requests_per_second: 1000,
            requests_burst: 2000,
            over: "reject".into(),
        }
    }
}

/// Scanner signatures (case-insensitive) and behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawScanner {
    /// Substrings of User-Agent.
    pub user_agents: Vec<String>,
    /// Substrings of From's display name.
    pub from_names: Vec<String>,
    /// From users, whole.
    pub from_users: Vec<String>,
    /// From hosts, whole.
    pub from_hosts: Vec<String>,
    /// The behaviour window; counts restart with it and after a 2xx to the source's REGISTER
    /// or INVITE.
    pub window_secs: u64,
    /// Distinct target users in one window without a success; 0: off.
    pub max_targets: u64,
    /// Out-of-dialog requests in one window without a success; 0: off.
    pub max_out_of_dialog: u64,
}

impl Default for RawScanner {
    fn default() -> Self {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        RawScanner {
            user_agents: v(&[
                "friendly-scanner",
                "sipvicious",
                "sipcli",
                "sip-scan",
                "sipscan",
                "iwar",
                "sivus",
                "sundayddr",
                "vaxsipuseragent",
                "pplsip",
                "smap",
            ]),
            // svmap's From: "sipvicious"<sip:100@1.1.1.1> (it sends no User-Agent in compact form).
            from_names: v(&["sipvicious"]),
            from_users: Vec::new(),
            from_hosts: v(&["1.1.1.1"]),
            window_secs: 60,
            max_targets: 10,
            max_out_of_dialog: 60,
        }
    }
}

/// One jail, in fail2ban's words.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJail {
    pub name: String,
    /// Which events it counts (see [`EventKind::as_str`]).
    pub events: Vec<String>,
    /// "source" (the source's prefix) or "user" (the target user: bans every source that
    /// contributed to the failures).
    pub key: String,
    pub findtime_secs: u64,
    pub maxretry: u64,
    pub bantime_secs: u64,
    /// Recidive: each earlier ban of the prefix still remembered multiplies the bantime.
    pub bantime_factor: u64,
    pub bantime_max_secs: u64,
}

impl Default for RawJail {
    fn default() -> Self {
        RawJail {
            name: String::new(),
            events: Vec::new(),
            key: "source".into(),
            findtime_secs: 600,
            maxretry: 5,
            bantime_secs: 600,
            bantime_factor: 2,
            bantime_max_secs: 7 * DAY,
        }
    }
}

fn default_jails() -> Vec<RawJail> {
    let j = |name: &str, events: &[&str], key: &str, findtime: u64, maxretry: u64, bantime: u64| RawJail {
        name: name.into(),
        events: events.iter().map(|s| s.to_string()).collect(),
        key: key.into(),
        findtime_secs: findtime,
        maxretry,
        bantime_secs: bantime,
        ..RawJail::default()
    };
    vec![
        j("sip-auth", &["auth-failure", "forbidden"], "source", 600, 5, 600),
        j("sip-auth-user", &["auth-failure", "forbidden"], "user", 600, 20, 600),
        j("sip-scanner", &["scanner-signature", "scanner-behaviour"], "source", 60, 1, 3600),
        j("sip-garbage", &["malformed", "unknown-domain"], "source", 60, 10, 600),
        j("sip-flood", &["rate-limited"], "source", 10, 50, 300),
    ]
}

/// What happens to a request over a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// 503 with Retry-After.
    Reject,
    /// Nothing is sent.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
    pub over: Over,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkLimits {
    pub calls: Option<Rate>,
    /// None: no limit.
    pub max_concurrent: Option<u32>,
    pub requests: Option<Rate>,
    pub over: Over,
}

/// Lowercased patterns and the behaviour thresholds (None: off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanner {
    pub user_agents: Vec<String>,
    pub from_names: Vec<String>,
    pub from_users: Vec<String>,
    pub from_hosts: Vec<String>,
    pub window: Duration,
    pub max_targets: Option<u32>,
    pub max_out_of_dialog: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JailKey {
    Source,
    User,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    pub name: String,
    pub events: Vec<EventKind>,
    pub key: JailKey,
    pub findtime: Duration,
    pub maxretry: u32,
    pub bantime: Duration,
    pub bantime_factor: u32,
    pub bantime_max: Duration,
}

/// A validated guard configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub ipv6_prefix_len: u8,
    pub ignore: Vec<Prefix>,
    pub max_sources: usize,
    pub max_tracked: usize,
    pub max_bans: usize,
    pub recidive_memory: Duration,
    /// Served domains and addresses, lowercased, IPv6 without brackets; empty: any.
    pub domains: Vec<String>,
    /// Indexed by [`MethodClass`]; None: no limit.
    pub rates: [Option<Rate>; 4],
    pub trunk: TrunkLimits,
    pub scanner: Scanner,
    pub jails: Vec<Jail>,
}

impl Config {
    pub fn rate(&self, class: MethodClass) -> Option<Rate> {
        self.rates.get(class.index()).copied().flatten()
    }

    /// Whether a request whose Request-URI host is `host` (a name, or an IP literal with or
    /// without brackets), received on the SBC's address `local`, is for a domain the SBC
    /// serves: any, when `domains` is empty; else one of them (names case-insensitively, a
    /// trailing dot ignored; addresses compared as addresses), or the address it came in on.
    /// The others are answered 404 (RFC 3261 §21.4.5: "returned if the domain in the
    /// Request-URI does not match any of the domains handled by the recipient").
    pub fn serves(&self, host: &str, local: IpAddr) -> bool {
        if self.domains.is_empty() {
            return true;
        }
        let h = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = h.parse::<IpAddr>() {
            let ip = ip.to_canonical();
            return ip == local.to_canonical()
                || self.domains.iter().any(|d| d.parse::<IpAddr>().is_ok_and(|d| d.to_canonical() == ip));
        }
        let h = h.strip_suffix('.').unwrap_or(h);
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(h))
    }

    /// Adds the SBC's own hosts (its addresses and advertised names) to a non-empty
    /// `domains`: a request for the SBC itself is never for an unknown domain.
    pub fn serve_own(&mut self, own: impl IntoIterator<Item = String>) {
        if self.domains.is_empty() {
            return;
        }
        for h in own {
            let h = normalise_host(&h);
            if !self.domains.contains(&h) {
                self.domains.push(h);
            }
        }
    }
}

/// Lowercased, an IPv6 reference without brackets, no trailing dot.
fn normalise_host(h: &str) -> String {
    let h = h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(h);
    h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase()
}

/// Longest host name (RFC 1035 §2.3.4).
pub const MAX_DOMAIN: usize = 253;
/// Most served domains.
pub const MAX_DOMAINS: usize = 1024;

impl Default for Config {
    fn default() -> Self {
        // The defaults are valid by construction; a test pins it.
        validate(&Raw::default(), "guard").unwrap_or_else(|_| Config::fallback())
    }
}

impl Config {
    /// Never used unless the defaults stop validating (a test fails then).
    fn fallback() -> Config {
        Config {
            ipv6_prefix_len: 64,
            ignore: Vec::new(),
            max_sources: 100_000,
            max_tracked: 100_000,
            max_bans: MAX_BANS_CEILING,
            recidive_memory: Duration::from_secs(7 * DAY),
            domains: Vec::new(),
            rates: [None; 4],
            trunk: TrunkLimits { calls: None, max_concurrent: None, requests: None, over: Over::Reject },
            scanner: Scanner {
                user_agents: Vec::new(),
                from_names: Vec::new(),
                from_users: Vec::new(),
                from_hosts: Vec::new(),
                window: Duration::from_secs(60),
                max_targets: None,
                max_out_of_dialog: None,
            },
            jails: Vec::new(),
        }
    }
}

struct Checks {
    found: Vec<(String, String)>,
}

impl Checks {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.found.push((path.into(), message.into()));
    }

    fn range(&mut self, path: String, v: u64, lo: u64, hi: u64) -> u64 {
        if v < lo || v > hi {
            self.error(path, format!("{v} out of range {lo}..={hi}"));
            return lo;
        }
        v
    }

    fn over(&mut self, path: String, s: &str) -> Over {
        match s {
            "reject" => Over::Reject,
            "drop" => Over::Drop,
            _ => {
                self.error(path, format!("{s:?} is not \"reject\" or \"drop\""));
                Over::Reject
            }
        }
    }

    fn rate(&mut self, path: &str, per_second: u64, burst: u64, over: Over) -> Option<Rate> {
        let per_second = self.range(format!("{path}per_second"), per_second, 0, 1_000_000);
        let burst = self.range(format!("{path}burst"), burst, 1, 1_000_000);
        Some(Rate {
            per_second: NonZeroU32::new(u32::try_from(per_second).ok()?)?,
            burst: NonZeroU32::new(u32::try_from(burst).ok()?)?,
            over,
        })
    }

    fn patterns(&mut self, path: &str, list: &[String]) -> Vec<String> {
        for (i, p) in list.iter().enumerate() {
            if p.is_empty() || p.len() > MAX_PATTERN || !p.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                self.error(format!("{path}[{i}]"), format!("{p:?}: 1 to {MAX_PATTERN} printable ASCII characters"));
            }
        }
        list.iter().map(|p| p.to_ascii_lowercase()).collect()
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn narrow(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Checks `raw`, reporting every problem as (path under `prefix`, message).
pub fn validate(raw: &Raw, prefix: &str) -> Result<Config, Vec<(String, String)>> {
    let mut c = Checks { found: Vec::new() };
    let p = |k: &str| format!("{prefix}.{k}");
    let ipv6_prefix_len = c.range(p("ipv6_prefix_len"), raw.ipv6_prefix_len, 32, 128);
    let mut ignore = Vec::new();
    for (i, s) in raw.ignore.iter().enumerate() {
        match s.parse::<Prefix>() {
            Ok(pre) => ignore.push(pre),
            Err(e) => c.error(format!("{prefix}.ignore[{i}]"), e.to_string()),
        }
    }
    let max_sources = c.range(p("max_sources"), raw.max_sources, 1, 10_000_000);
    let max_tracked = c.range(p("max_tracked"), raw.max_tracked, 1, 10_000_000);
    let max_bans = c.range(p("max_bans"), raw.max_bans, 1, MAX_BANS_CEILING as u64);
    let recidive = c.range(p("recidive_memory_secs"), raw.recidive_memory_secs, 0, 365 * DAY);
    if raw.domains.len() > MAX_DOMAINS {
        c.error(p("domains"), format!("{} domains, at most {MAX_DOMAINS}", raw.domains.len()));
    }
    let mut domains: Vec<String> = Vec::new();
    for (i, d) in raw.domains.iter().enumerate() {
        let h = normalise_host(d);
        let name_ok = !h.is_empty()
            && h.len() <= MAX_DOMAIN
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !(name_ok || h.parse::<IpAddr>().is_ok()) {
            c.error(format!("{prefix}.domains[{i}]"), format!("{d:?} is not a host name or an IP address"));
        } else if !domains.contains(&h) {
            domains.push(h);
        }
    }

    let mut rates = [None; 4];
    for (class, r) in [
        (MethodClass::Register, &raw.rate.register),
        (MethodClass::Invite, &raw.rate.invite),
        (MethodClass::Options, &raw.rate.options),
        (MethodClass::Other, &raw.rate.other),
    ] {
        let path = format!("{prefix}.rate.{}.", class.as_str());
        let over = c.over(format!("{path}over"), &r.over);
        if let Some(slot) = rates.get_mut(class.index()) {
            *slot = c.rate(&path, r.per_second, r.burst, over);
        }
    }

    let t = &raw.trunk;
    let over = c.over(p("trunk.over"), &t.over);
    let trunk = TrunkLimits {
        calls: c.rate(&format!("{prefix}.trunk.calls_"), t.calls_per_second, t.calls_burst, over),
        max_concurrent: Some(narrow(c.range(p("trunk.max_concurrent"), t.max_concurrent, 0, 10_000_000)))
            .filter(|&n| n > 0),
        requests: c.rate(&format!("{prefix}.trunk.requests_"), t.requests_per_second, t.requests_burst, over),
        over,
    };

    let s = &raw.scanner;
    let scanner = Scanner {
        user_agents: c.patterns(&p("scanner.user_agents"), &s.user_agents),
        from_names: c.patterns(&p("scanner.from_names"), &s.from_names),
        from_users: c.patterns(&p("scanner.from_users"), &s.from_users),
        from_hosts: c.patterns(&p("scanner.from_hosts"), &s.from_hosts),
        window: secs(c.range(p("scanner.window_secs"), s.window_secs, 1, 3600)),
        max_targets: Some(narrow(c.range(p("scanner.max_targets"), s.max_targets, 0, MAX_TARGETS_CEILING)))
            .filter(|&n| n > 0),
        max_out_of_dialog: Some(narrow(c.range(p("scanner.max_out_of_dialog"), s.max_out_of_dialog, 0, 1_000_000)))
            .filter(|&n| n > 0),
    };

    if raw.jail.len() > MAX_JAILS {
        c.error(p("jail"), format!("{} jails, at most {MAX_JAILS}", raw.jail.len()));
    }
    let mut jails: Vec<Jail> = Vec::new();
    for (i, j) in raw.jail.iter().enumerate() {
        let jp = |k: &str| format!("{prefix}.jail[{i}].{k}");
        let name_ok = !j.name.is_empty()
            && j.name.len() <= MAX_JAIL_NAME
            && j.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            c.error(jp("name"), format!("{:?}: 1 to {MAX_JAIL_NAME} of a-z, 0-9, '-', '_'", j.name));
        } else if jails.iter().any(|o| o.name == j.name) {
            c.error(jp("name"), format!("{:?} names another jail already", j.name));
        }
        if j.events.is_empty() {
            c.error(jp("events"), "at least one event kind is required");
        }
        let mut events = Vec::new();
        for (k, e) in j.events.iter().enumerate() {
            match EventKind::parse(e) {
                Some(kind) if !events.contains(&kind) => events.push(kind),
                Some(_) => c.error(format!("{prefix}.jail[{i}].events[{k}]"), format!("{e:?} is listed twice")),
                None => {
                    let known: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                    c.error(
                        format!("{prefix}.jail[{i}].events[{k}]"),
                        format!("{e:?} is not one of {}", known.join(", ")),
                    )
                }
            }
        }
        let key = match j.key.as_str() {
            "source" => JailKey::Source,
            "user" => JailKey::User,
            other => {
                c.error(jp("key"), format!("{other:?} is not \"source\" or \"user\""));
                JailKey::Source
            }
        };
        let bantime = c.range(jp("bantime_secs"), j.bantime_secs, 1, 365 * DAY);
        let bantime_max = c.range(jp("bantime_max_secs"), j.bantime_max_secs, 1, 365 * DAY);
        if bantime_max < bantime {
            c.error(jp("bantime_max_secs"), format!("{bantime_max} is less than bantime_secs {bantime}"));
        }
        jails.push(Jail {
            name: j.name.clone(),
            events,
            key,
            findtime: secs(c.range(jp("findtime_secs"), j.findtime_secs, 1, 7 * DAY)),
            maxretry: narrow(c.range(jp("maxretry"), j.maxretry, 1, MAX_RETRY_CEILING)),
            bantime: secs(bantime),
            bantime_factor: narrow(c.range(jp("bantime_factor"), j.bantime_factor, 1, 100)),
            bantime_max: secs(bantime_max),
        });
    }

    if !c.found.is_empty() {
        return Err(c.found);
    }
    Ok(Config {
        ipv6_prefix_len: u8::try_from(ipv6_prefix_len).unwrap_or(128),
        ignore,
        max_sources: usize::try_from(max_sources).unwrap_or(usize::MAX),
        max_tracked: usize::try_from(max_tracked).unwrap_or(usize::MAX),
        max_bans: usize::try_from(max_bans).unwrap_or(MAX_BANS_CEILING),
        recidive_memory: secs(recidive),
        domains,
        rates,
        trunk,
        scanner,
        jails,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_with_five_jails_and_a_64_bit_ipv6_key() {
        let c = validate(&Raw::default(), "guard").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.ipv6_prefix_len, 64);
        let names: Vec<_> = c.jails.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["sip-auth", "sip-auth-user", "sip-scanner", "sip-garbage", "sip-flood"]);
        assert_eq!(c.rate(MethodClass::Options).unwrap().over, Over::Drop);
        assert_eq!(c.trunk.max_concurrent, None);
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let mut raw =
            Raw { ipv6_prefix_len: 20, ignore: vec!["192.0.2.0/24".into(), "192.0.2.1/24".into()], ..Raw::default() };
        raw.rate.invite.over = "ignore".into();
        raw.rate.options.burst = 0;
        raw.scanner.user_agents.push(String::new());
        raw.jail[1].name = "sip-auth".into();
        raw.jail[2].events.push("port-scan".into());
        raw.jail[3].maxretry = 0;
        raw.jail[4].bantime_max_secs = 10;
        let errors = validate(&raw, "guard").unwrap_err();
        let paths: Vec<_> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "guard.ipv6_prefix_len",
                "guard.ignore[1]",
                "guard.rate.invite.over",
                "guard.rate.options.burst",
                "guard.scanner.user_agents[11]",
                "guard.jail[1].name",
                "guard.jail[2].events[2]",
                "guard.jail[3].maxretry",
                "guard.jail[4].bantime_max_secs",
            ],
            "{errors:?}"
        );
        assert!(errors[1].1.contains("host bits"), "{}", errors[1].1);
        assert!(errors[6].1.contains("auth-failure"), "{}", errors[6].1);
    }

    #[test]
    fn toml_fills_missing_keys_with_defaults_and_refuses_unknown_ones() {
        let text = r#"
            ipv6_prefix_len = 56
            ignore = ["192.0.2.0/24"]
            [rate.invite]
            per_second = 2
            burst = 4
            over = "drop"
            [[jail]]
            name = "sip-auth"
            events = ["auth-failure"]
            maxretry = 3
        "#;
        let raw: Raw = toml::from_str(text).unwrap();
        let c = validate(&raw, "guard").unwrap();
        assert_eq!(c.ipv6_prefix_len, 56);
        let invite = c.rate(MethodClass::Invite).unwrap();
        assert_eq!((invite.per_second.get(), invite.burst.get(), invite.over), (2, 4, Over::Drop));
        assert_eq!(c.rate(MethodClass::Register), Config::default().rate(MethodClass::Register));
        assert_eq!(c.jails.len(), 1, "a configured jail list replaces the defaults");
        assert_eq!((c.jails[0].maxretry, c.jails[0].findtime), (3, Duration::from_secs(600)));
        for bad in ["maxretry = 3", "[rate.invite]\nper_minute = 3", "[[jail]]\nname = \"x\"\nban = 1"] {
            assert!(toml::from_str::<Raw>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn served_domains_are_checked_by_name_and_by_address() {
        let local: IpAddr = "203.0.113.1".parse().unwrap();
        assert!(Config::default().serves("anything.example", local), "empty: any domain");
        let raw = Raw {
            domains: vec!["Voip.Example.COM.".into(), "[2001:DB8::1]".into(), "198.51.100.7".into()],
            ..Raw::default()
        };
        let mut c = validate(&raw, "guard").unwrap();
        assert_eq!(c.domains, ["voip.example.com", "2001:db8::1", "198.51.100.7"]);
        assert!(c.serves("voip.example.com", local));
        assert!(c.serves("VOIP.example.com.", local));
        assert!(c.serves("[2001:db8:0::1]", local), "an address, however written");
        assert!(c.serves("198.51.100.7", local));
        assert!(c.serves("203.0.113.1", local), "the address the request came in on");
        assert!(c.serves("::ffff:203.0.113.1", local));
        assert!(!c.serves("1.1.1.1", local));
        assert!(!c.serves("example.com", local));
        assert!(!c.serves("voip.example.com.evil", local));
        c.serve_own(["sbc.example.net".to_string(), "[2001:db8::2]".to_string()]);
        assert!(c.serves("sbc.example.net", local) && c.serves("2001:db8::2", local));
        let mut any = Config::default();
        any.serve_own(["sbc.example.net".to_string()]);
        assert!(any.domains.is_empty(), "own hosts do not turn the check on");
        for bad in ["", "exa mple.com", "a..b", "-", "x/y", &"a".repeat(300)] {
            let raw = Raw { domains: vec![bad.to_string()], ..Raw::default() };
            let e = validate(&raw, "guard").unwrap_err();
            assert_eq!(e[0].0, "guard.domains[0]", "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn zero_per_second_means_no_limit_and_patterns_are_lowercased() {
        let mut raw = Raw::default();
        raw.rate.other.per_second = 0;
        raw.trunk.max_concurrent = 30;
        raw.scanner.user_agents = vec!["Friendly-Scanner".into()];
        let c = validate(&raw, "guard").unwrap();
        assert_eq!(c.rate(MethodClass::Other), None);
        assert_eq!(c.trunk.max_concurrent, Some(30));
        assert_eq!(c.scanner.user_agents, ["friendly-scanner"]);
    }
}
