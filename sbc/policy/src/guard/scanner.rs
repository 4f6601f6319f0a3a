//! Scanner detection: signatures (a tool's User-Agent or From, matched case-insensitively) and
//! behaviour, which a changed User-Agent does not hide: from one source within a window and
//! without any success (a 2xx to its REGISTER or INVITE), too many distinct target users (an
//! extension sweep, svwar) or too many out-of-dialog requests (svcrack, floods of probes).
//!
//! Bounded: at most `max_tracked` sources (sampled eviction of the least active), at most
//! `max_targets + 1` target hashes per source, windows that restart; the sweep drops sources
//! idle for a window.

use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

use super::bounded::BoundedMap;
use super::config::Scanner;
use super::event::Request;
use super::key::clean;
use crate::Prefix;

/// The first signature `req` matches, as evidence.
pub fn signature(config: &Scanner, req: &Request<'_>) -> Option<String> {
    let contains = |hay: Option<&str>, pats: &[String]| -> Option<String> {
        let hay = hay?;
        pats.iter().find(|p| contains_ignore_case(hay.as_bytes(), p.as_bytes())).map(|_| clean(hay))
    };
    let equals = |v: Option<&str>, pats: &[String]| -> Option<String> {
        let v = v?;
        pats.iter().find(|p| v.eq_ignore_ascii_case(p)).map(|_| clean(v))
    };
    if let Some(ua) = contains(req.user_agent, &config.user_agents) {
        return Some(format!("User-Agent \"{ua}\""));
    }
    if let Some(n) = contains(req.from_name, &config.from_names) {
        return Some(format!("From name \"{n}\""));
    }
    if let Some(u) = equals(req.from_user, &config.from_users) {
        return Some(format!("From user \"{u}\""));
    }
    equals(req.from_host, &config.from_hosts).map(|h| format!("From host \"{h}\""))
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

#[derive(Debug)]
struct Seen {
    window_start: Instant,
    last: Instant,
    /// Hashes of the distinct target users seen in this window (at most max_targets + 1).
    targets: Vec<u64>,
    out_of_dialog: u32,
    /// Already reported in this window.
    reported: bool,
}

pub struct Behaviour {
    config: Scanner,
    sources: BoundedMap<Prefix, Seen>,
    hasher: RandomState,
}

impl Behaviour {
    pub fn new(config: &Scanner, max_tracked: usize) -> Behaviour {
        Behaviour { config: config.clone(), sources: BoundedMap::new(max_tracked), hasher: RandomState::new() }
    }

    fn enabled(&self) -> bool {
        self.config.max_targets.is_some() || self.config.max_out_of_dialog.is_some()
    }

    /// Follows one request of `source`; the evidence when it crosses a threshold (once per
    /// window).
    pub fn on_request(&mut self, now: Instant, source: Prefix, req: &Request<'_>) -> Option<String> {
        if !self.enabled() || req.in_dialog {
            return None;
        }
        let window = self.config.window;
        let seen = self.sources.get_or_insert_with(
            source,
            || Seen { window_start: now, last: now, targets: Vec::new(), out_of_dialog: 0, reported: false },
            |s| u64::from(s.out_of_dialog) + s.targets.len() as u64,
        )?;
        if now.saturating_duration_since(seen.window_start) > window {
            *seen = Seen { window_start: now, last: now, targets: Vec::new(), out_of_dialog: 0, reported: false };
        }
        seen.last = now;
        seen.out_of_dialog = seen.out_of_dialog.saturating_add(1);
        if let (Some(max), Some(user)) = (self.config.max_targets, req.target_user) {
            let h = self.hasher.hash_one(user);
            if !seen.targets.contains(&h) && seen.targets.len() <= usize::try_from(max).unwrap_or(usize::MAX) {
                seen.targets.push(h);
            }
        }
        if seen.reported {
            return None;
        }
        let secs = window.as_secs();
        let evidence = match (self.config.max_targets, self.config.max_out_of_dialog) {
            (Some(max), _) if seen.targets.len() as u64 > u64::from(max) => {
                format!("more than {max} distinct target users in {secs}s without a success")
            }
            (_, Some(max)) if seen.out_of_dialog > max => {
                format!("more than {max} out-of-dialog requests in {secs}s without a success")
            }
            _ => return None,
        };
        seen.reported = true;
        let ua = req.user_agent.map(|u| format!(" (last User-Agent \"{}\")", clean(u))).unwrap_or_default();
        Some(evidence + &ua)
    }

    /// A 2xx to the source's REGISTER or INVITE: a phone or a PBX, not a scanner. Its counts
    /// restart.
    pub fn on_success(&mut self, source: Prefix) {
        self.sources.remove(&source);
    }

    pub fn sweep(&mut self, now: Instant) {
        let window = self.config.window;
        self.sources.retain(|_, s| now.saturating_duration_since(s.last) <= window);
    }

    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    pub fn evicted(&self) -> u64 {
        self.sources.evicted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::config::Config;
    use crate::guard::event::MethodClass;

    #[test]
    fn signatures_match_user_agent_from_name_and_host_ignoring_case() {
        let c = Config::default().scanner;
        let ip = "198.51.100.66".parse().unwrap();
        let base = Request::new(ip, MethodClass::Options);
        let ua = Request { user_agent: Some("Friendly-Scanner 0.3"), ..base.clone() };
        assert_eq!(signature(&c, &ua).as_deref(), Some("User-Agent \"Friendly-Scanner 0.3\""));
        let from = Request { from_name: Some("sipvicious"), from_user: Some("100"), ..base.clone() };
        assert_eq!(signature(&c, &from).as_deref(), Some("From name \"sipvicious\""));
        let host = Request { from_host: Some("1.1.1.1"), ..base.clone() };
        assert!(signature(&c, &host).is_some());
        let phone = Request { user_agent: Some("Yealink SIP-T46S"), from_host: Some("1.1.1.10"), ..base };
        assert_eq!(signature(&c, &phone), None);
    }
}
