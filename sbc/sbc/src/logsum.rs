//! Rate-limited logging for what outsiders can trigger at packet rate (rejected, shed and
//! dropped traffic, failed connections). Under attack the logs must stay readable and cheap:
//! per kind of event, the first occurrence in each interval is logged in full, the rest are
//! counted, and at the end of the interval one summary line gives the count and the sources
//! that caused most of it. State is bounded: at most [`MAX_KINDS`] kinds (more fold into one
//! "other" kind) and [`MAX_SOURCES`] distinct sources per kind and interval.
//!
//! Events that must each reach the log, because a log reader counts them (the `auth failure`
//! line fail2ban's filter matches, one per failed authentication), are not folded: they go
//! through a [`PerSource`] budget instead — every line in full up to [`AUTH_LINES_PER_SOURCE`]
//! per source and [`AUTH_WINDOW`] (more than any sensible fail2ban `maxretry` needs within its
//! `findtime`), at most [`AUTH_SOURCES`] sources per window; what is over is counted and
//! reported as one summary line per window (which the filter does not match).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Distinct sources remembered per kind and interval; more are counted as "others".
pub const MAX_SOURCES: usize = 64;
/// Distinct kinds per interval, besides "other" (a kind may carry a reason an outsider chose).
pub const MAX_KINDS: usize = 64;
/// Sources named in a summary line.
const TOP: usize = 5;

#[derive(Debug, Default)]
struct KindState {
    /// Occurrences after the first in this interval.
    suppressed: u64,
    sources: HashMap<IpAddr, u64>,
    others: u64,
}

/// The bookkeeping, on an explicit clock (tested without sleeping).
#[derive(Debug)]
pub struct Summary {
    interval: Duration,
    started: Option<Instant>,
    kinds: BTreeMap<String, KindState>,
}

impl Summary {
    pub fn new(interval: Duration) -> Summary {
        Summary { interval, started: None, kinds: BTreeMap::new() }
    }

    /// Records one occurrence; true when it is the first of its kind in this interval and
    /// should be logged in full. Summary lines of an interval that ended are returned too.
    pub fn note(&mut self, now: Instant, kind: &str, src: Option<IpAddr>) -> (bool, Vec<String>) {
        let lines = self.flush(now);
        self.started.get_or_insert(now);
        let kind = if self.kinds.contains_key(kind) || self.kinds.len() < MAX_KINDS { kind } else { "other" };
        let first = !self.kinds.contains_key(kind);
        let k = self.kinds.entry(kind.to_owned()).or_default();
        if !first {
            k.suppressed += 1;
            match src {
                Some(ip) if k.sources.contains_key(&ip) || k.sources.len() < MAX_SOURCES => {
                    *k.sources.entry(ip).or_default() += 1
                }
                _ => k.others += 1,
            }
        }
        (first, lines)
    }

    /// The summary lines of the interval, if it has ended by `now`; the counts start over.
    pub fn flush(&mut self, now: Instant) -> Vec<String> {
        let Some(started) = self.started else { return Vec::new() };
        if now.saturating_duration_since(started) < self.interval {
            return Vec::new();
        }
        self.started = None;
        let secs = self.interval.as_secs();
        std::mem::take(&mut self.kinds)
            .into_iter()
            .filter(|(_, k)| k.suppressed > 0)
            .map(|(kind, k)| {
                let mut top: Vec<(IpAddr, u64)> = k.sources.into_iter().collect();
                top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                let mut named: Vec<String> = top.iter().take(TOP).map(|(ip, n)| format!("{ip}×{n}")).collect();
                let rest: u64 = top.iter().skip(TOP).map(|(_, n)| n).sum::<u64>() + k.others;
                if rest > 0 {
                    named.push(format!("others×{rest}"));
                }
                format!("{kind}: {} more in the last {secs} s (sources: {})", k.suppressed, named.join(", "))
            })
            .collect()
    }
}

/// Lines per source and window of an event logged one line each (see [`PerSource`]).
pub const AUTH_LINES_PER_SOURCE: u32 = 20;
/// The window of [`AUTH_LINES_PER_SOURCE`].
pub const AUTH_WINDOW: Duration = Duration::from_secs(60);
/// Sources with lines in one window; a new source past it is counted, not logged.
pub const AUTH_SOURCES: usize = 4096;

/// A per-source line budget, on an explicit clock: worst case
/// `per_source × max_sources` lines and one summary line per window.
#[derive(Debug)]
pub struct PerSource {
    window: Duration,
    per_source: u32,
    max_sources: usize,
    started: Option<Instant>,
    lines: HashMap<IpAddr, u32>,
    /// Lines not written in this window, per source (bounded by `max_sources`), and the rest.
    over: HashMap<IpAddr, u64>,
    over_others: u64,
}

impl PerSource {
    pub fn new(window: Duration, per_source: u32, max_sources: usize) -> PerSource {
        PerSource {
            window,
            per_source,
            max_sources,
            started: None,
            lines: HashMap::new(),
            over: HashMap::new(),
            over_others: 0,
        }
    }

    /// Whether a line about `src` may be written now; the summary of a window that ended
    /// (when it suppressed anything) is returned too.
    pub fn allow(&mut self, now: Instant, what: &str, src: IpAddr) -> (bool, Option<String>) {
        let summary = self.flush(now, what);
        self.started.get_or_insert(now);
        let known = self.lines.contains_key(&src);
        if known || self.lines.len() < self.max_sources {
            let n = self.lines.entry(src).or_default();
            if *n < self.per_source {
                *n += 1;
                return (true, summary);
            }
        }
        if self.over.contains_key(&src) || self.over.len() < self.max_sources {
            *self.over.entry(src).or_default() += 1;
        } else {
            self.over_others += 1;
        }
        (false, summary)
    }

    /// The summary of the window, if it ended by `now` and suppressed lines; counts start over.
    pub fn flush(&mut self, now: Instant, what: &str) -> Option<String> {
        let started = self.started?;
        if now.saturating_duration_since(started) < self.window {
            return None;
        }
        self.started = None;
        self.lines.clear();
        let mut top: Vec<(IpAddr, u64)> = std::mem::take(&mut self.over).into_iter().collect();
        let others = std::mem::take(&mut self.over_others);
        let total = top.iter().map(|(_, n)| n).sum::<u64>() + others;
        if total == 0 {
            return None;
        }
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut named: Vec<String> = top.iter().take(TOP).map(|(ip, n)| format!("{ip}×{n}")).collect();
        let rest = top.iter().skip(TOP).map(|(_, n)| n).sum::<u64>() + others;
        if rest > 0 {
            named.push(format!("others×{rest}"));
        }
        Some(format!(
            "{what}: {total} lines over the budget ({} per source, {} sources per {} s) not written (sources: {})",
            self.per_source,
            self.max_sources,
            self.window.as_secs(),
            named.join(", ")
        ))
    }
}

static AUTH: Mutex<Option<PerSource>> = Mutex::new(None);

fn with_auth<R>(f: impl FnOnce(&mut PerSource) -> R) -> R {
    let mut g = AUTH.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(|| PerSource::new(AUTH_WINDOW, AUTH_LINES_PER_SOURCE, AUTH_SOURCES)))
}

/// Whether the `auth failure` line about `src` may be written (its per-source budget); a
/// summary of what the last window suppressed is logged here.
pub fn auth_line_allowed(src: IpAddr) -> bool {
    let (ok, summary) = with_auth(|a| a.allow(Instant::now(), AUTH_KIND, src));
    if let Some(l) = summary {
        tracing::warn!("{l}");
    }
    ok
}

/// The summaries' name for the auth failure lines.
const AUTH_KIND: &str = "auth failure lines";

static SUMMARY: Mutex<Option<Summary>> = Mutex::new(None);
const INTERVAL: Duration = Duration::from_secs(10);

fn with<R>(f: impl FnOnce(&mut Summary) -> R) -> R {
    let mut g = SUMMARY.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(|| Summary::new(INTERVAL)))
}

/// Logs `detail()` at WARN if this is the first `kind` in the interval; counts it otherwise.
/// `detail` is only evaluated when logged.
pub fn note(kind: &str, src: Option<IpAddr>, detail: impl FnOnce() -> String) {
    if let Some(d) = first(kind, src, detail) {
        tracing::warn!(kind, "{d} (similar events are summarised every {} s)", INTERVAL.as_secs());
    }
}

/// As [`note`], at INFO: ordinary refusals (a malformed request, a stray response).
pub fn note_info(kind: &str, src: Option<IpAddr>, detail: impl FnOnce() -> String) {
    if let Some(d) = first(kind, src, detail) {
        tracing::info!(kind, "{d} (similar events are summarised every {} s)", INTERVAL.as_secs());
    }
}

fn first(kind: &str, src: Option<IpAddr>, detail: impl FnOnce() -> String) -> Option<String> {
    let (first, lines) = with(|s| s.note(Instant::now(), kind, src));
    for l in lines {
        tracing::warn!("{l}");
    }
    first.then(detail)
}

/// Emits the summaries of an interval that has ended (called on a timer, so a burst that
/// stopped is still reported).
pub fn tick() {
    for l in with(|s| s.flush(Instant::now())) {
        tracing::warn!("{l}");
    }
    if let Some(l) = with_auth(|a| a.flush(Instant::now(), AUTH_KIND)) {
        tracing::warn!("{l}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_flood_logs_its_first_event_and_one_summary_per_interval() {
        let t0 = Instant::now();
        let mut s = Summary::new(Duration::from_secs(10));
        assert_eq!(s.note(t0, "overload", ip("198.51.100.66")), (true, vec![]));
        for i in 0..20_000u32 {
            let src = if i % 4 == 0 { ip("198.51.100.67") } else { ip("198.51.100.66") };
            let (first, lines) = s.note(t0 + Duration::from_micros(u64::from(i)), "overload", src);
            assert!(!first && lines.is_empty());
        }
        // Another kind is logged in full once too.
        assert!(s.note(t0, "tcp_connect_failed", None).0);
        assert!(s.flush(t0 + Duration::from_secs(9)).is_empty());
        let lines = s.flush(t0 + Duration::from_secs(10));
        assert_eq!(
            lines,
            vec![
                "overload: 20000 more in the last 10 s (sources: 198.51.100.66×15000, 198.51.100.67×5000)".to_string()
            ]
        );
        // The next interval starts over: its first event is logged in full again.
        assert!(s.note(t0 + Duration::from_secs(11), "overload", ip("198.51.100.66")).0);
    }

    #[test]
    fn every_line_is_allowed_up_to_the_per_source_budget_then_summarised() {
        let t0 = Instant::now();
        let mut a = PerSource::new(Duration::from_secs(60), 3, 2);
        let (x, y, z) = (ip("198.51.100.66").unwrap(), ip("198.51.100.67").unwrap(), ip("2001:db8::1").unwrap());
        let mut allowed = |src| a.allow(t0, "auth failure lines", src).0;
        assert_eq!([allowed(x), allowed(x), allowed(x), allowed(x), allowed(x)], [true, true, true, false, false]);
        assert!(allowed(y), "another source has its own budget");
        assert!(!allowed(z), "the sources of a window are bounded");
        assert_eq!(a.flush(t0 + Duration::from_secs(59), "auth failure lines"), None);
        let line = a.flush(t0 + Duration::from_secs(60), "auth failure lines").unwrap();
        assert_eq!(
            line,
            "auth failure lines: 3 lines over the budget (3 per source, 2 sources per 60 s) not written \
             (sources: 198.51.100.66×2, 2001:db8::1×1)"
        );
        // A new window: the budget is back, and a quiet window has no summary.
        assert!(a.allow(t0 + Duration::from_secs(61), "auth failure lines", x).0);
        assert_eq!(a.flush(t0 + Duration::from_secs(130), "auth failure lines"), None);
    }

    #[test]
    fn sources_are_bounded_per_kind() {
        let t0 = Instant::now();
        let mut s = Summary::new(Duration::from_secs(10));
        s.note(t0, "dropped", None);
        for i in 0..1000u32 {
            let src = IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400 + i));
            s.note(t0, "dropped", Some(src));
        }
        assert!(s.kinds.get("dropped").unwrap().sources.len() <= MAX_SOURCES);
        for i in 0..200 {
            s.note(t0, &format!("rejected: reason {i}"), None);
        }
        assert_eq!(s.kinds.len(), MAX_KINDS + 1, "the limit, and \"other\"");
        let lines = s.flush(t0 + Duration::from_secs(10));
        assert_eq!(lines.len(), 2, "dropped, and the kinds over the limit folded into other");
        assert!(lines[1].starts_with("other: "), "{}", lines[1]);
        assert!(lines[0].starts_with("dropped: 1000 more in the last 10 s (sources: "), "{}", lines[0]);
        assert!(lines[0].ends_with("others×995)"), "{}", lines[0]);
    }
}
