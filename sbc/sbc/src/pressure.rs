//! Overload protection: decides when the daemon is under pressure and tells the engine, which
//! then answers new work (INVITE, REGISTER, SUBSCRIBE... outside a dialog) with 503 +
//! Retry-After (RFC 3261 §21.5.4) before building any state, while in-dialog requests, ACK,
//! CANCEL, BYE, health-check OPTIONS and responses still pass (see `Engine::set_overload`).
//!
//! Signals, any one of which enters overload:
//! * the depth of the engine's input queue (datagrams read by the socket tasks, not yet handled):
//!   the direct sign that the engine falls behind; read on every batch;
//! * the process's resident memory, the system's available memory, and the process's CPU share
//!   of the machine, from `sysinfo`, sampled every `sample_ms`.
//!
//! Hysteresis: overload ends only when every signal is back under its low mark and at least
//! `hold_ms` have passed since it began, so a queue hovering at the mark does not flap.

use std::time::{Duration, Instant};

use sbc_proto::engine::Overload;
use serde::Deserialize;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// What the engine's input queue holds at most (`run.rs` creates it).
pub const INPUT_QUEUE: usize = 4096;

/// `[overload]` as written (config/sbc.toml documents every key).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOverload {
    pub enabled: bool,
    pub queue_high: u64,
    pub queue_low: u64,
    pub rss_high_mib: u64,
    pub rss_low_mib: u64,
    pub available_low_mib: u64,
    pub cpu_high_percent: u64,
    pub cpu_low_percent: u64,
    pub retry_after_secs: u64,
    pub sample_ms: u64,
    pub hold_ms: u64,
}

impl Default for RawOverload {
    fn default() -> Self {
        RawOverload {
            enabled: true,
            queue_high: 2048,
            queue_low: 256,
            rss_high_mib: 1024,
            rss_low_mib: 768,
            available_low_mib: 64,
            cpu_high_percent: 95,
            cpu_low_percent: 80,
            retry_after_secs: 5,
            sample_ms: 500,
            hold_ms: 2000,
        }
    }
}

/// The validated thresholds; a zero high mark turns that signal off.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub enabled: bool,
    pub queue_high: usize,
    pub queue_low: usize,
    pub rss_high_mib: u64,
    pub rss_low_mib: u64,
    pub available_low_mib: u64,
    pub cpu_high_percent: f32,
    pub cpu_low_percent: f32,
    pub retry_after: u32,
    pub sample: Duration,
    pub hold: Duration,
}

/// Checks `[overload]`; every problem as (path, message).
pub fn validate(r: &RawOverload) -> Result<Config, Vec<(String, String)>> {
    let mut errs = Vec::new();
    let mut range = |key: &str, v: u64, lo: u64, hi: u64| {
        if v < lo || v > hi {
            errs.push((format!("overload.{key}"), format!("{v} out of range {lo}..={hi}")));
        }
    };
    range("queue_high", r.queue_high, 1, INPUT_QUEUE as u64);
    range("queue_low", r.queue_low, 0, INPUT_QUEUE as u64);
    range("rss_high_mib", r.rss_high_mib, 0, 1 << 20);
    range("available_low_mib", r.available_low_mib, 0, 1 << 20);
    range("cpu_high_percent", r.cpu_high_percent, 0, 100);
    range("retry_after_secs", r.retry_after_secs, 1, 3600);
    // sysinfo needs 200 ms between two readings for a process's CPU usage.
    range("sample_ms", r.sample_ms, 200, 60_000);
    range("hold_ms", r.hold_ms, 0, 600_000);
    if r.queue_low >= r.queue_high {
        errs.push((
            "overload.queue_low".into(),
            format!("{} must be below queue_high ({})", r.queue_low, r.queue_high),
        ));
    }
    if r.rss_high_mib > 0 && r.rss_low_mib >= r.rss_high_mib {
        errs.push((
            "overload.rss_low_mib".into(),
            format!("{} must be below rss_high_mib ({})", r.rss_low_mib, r.rss_high_mib),
        ));
    }
    if r.cpu_high_percent > 0 && r.cpu_low_percent >= r.cpu_high_percent {
        errs.push((
            "overload.cpu_low_percent".into(),
            format!("{} must be below cpu_high_percent ({})", r.cpu_low_percent, r.cpu_high_percent),
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Config {
        enabled: r.enabled,
        queue_high: usize::try_from(r.queue_high).unwrap_or(INPUT_QUEUE),
        queue_low: usize::try_from(r.queue_low).unwrap_or(0),
        rss_high_mib: r.rss_high_mib,
        rss_low_mib: r.rss_low_mib,
        available_low_mib: r.available_low_mib,
        cpu_high_percent: r.cpu_high_percent as f32,
        cpu_low_percent: r.cpu_low_percent as f32,
        retry_after: u32::try_from(r.retry_after_secs).unwrap_or(5),
        sample: Duration::from_millis(r.sample_ms),
        hold: Duration::from_millis(r.hold_ms),
    })
}

/// One look at the signals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// Inputs waiting for the engine.
    pub queue: usize,
    /// The process's resident memory.
    pub rss_mib: u64,
    /// The system's available memory; None when unknown.
    pub available_mib: Option<u64>,
    /// The process's CPU time over the last sample, as a share of all the machine's cores.
    pub cpu_percent: f32,
}

/// Which signal put the daemon into overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Queue,
    Memory,
    SystemMemory,
    Cpu,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Queue => "input queue",
            Cause::Memory => "process memory",
            Cause::SystemMemory => "system memory",
            Cause::Cpu => "cpu",
        }
    }
}

/// The first signal over its high mark.
pub fn over(cfg: &Config, r: &Reading) -> Option<Cause> {
    if r.queue >= cfg.queue_high {
        return Some(Cause::Queue);
    }
    if cfg.rss_high_mib > 0 && r.rss_mib >= cfg.rss_high_mib {
        return Some(Cause::Memory);
    }
    if cfg.available_low_mib > 0 && r.available_mib.is_some_and(|a| a < cfg.available_low_mib) {
        return Some(Cause::SystemMemory);
    }
    if cfg.cpu_high_percent > 0.0 && r.cpu_percent >= cfg.cpu_high_percent {
        return Some(Cause::Cpu);
    }
    None
}

/// Every signal under its low mark (system memory: twice its low mark available again).
pub fn calm(cfg: &Config, r: &Reading) -> bool {
    r.queue <= cfg.queue_low
        && (cfg.rss_high_mib == 0 || r.rss_mib < cfg.rss_low_mib)
        && (cfg.available_low_mib == 0 || r.available_mib.is_none_or(|a| a >= 2 * cfg.available_low_mib))
        && (cfg.cpu_high_percent <= 0.0 || r.cpu_percent < cfg.cpu_low_percent)
}

/// The hysteresis state, apart from where readings come from (unit-tested on its own).
#[derive(Debug)]
pub struct Gate {
    cfg: Config,
    /// Since when, and why; None: serving normally.
    active: Option<(Instant, Cause)>,
    /// How many times overload began.
    pub entered: u64,
}

/// A change the daemon hands to the engine and logs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    Enter(Cause, Overload),
    Leave(Duration),
}

impl Gate {
    pub fn new(cfg: Config) -> Gate {
        Gate { cfg, active: None, entered: 0 }
    }

    pub fn active(&self) -> Option<Cause> {
        self.active.map(|(_, c)| c)
    }

    /// The state after `r`: Some when it changes.
    pub fn update(&mut self, now: Instant, r: &Reading) -> Option<Change> {
        if !self.cfg.enabled {
            return None;
        }
        match self.active {
            None => {
                let cause = over(&self.cfg, r)?;
                self.active = Some((now, cause));
                self.entered += 1;
                Some(Change::Enter(cause, Overload { retry_after: self.cfg.retry_after }))
            }
            Some((since, _)) => {
                let held = now.saturating_duration_since(since);
                if held >= self.cfg.hold && calm(&self.cfg, r) {
                    self.active = None;
                    Some(Change::Leave(held))
                } else {
                    None
                }
            }
        }
    }
}

/// The gate with its `sysinfo` readings: what the daemon owns.
pub struct Pressure {
    gate: Gate,
    /// None when sysinfo could not start (no /proc): the queue alone is watched.
    sys: Option<System>,
    pid: Option<Pid>,
    cores: f32,
    next_sample: Instant,
    last: Reading,
    /// The highest resident memory seen, MiB.
    peak_rss_mib: u64,
}

impl Pressure {
    pub fn new(cfg: Config, now: Instant) -> Pressure {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) as f32;
        let mut p = Pressure {
            gate: Gate::new(cfg),
            sys: System::new()
                .inspect_err(
                    |e| tracing::warn!(error = %e, "sysinfo unavailable: overload watches the input queue only"),
                )
                .ok(),
            pid: sysinfo::get_current_pid().ok(),
            cores,
            next_sample: now,
            last: Reading::default(),
            peak_rss_mib: 0,
        };
        p.sample(now);
        p
    }

    /// Refreshes the `sysinfo` part of the reading when `sample` has passed.
    fn sample(&mut self, now: Instant) {
        if now < self.next_sample {
            return;
        }
        self.next_sample = now + self.gate.cfg.sample;
        let Some(sys) = self.sys.as_mut() else { return };
        if let Some(pid) = self.pid {
            sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                true,
                ProcessRefreshKind::nothing().with_memory().with_cpu(),
            );
            if let Some(p) = sys.process(pid) {
                self.last.rss_mib = p.memory() >> 20;
                self.last.cpu_percent = p.cpu_usage() / self.cores;
            }
        }
        sys.refresh_memory();
        let available = sys.available_memory();
        self.last.available_mib = (available > 0).then_some(available >> 20);
        self.peak_rss_mib = self.peak_rss_mib.max(self.last.rss_mib);
    }

    /// Called with the input queue's depth as the daemon takes a batch from it: the engine's
    /// new overload setting when it changes (logged here).
    pub fn observe(&mut self, now: Instant, queue: usize) -> Option<Option<Overload>> {
        if !self.gate.cfg.enabled {
            return None;
        }
        self.sample(now);
        self.last.queue = queue;
        let r = self.last;
        match self.gate.update(now, &r)? {
            Change::Enter(cause, o) => {
                tracing::warn!(
                    cause = cause.as_str(),
                    queue = r.queue,
                    rss_mib = r.rss_mib,
                    available_mib = r.available_mib,
                    cpu_percent = r.cpu_percent,
                    retry_after = o.retry_after,
                    "overload: answering new requests 503"
                );
                Some(Some(o))
            }
            Change::Leave(held) => {
                tracing::info!(
                    after_ms = held.as_millis() as u64,
                    queue = r.queue,
                    rss_mib = r.rss_mib,
                    cpu_percent = r.cpu_percent,
                    "overload over: serving new requests"
                );
                Some(None)
            }
        }
    }

    /// `overload.*` lines for `sbc stats`; `shed` is the engine's counter.
    pub fn stats_text(&self, shed: u64) -> String {
        format!(
            "overload.active {}\noverload.entered {}\noverload.shed {shed}\noverload.queue {}\noverload.rss_mib {}\n\
             overload.peak_rss_mib {}\noverload.cpu_percent {:.0}\n",
            u8::from(self.gate.active().is_some()),
            self.gate.entered,
            self.last.queue,
            self.last.rss_mib,
            self.peak_rss_mib,
            self.last.cpu_percent,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        validate(&RawOverload { hold_ms: 1000, ..RawOverload::default() }).unwrap()
    }

    fn at(queue: usize) -> Reading {
        Reading { queue, rss_mib: 50, available_mib: Some(4096), cpu_percent: 10.0 }
    }

    #[test]
    fn defaults_validate_and_bad_marks_are_reported_with_their_path() {
        assert!(validate(&RawOverload::default()).is_ok());
        let errs = validate(&RawOverload {
            queue_high: 10,
            queue_low: 10,
            rss_high_mib: 100,
            rss_low_mib: 200,
            cpu_high_percent: 150,
            sample_ms: 10,
            retry_after_secs: 0,
            ..RawOverload::default()
        })
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        for p in [
            "overload.queue_low",
            "overload.rss_low_mib",
            "overload.cpu_high_percent",
            "overload.sample_ms",
            "overload.retry_after_secs",
        ] {
            assert!(paths.contains(&p), "{p} missing from {errs:?}");
        }
    }

    #[test]
    fn the_queue_enters_overload_and_leaves_only_below_the_low_mark_after_the_hold() {
        let t0 = Instant::now();
        let mut g = Gate::new(cfg());
        assert_eq!(g.update(t0, &at(2047)), None);
        assert_eq!(g.update(t0, &at(2048)), Some(Change::Enter(Cause::Queue, Overload { retry_after: 5 })));
        // Between the marks, and below the low one before the hold: still overloaded.
        assert_eq!(g.update(t0 + Duration::from_millis(1500), &at(1000)), None);
        assert_eq!(g.update(t0 + Duration::from_millis(500), &at(0)), None);
        assert_eq!(g.active(), Some(Cause::Queue));
        assert_eq!(
            g.update(t0 + Duration::from_millis(1500), &at(256)),
            Some(Change::Leave(Duration::from_millis(1500)))
        );
        assert_eq!(g.active(), None);
        assert_eq!(g.entered, 1);
    }

    #[test]
    fn memory_and_cpu_enter_overload_and_must_fall_below_their_low_marks() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        let mut g = Gate::new(cfg());
        let r = Reading { rss_mib: 1024, ..at(0) };
        assert!(matches!(g.update(t0, &r), Some(Change::Enter(Cause::Memory, _))));
        assert_eq!(g.update(later, &Reading { rss_mib: 800, ..at(0) }), None, "above rss_low_mib");
        assert!(matches!(g.update(later, &Reading { rss_mib: 700, ..at(0) }), Some(Change::Leave(_))));
        let r = Reading { available_mib: Some(32), ..at(0) };
        assert!(matches!(g.update(later, &r), Some(Change::Enter(Cause::SystemMemory, _))));
        let much_later = later + Duration::from_secs(5);
        assert_eq!(g.update(much_later, &Reading { available_mib: Some(100), ..at(0) }), None);
        assert!(matches!(g.update(much_later, &Reading { available_mib: Some(128), ..at(0) }), Some(Change::Leave(_))));
        let r = Reading { cpu_percent: 99.0, ..at(0) };
        assert!(matches!(g.update(much_later, &r), Some(Change::Enter(Cause::Cpu, _))));
        assert_eq!(g.entered, 3);
    }

    #[test]
    fn disabled_never_sheds() {
        let mut g = Gate::new(validate(&RawOverload { enabled: false, ..RawOverload::default() }).unwrap());
        assert_eq!(g.update(Instant::now(), &at(4096)), None);
    }

    #[test]
    fn the_live_sampler_reads_this_process() {
        let t0 = Instant::now();
        let mut p = Pressure::new(cfg(), t0);
        assert!(p.last.rss_mib > 0, "{:?}", p.last);
        assert_eq!(p.observe(t0, 3000), Some(Some(Overload { retry_after: 5 })));
        assert!(
            p.stats_text(7).contains("overload.active 1\noverload.entered 1\noverload.shed 7\noverload.queue 3000\n")
        );
    }
}
