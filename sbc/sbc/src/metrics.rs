//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4), rendered from the
//! `sbc stats` snapshot — the one source of truth for every counter — plus the process's CPU
//! and memory (`sysinfo`). No I/O here: [`render`] takes the snapshot text and the process
//! figures and returns the page.
//!
//! Mapping: the stats line `a.b_c N` becomes `sbc_a_b_c_total N` for a counter and `sbc_a_b_c N`
//! for a gauge ([`is_gauge`]); the XDP verdicts (`xdp.<verdict> N`) become one family with a
//! `verdict` label, `xdp.interface IFACE` / `xdp.attached 0` become `sbc_xdp_attached
//! {interface="…"}`. Lines that are not `name integer` are left out (they are text for people).

use std::fmt::Write as _;

/// What `sysinfo` reports about this process (`None` when it could not read it).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Process {
    pub cpu_seconds: f64,
    /// Percent of one core since the previous sample (sysinfo's `cpu_usage`).
    pub cpu_percent: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// Seconds since the Unix epoch.
    pub start_time: u64,
}

/// The engine's part of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub enum Engine<'a> {
    /// The `sbc stats` text the engine answered with.
    Stats(&'a str),
    /// The engine did not answer within the scrape's time (its counters are left out).
    NoAnswer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One metric family: its samples in the order they were seen.
struct Family {
    name: String,
    kind: Kind,
    help: String,
    samples: Vec<(Option<(&'static str, String)>, String)>,
}

/// The families of a page, in first-seen order; a second sample with the same name and labels
/// is dropped (the format allows each once).
#[derive(Default)]
struct Page {
    families: Vec<Family>,
}

impl Page {
    fn add(&mut self, name: String, kind: Kind, help: String, label: Option<(&'static str, String)>, value: String) {
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family { name, kind, help, samples: Vec::new() });
                self.families.len() - 1
            }
        };
        let Some(f) = self.families.get_mut(i) else { return };
        if f.kind == kind && !f.samples.iter().any(|(l, _)| *l == label) {
            f.samples.push((label, value));
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            for (label, value) in &f.samples {
                match label {
                    Some((k, v)) => {
                        let _ = writeln!(out, "{}{{{k}=\"{}\"}} {value}", f.name, escape_label(v));
                    }
                    None => {
                        let _ = writeln!(out, "{} {value}", f.name);
                    }
                }
            }
        }
        out
    }
}

/// The `/metrics` page.
pub fn render(engine: &Engine<'_>, process: Option<&Process>, heartbeat_age_secs: f64) -> String {
    let mut page = Page::default();
    let up = matches!(engine, Engine::Stats(_));
    page.add(
        "sbc_engine_up".into(),
        Kind::Gauge,
        "1 when the engine answered this scrape's stats request in time, else 0".into(),
        None,
        u8::from(up).to_string(),
    );
    page.add(
        "sbc_engine_heartbeat_age_seconds".into(),
        Kind::Gauge,
        "Seconds since the engine loop last beat (it beats every second; /health fails past 5)".into(),
        None,
        format!("{heartbeat_age_secs:.3}"),
    );
    page.add(
        "sbc_build_info".into(),
        Kind::Gauge,
        "The running sbc's version".into(),
        Some(("version", env!("CARGO_PKG_VERSION").to_string())),
        "1".into(),
    );
    if let Engine::Stats(text) = engine {
        for line in text.lines() {
            stats_line(&mut page, line);
        }
    }
    if let Some(p) = process {
        let mut add =
            |name: &str, kind, help: &str, value: String| page.add(name.into(), kind, help.into(), None, value);
        add(
            "process_cpu_seconds_total",
            Kind::Counter,
            "Total user and system CPU time spent in seconds",
            format!("{:.3}", p.cpu_seconds),
        );
        add(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes",
            p.resident_bytes.to_string(),
        );
        add("process_virtual_memory_bytes", Kind::Gauge, "Virtual memory size in bytes", p.virtual_bytes.to_string());
        add(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since unix epoch in seconds",
            p.start_time.to_string(),
        );
        add(
            "sbc_process_cpu_usage_percent",
            Kind::Gauge,
            "CPU used since the previous scrape, percent of one core (sysinfo)",
            format!("{:.1}", p.cpu_percent),
        );
    }
    page.render()
}

/// One `sbc stats` line into the page.
fn stats_line(page: &mut Page, line: &str) {
    let Some((name, value)) = line.trim_end().split_once(' ') else { return };
    if name.is_empty() {
        return;
    }
    let help_xdp = "Packets the XDP program judged on the trunk interface, by verdict";
    match (name, value.parse::<u64>()) {
        ("xdp.interface", _) => page.add(
            "sbc_xdp_attached".into(),
            Kind::Gauge,
            "1 when the XDP filter is attached to the interface named".into(),
            Some(("interface", value.to_string())),
            "1".into(),
        ),
        ("xdp.attached", Ok(v)) => page.add(
            "sbc_xdp_attached".into(),
            Kind::Gauge,
            "1 when the XDP filter is attached to the interface named".into(),
            Some(("interface", String::new())),
            v.to_string(),
        ),
        (_, Ok(v)) if name.starts_with("xdp.") => page.add(
            "sbc_xdp_packets_total".into(),
            Kind::Counter,
            help_xdp.into(),
            Some(("verdict", sanitize(name.trim_start_matches("xdp.")))),
            v.to_string(),
        ),
        (_, Ok(v)) => {
            let kind = if is_gauge(name) { Kind::Gauge } else { Kind::Counter };
            let base = format!("sbc_{}", sanitize(name));
            let metric = match kind {
                Kind::Counter => format!("{base}_total"),
                Kind::Gauge => base,
            };
            page.add(metric, kind, help(name, kind), None, v.to_string());
        }
        (_, Err(_)) => {}
    }
}

/// A metric name from a stats name: `[a-zA-Z0-9_]`, everything else `_`.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// Stats lines that are a current size or state rather than a count of events.
fn is_gauge(name: &str) -> bool {
    const GAUGES: [&str; 13] = [
        "nat.registrations",
        "stun.rate_sources",
        "stun.tcp_connections",
        "media.sessions",
        "media.port_pairs_in_use",
        "media.port_pairs",
        "media.relay_sockets",
        "media.relay_workers",
        "allowlist.entries",
        "allowlist.age_seconds",
        "store.connected",
        "store.queued",
        "xdp.attached",
    ];
    name.starts_with("state.") || name.contains(".state.") || GAUGES.contains(&name)
}

/// The HELP text: what the well-known lines mean; the rest name their `sbc stats` line.
fn help(name: &str, kind: Kind) -> String {
    let known = match name {
        "sip.requests_in" => "SIP requests received (both sides)",
        "sip.responses_in" => "SIP responses received (both sides)",
        "sip.requests_forwarded" => "SIP requests forwarded to the other side",
        "sip.responses_forwarded" => "SIP responses forwarded to the other side",
        "sip.local_replies" => "SIP responses the SBC answered itself",
        "sip.rejected" => "SIP requests rejected with an error response",
        "sip.dropped" => "SIP messages dropped without an answer",
        "state.server_transactions" => "Server transactions in progress",
        "state.client_transactions" => "Client transactions in progress",
        "state.dialogs" => "Dialogs the SBC holds",
        "state.registrations" => "Registration bindings the SBC holds",
        "state.tcp_connections" => "SIP TCP connections open",
        "nat.registrations" => "Registrations of phones behind NAT in the cache",
        "allowlist.entries" => "Entries of the running trunk allowlist",
        "allowlist.age_seconds" => {
            "Seconds since the running trunk allowlist was loaded (a failed refresh lets it grow)"
        }
        "guard.state.bans" => "Bans in force",
        _ => "",
    };
    if known.is_empty() { format!("The `sbc stats` {} {name}", kind.as_str()) } else { known.to_string() }
}

/// HELP text: `\` and newline escaped (exposition format 0.0.4).
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value: `\`, `"` and newline escaped.
fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = "sip.requests_in 12\nstate.dialogs 3\nnat.registrations 2\nxdp.interface eth0\n\
                         xdp.pass_allowed 40\nxdp.drop_not_allowed 7\nallowlist.entries 5\nallowlist.age_seconds 61\n\
                         guard.state.bans 1\nguard.rate_hits.invite 4\nxdp.error not numeric text\n";

    fn page() -> String {
        let p = Process {
            cpu_seconds: 1.5,
            cpu_percent: 3.0,
            resident_bytes: 4096,
            virtual_bytes: 8192,
            start_time: 1700000000,
        };
        render(&Engine::Stats(STATS), Some(&p), 0.25)
    }

    #[test]
    fn counters_get_total_and_gauges_keep_their_name_each_with_help_and_type() {
        let page = page();
        let want = [
            "# HELP sbc_sip_requests_in_total SIP requests received (both sides)",
            "# TYPE sbc_sip_requests_in_total counter",
            "sbc_sip_requests_in_total 12",
            "# TYPE sbc_state_dialogs gauge",
            "sbc_state_dialogs 3",
            "# TYPE sbc_nat_registrations gauge",
            "# TYPE sbc_allowlist_age_seconds gauge",
            "sbc_allowlist_age_seconds 61",
            "# TYPE sbc_guard_state_bans gauge",
            "sbc_guard_state_bans 1",
            "# HELP sbc_guard_rate_hits_invite_total The `sbc stats` counter guard.rate_hits.invite",
            "sbc_guard_rate_hits_invite_total 4",
            "# TYPE process_cpu_seconds_total counter",
            "process_cpu_seconds_total 1.500",
            "process_resident_memory_bytes 4096",
            "sbc_engine_up 1",
            "sbc_engine_heartbeat_age_seconds 0.250",
        ];
        for w in want {
            assert!(page.lines().any(|l| l == w), "missing {w:?} in\n{page}");
        }
        assert!(!page.contains("xdp_error"), "text lines are left out:\n{page}");
    }

    #[test]
    fn xdp_verdicts_are_one_family_with_a_label_and_one_help_and_type() {
        let page = page();
        let lines: Vec<&str> = page.lines().collect();
        let at = lines
            .iter()
            .position(|l| {
                *l == "# HELP sbc_xdp_packets_total Packets the XDP program judged on the trunk interface, by verdict"
            })
            .expect("help");
        assert_eq!(
            lines.get(at + 1..at + 4),
            Some(
                &[
                    "# TYPE sbc_xdp_packets_total counter",
                    "sbc_xdp_packets_total{verdict=\"pass_allowed\"} 40",
                    "sbc_xdp_packets_total{verdict=\"drop_not_allowed\"} 7",
                ][..]
            )
        );
        assert_eq!(page.matches("# TYPE sbc_xdp_packets_total").count(), 1);
        assert!(page.contains("sbc_xdp_attached{interface=\"eth0\"} 1\n"), "{page}");
    }

    #[test]
    fn every_family_has_exactly_one_help_and_type_before_its_samples_and_names_are_valid() {
        let page = page();
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(name.clone()), "{name} twice");
                current = name;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert_eq!(rest.split(' ').next(), Some(current.as_str()));
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "sample {line:?} outside its family");
                assert!(name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_'));
                assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "{name}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let stats = "xdp.interface we\"ird\\if\nname.with-dash 1\n";
        let page = render(&Engine::Stats(stats), None, 0.0);
        assert!(page.contains("sbc_xdp_attached{interface=\"we\\\"ird\\\\if\"} 1\n"), "{page}");
        assert!(page.contains("sbc_name_with_dash_total 1\n"), "{page}");
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
        assert_eq!(escape_label("a\"b\nc\\"), "a\\\"b\\nc\\\\");
    }

    #[test]
    fn a_sample_repeated_is_kept_once_and_an_engine_that_did_not_answer_is_reported_down() {
        let page = render(&Engine::Stats("sip.dropped 1\nsip.dropped 2\n"), None, 0.0);
        assert_eq!(page.lines().filter(|l| l.starts_with("sbc_sip_dropped_total ")).count(), 1, "{page}");
        assert!(page.contains("sbc_sip_dropped_total 1\n"));
        let down = render(&Engine::NoAnswer, None, 7.5);
        assert!(down.contains("sbc_engine_up 0\n"), "{down}");
        assert!(down.contains("sbc_engine_heartbeat_age_seconds 7.500\n"), "{down}");
        assert!(!down.contains("sbc_sip"), "{down}");
    }
}
