//! Configuration: TOML → `Raw` (serde, unknown keys refused) → `Validated`. Every error is found
//! at once, each with its path and line, e.g. `line 3: external.udp[1]: port 0 is not allowed`:
//! the type errors and unknown keys of the whole file ([`document`]) and the checks of
//! [`validate`]. Every `Raw` field has a default, so a refused key never hides the rest; checks
//! that would judge the default standing in for a refused key are skipped.

mod document;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use sbc_policy::ratelimit::{Rate, SourcePrefixes};
use sbc_proto::engine::{Config as EngineConfig, CoreTarget, NatConfig, NatMode, SideConfig};
use sbc_proto::sip::framer::Limits;
use sbc_proto::sip::uri::Transport;
use sbc_proto::transaction::Timers;
use serde::Deserialize;

use document::Document;
pub use document::Problem;
use sbc_policy::guard::config as guard_config;

/// The embedded default (config/sbc.toml).
pub const DEFAULT: &str = include_str!("../../../../config/sbc.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    #[serde(default)]
    pub engine: RawEngine,
    #[serde(default)]
    pub external: RawSide,
    #[serde(default)]
    pub internal: RawSide,
    #[serde(default)]
    pub core: Vec<RawCore>,
    #[serde(default)]
    pub probe: RawProbe,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub topology: RawTopology,
    #[serde(default)]
    pub timers: RawTimers,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub trunk: RawTrunk,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub management: RawManagement,
    #[serde(default)]
    pub stun: RawStun,
    #[serde(default)]
    pub nat: RawNat,
    #[serde(default)]
    pub media: RawMedia,
    #[serde(default)]
    pub guard: RawGuard,
    #[serde(default)]
    pub overload: crate::pressure::RawOverload,
}

/// The SIP engine's threads.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEngine {
    /// SIP engine threads (shards); 0: one per core.
    pub workers: u64,
}

/// Media anchoring: SDP rewritten onto the SBC's relay (RFC 3264), sessions with latching.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMedia {
    /// SDP rewritten and packets relayed.
    pub enabled: bool,
    /// The relay's address in the SDP sent outside; default the external side's first listen IP.
    pub external_ip: Option<String>,
    /// The relay's address in the SDP sent to the core; default the internal side's first listen IP.
    pub internal_ip: Option<String>,
    /// "LOW-HIGH": the UDP port range of the relay (even RTP, odd RTCP).
    pub ports: String,
    /// Calls with anchored media at once; above it, SDP is stripped (no ports).
    pub max_calls: u64,
    /// m-lines anchored per call.
    pub max_streams_per_call: u64,
    /// A call's media with no packet and no SDP for this long is released.
    pub idle_secs: u64,
    /// Relay worker threads; 0: one per core.
    pub workers: u64,
}
impl Default for RawMedia {
    fn default() -> Self {
        RawMedia {
            enabled: false,
            external_ip: None,
            internal_ip: None,
            ports: "30000-39999".into(),
            max_calls: 2000,
            max_streams_per_call: 4,
            idle_secs: 120,
            workers: 0,
        }
    }
}

/// The guard (rate limits and fail2ban-style bans, `sbc_policy::guard`): the daemon's keys
/// (`enabled`, `state_dir`) and the guard's own, checked by `sbc_policy::guard::config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGuard {
    pub enabled: bool,
    /// Where the ban table is kept across restarts; "" keeps it in memory only.
    pub state_dir: String,
    pub ipv6_prefix_len: u64,
    pub ignore: Vec<String>,
    pub max_sources: u64,
    pub max_tracked: u64,
    pub max_bans: u64,
    pub recidive_memory_secs: u64,
    pub domains: Vec<String>,
    /// Per-source packet rate on the external SIP ports, enforced in XDP (0: off).
    pub xdp_rate_pps: u64,
    /// Packets a source may send at once before `xdp_rate_pps` applies (0: `xdp_rate_pps`).
    pub xdp_rate_burst: u64,
    /// The same for allowlisted sources on the protected ports (0: 10 × `xdp_rate_pps`).
    pub xdp_listed_rate_pps: u64,
    /// (0: 10 × the unlisted burst.)
    pub xdp_listed_rate_burst: u64,
    pub rate: guard_config::RawRates,
    pub trunk: guard_config::RawTrunk,
    pub scanner: guard_config::RawScanner,
    pub jail: Vec<guard_config::RawJail>,
    pub store: RawStore,
}

/// `[guard.store]`: bans shared by every appliance through Redis (`crate::store`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    /// `redis://host:port/db`; "" works alone.
    pub redis: String,
    pub prefix: String,
    /// "" = the host name and the process id.
    pub node: String,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore { redis: String::new(), prefix: "sbc".into(), node: String::new() }
    }
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/sbc";

impl Default for RawGuard {
    fn default() -> Self {
        let g = guard_config::Raw::default();
        RawGuard {
            enabled: true,
            state_dir: DEFAULT_STATE_DIR.into(),
            ipv6_prefix_len: g.ipv6_prefix_len,
            ignore: g.ignore,
            max_sources: g.max_sources,
            max_tracked: g.max_tracked,
            max_bans: g.max_bans,
            recidive_memory_secs: g.recidive_memory_secs,
            domains: g.domains,
            xdp_rate_pps: 0,
            xdp_rate_burst: 0,
            xdp_listed_rate_pps: 0,
            xdp_listed_rate_burst: 0,
            rate: g.rate,
            trunk: g.trunk,
            scanner: g.scanner,
            jail: g.jail,
            store: RawStore::default(),
        }
    }
}

impl RawGuard {
    fn policy(&self) -> guard_config::Raw {
        guard_config::Raw {
            ipv6_prefix_len: self.ipv6_prefix_len,
            ignore: self.ignore.clone(),
            max_sources: self.max_sources,
            max_tracked: self.max_tracked,
            max_bans: self.max_bans,
            recidive_memory_secs: self.recidive_memory_secs,
            domains: self.domains.clone(),
            rate: self.rate.clone(),
            trunk: self.trunk.clone(),
            scanner: self.scanner.clone(),
            jail: self.jail.clone(),
        }
    }
}

/// Keeping UAs behind NAT reachable: the registration cache's short expiry and keepalive pings
/// (for the sides whose `nat` is on or force).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNat {
    /// Registration expiry granted to UAs behind NAT (their refreshes in between are answered
    /// by the SBC); 0 keeps the registrar's.
    pub register_expiry_secs: u64,
    /// OPTIONS pings to UAs behind NAT over UDP; 0 disables them.
    pub ping_interval_secs: u64,
    /// Unanswered pings in a row that end a registration.
    pub ping_failures: u64,
}
impl Default for RawNat {
    fn default() -> Self {
        RawNat { register_expiry_secs: 60, ping_interval_secs: 15, ping_failures: 3 }
    }
}

/// The STUN Binding server (RFC 8489) on the external side.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStun {
    /// Answer STUN on the external SIP UDP ports too (told apart from SIP by RFC 7983's rule):
    /// phones behind NAT learn their public address and keep their binding open (RFC 5626 §8.4).
    pub on_sip_udp: bool,
    /// Dedicated STUN listen addresses (UDP), e.g. "203.0.113.1:3478".
    pub udp: Vec<String>,
    /// Dedicated STUN listen addresses (TCP, RFC 8489 §6.2.2).
    pub tcp: Vec<String>,
    /// Threads serving the dedicated UDP ports (one SO_REUSEPORT socket each); 0: one per core.
    pub workers: u64,
    /// Requests per second one source may make on average (every STUN port together); 0: no limit.
    pub rate_per_sec: u64,
    /// Requests one source may make at once.
    pub rate_burst: u64,
    /// IPv4 sources are counted per prefix of this length.
    pub rate_ipv4_prefix: u64,
    /// IPv6 sources are counted per prefix of this length (a subscriber usually has a /64).
    pub rate_ipv6_prefix: u64,
    /// Most sources the rate limit tracks at once (memory bound under a spoofed flood).
    pub max_sources: u64,
    /// Open STUN TCP connections at most.
    pub tcp_max_connections: u64,
    /// A STUN TCP connection is closed when no whole message arrives for this long.
    pub tcp_idle_secs: u64,
}
impl Default for RawStun {
    fn default() -> Self {
        RawStun {
            on_sip_udp: true,
            udp: Vec::new(),
            tcp: Vec::new(),
            workers: 0,
            rate_per_sec: 100,
            rate_burst: 200,
            rate_ipv4_prefix: 32,
            rate_ipv6_prefix: 64,
            max_sources: 100_000,
            tcp_max_connections: 1000,
            tcp_idle_secs: 30,
        }
    }
}

/// The trunk side's provider allowlist and its XDP filter.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrunk {
    /// Allowlist file written by `sbc allowlist export`; absent: no trunk filtering.
    pub allowlist: Option<String>,
    /// Interface the XDP program attaches to; absent: userspace filtering only.
    pub interface: Option<String>,
    /// native | skb | auto
    pub xdp_mode: Option<String>,
    /// Protected destinations as "IP:port/udp" or "IP:port/tcp"; default: every external
    /// listen address.
    pub protected: Option<Vec<String>>,
    /// reject | replace | off: the caller-ID policy of `cli_allowed=N` providers.
    pub caller_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Unix socket for `sbc allowlist show|reload` and `sbc stats` (mode 0600).
    pub socket: String,
}
impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin { socket: DEFAULT_ADMIN_SOCKET.into() }
    }
}

pub const DEFAULT_ADMIN_SOCKET: &str = "/run/sbc/admin.sock";

/// The management listener: HTTP `GET /health` and `GET /metrics` (Prometheus), on an address
/// of its own, off the SIP sides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawManagement {
    /// "IP:port" to serve on; empty: no management listener.
    pub listen: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSide {
    #[serde(default)]
    pub udp: Vec<String>,
    #[serde(default)]
    pub tcp: Vec<String>,
    /// Host written in Via/Contact on this side; defaults to the first listen IP.
    pub advertise: Option<String>,
    pub hide_topology: Option<bool>,
    /// NAT handling for UAs on this side: "on" (detect), "off", "force".
    pub nat: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCore {
    /// Required; an `Option` so that its absence is a check with a path, like every other error.
    pub address: Option<String>,
    #[serde(default = "default_transport")]
    pub transport: String,
}

fn default_transport() -> String {
    "udp".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProbe {
    pub interval_ms: u64,
    pub timeout_ms: u64,
}
impl Default for RawProbe {
    fn default() -> Self {
        RawProbe { interval_ms: 5000, timeout_ms: 2000 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_message_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    pub max_transactions: usize,
    pub max_dialogs: usize,
    pub max_registrations: usize,
    pub max_tcp_connections: usize,
    pub tcp_idle_secs: u64,
}
impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_message_bytes: 16384,
            max_headers: 96,
            max_body_bytes: 12288,
            max_transactions: 200_000,
            max_dialogs: 100_000,
            max_registrations: 100_000,
            max_tcp_connections: 10_000,
            tcp_idle_secs: 900,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTopology {
    /// Secret keying Call-ID/tag masking; random per start when absent (masked values then
    /// do not survive a restart — neither do dialogs).
    pub secret: Option<String>,
    pub strip_headers: Vec<String>,
    /// Domains that may appear outside; every other host in an identity (From, Referred-By,
    /// P-Asserted-Identity) the core sends out becomes the SBC's.
    pub public_domains: Vec<String>,
    /// Remove Authorization / Proxy-Authorization from requests sent to the external side.
    pub strip_credentials: bool,
    pub dialog_idle_secs: u64,
}
impl Default for RawTopology {
    fn default() -> Self {
        RawTopology {
            secret: None,
            strip_headers: vec!["Server".into(), "User-Agent".into(), "Warning".into()],
            public_domains: Vec::new(),
            strip_credentials: true,
            dialog_idle_secs: 43200,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTimers {
    pub t1_ms: u64,
    pub t2_ms: u64,
    pub t4_ms: u64,
}
impl Default for RawTimers {
    fn default() -> Self {
        RawTimers { t1_ms: 500, t2_ms: 4000, t4_ms: 5000 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub level: String,
}
impl Default for RawLog {
    fn default() -> Self {
        RawLog { level: "info".into() }
    }
}

/// Listen addresses of one side, per transport.
#[derive(Debug, Clone)]
pub struct Listen {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
}

/// A configuration that passed validation.
#[derive(Debug, Clone)]
pub struct Validated {
    pub engine: EngineConfig,
    pub external: Listen,
    pub internal: Listen,
    pub max_tcp_connections: usize,
    pub tcp_idle: Duration,
    pub log_level: String,
    pub trunk: Trunk,
    pub admin_socket: std::path::PathBuf,
    /// Where `GET /health` and `GET /metrics` are served; None: nowhere.
    pub management: Option<SocketAddr>,
    pub stun: Stun,
    /// Media anchoring; None when `media.enabled` is false.
    pub media: Option<sbc_media::session::Config>,
    /// Relay worker threads (`media.workers`, 0 resolved to the cores).
    pub media_workers: usize,
    /// SIP engine shards, each on its own thread (`workers`, 0 resolved to the cores).
    pub workers: usize,
    /// None: `guard.enabled = false`.
    pub guard: Option<Guard>,
    /// When new work is refused with 503 (see `crate::pressure`).
    pub overload: crate::pressure::Config,
}

/// The guard's validated settings.
#[derive(Debug, Clone)]
pub struct Guard {
    pub config: sbc_policy::guard::Config,
    /// None: bans are kept in memory only.
    pub state_dir: Option<std::path::PathBuf>,
    /// None: no store, the appliance works alone.
    pub store: Option<crate::store::Config>,
}

/// Where the STUN Binding server answers, and its bounds.
#[derive(Debug, Clone)]
pub struct Stun {
    pub on_sip_udp: bool,
    /// Dedicated STUN UDP listen addresses (external side; STUN only).
    pub udp: Vec<SocketAddr>,
    /// Dedicated STUN TCP listen addresses.
    pub tcp: Vec<SocketAddr>,
    /// Worker threads for the dedicated UDP ports (resolved: at least 1).
    pub workers: usize,
    /// The per-source rate; `None`: no limit.
    pub rate: Option<Rate>,
    pub prefixes: SourcePrefixes,
    pub max_sources: usize,
    pub tcp_max_connections: u64,
    pub tcp_idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Skb,
    Auto,
}

/// `[trunk] caller_id`: what to do with the core's new call to a `cli_allowed=N` provider whose
/// caller ID is not the provider's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerIdMode {
    /// 403 to the core; nothing is sent to the provider.
    Reject,
    /// The user part of From and of every P-Asserted-Identity becomes the provider's number.
    Replace,
    /// No check.
    Off,
}

#[derive(Debug, Clone)]
pub struct Trunk {
    pub allowlist: Option<std::path::PathBuf>,
    pub interface: Option<String>,
    pub xdp_mode: XdpMode,
    /// (address, is_tcp)
    pub protected: Vec<(SocketAddr, bool)>,
    /// The external side's SIP listen ports, (port, is_tcp): where the XDP rate limit applies.
    pub sip_ports: Vec<(u16, bool)>,
    /// The per-source packet-rate limit in XDP (`[guard] xdp_rate_*`); None: off.
    pub xdp_rate: Option<XdpRate>,
    pub caller_id: CallerIdMode,
}

/// The XDP per-source packet-rate limit, validated: a token bucket per source (IPv6 per
/// `ipv6_prefix_len`), `burst` packets at once, then `pps` per second; allowlisted sources on
/// the protected ports with their own, higher, `listed_*` limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpRate {
    pub pps: u32,
    pub burst: u32,
    pub listed_pps: u32,
    pub listed_burst: u32,
    pub ipv6_prefix_len: u8,
}

/// Highest `xdp_*rate_pps` accepted.
pub const MAX_XDP_RATE_PPS: u64 = 10_000_000;
/// Highest `xdp_*rate_burst` accepted.
pub const MAX_XDP_RATE_BURST: u64 = 1_000_000;

/// `[guard] xdp_rate_*`: None when `xdp_rate_pps` is 0 (the default).
fn xdp_rate(raw: &RawGuard, trunk: &Trunk, errs: &mut Checks<'_>) -> Option<XdpRate> {
    let keys = [
        ("guard.xdp_rate_pps", raw.xdp_rate_pps, MAX_XDP_RATE_PPS),
        ("guard.xdp_rate_burst", raw.xdp_rate_burst, MAX_XDP_RATE_BURST),
        ("guard.xdp_listed_rate_pps", raw.xdp_listed_rate_pps, MAX_XDP_RATE_PPS),
        ("guard.xdp_listed_rate_burst", raw.xdp_listed_rate_burst, MAX_XDP_RATE_BURST),
    ];
    for (path, v, hi) in keys {
        range(errs, path, v, 0, hi);
    }
    if raw.xdp_rate_pps == 0 {
        for (path, v, _) in &keys[1..] {
            if *v != 0 {
                errs.error_from(*path, &["guard.xdp_rate_pps"], "set without guard.xdp_rate_pps (the limit is off)");
            }
        }
        return None;
    }
    if trunk.interface.is_none() {
        errs.error_from(
            "guard.xdp_rate_pps",
            &["trunk.interface"],
            "a rate limit in XDP needs trunk.interface (and trunk.allowlist)",
        );
    }
    let pps = raw.xdp_rate_pps.min(MAX_XDP_RATE_PPS);
    let burst = if raw.xdp_rate_burst == 0 { pps } else { raw.xdp_rate_burst }.min(MAX_XDP_RATE_BURST);
    let listed_pps = if raw.xdp_listed_rate_pps == 0 { pps * 10 } else { raw.xdp_listed_rate_pps };
    let listed_burst = if raw.xdp_listed_rate_burst == 0 { burst * 10 } else { raw.xdp_listed_rate_burst };
    if listed_pps < pps {
        errs.error_from(
            "guard.xdp_listed_rate_pps",
            &["guard.xdp_rate_pps"],
            format!("{listed_pps} is below xdp_rate_pps ({pps}): listed providers get the higher limit"),
        );
    }
    if listed_burst < burst {
        errs.error_from(
            "guard.xdp_listed_rate_burst",
            &["guard.xdp_rate_burst"],
            format!("{listed_burst} is below the unlisted burst ({burst})"),
        );
    }
    let u = |v: u64, hi: u64| u32::try_from(v.min(hi)).unwrap_or(u32::MAX);
    Some(XdpRate {
        pps: u(pps, MAX_XDP_RATE_PPS),
        burst: u(burst, MAX_XDP_RATE_BURST),
        listed_pps: u(listed_pps, MAX_XDP_RATE_PPS),
        listed_burst: u(listed_burst, MAX_XDP_RATE_BURST),
        ipv6_prefix_len: u8::try_from(raw.ipv6_prefix_len).unwrap_or(64),
    })
}

/// Every problem found, each with its path and (when in the file) its line, in line order.
#[derive(Debug)]
pub struct Errors(pub Vec<Problem>);

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}
impl std::error::Error for Errors {}

pub fn load(path: Option<&Path>) -> Result<Validated, Errors> {
    let text = match path {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| Errors(vec![Problem::file(format!("{}: {e}", p.display()))]))?
        }
        None => DEFAULT.to_string(),
    };
    parse(&text)
}

pub fn parse(text: &str) -> Result<Validated, Errors> {
    let doc = Document::parse(text).map_err(|p| Errors(vec![p]))?;
    let raw = doc.deserialize::<Raw>();
    let mut problems = raw.problems;
    if let Some(value) = raw.value {
        match validate(value, &raw.refused) {
            Ok(validated) if problems.is_empty() => return Ok(validated),
            Ok(_) => {}
            Err(found) => problems.extend(found.into_iter().map(|(path, message)| doc.problem(path, message))),
        }
    }
    problems.sort_by_key(|p| (p.line.is_none(), p.line));
    Err(Errors(problems))
}

/// The problems the checks of [`validate`] find, as (path, message).
struct Checks<'a> {
    found: Vec<(String, String)>,
    /// Keys refused by the parse stage: their defaults stand in, and are not judged.
    refused: &'a [String],
}

impl Checks<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.error_from(path, &[], message);
    }

    /// An error at `path` from a check that also reads the keys `inputs`.
    fn error_from(&mut self, path: impl Into<String>, inputs: &[&str], message: impl Into<String>) {
        let path = path.into();
        if !std::iter::once(path.as_str()).chain(inputs.iter().copied()).any(|p| self.is_refused(p)) {
            self.found.push((path, message.into()));
        }
    }

    /// `path` is a refused key or lies inside one.
    fn is_refused(&self, path: &str) -> bool {
        self.refused
            .iter()
            .any(|r| path.strip_prefix(r.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '['])))
    }
}

fn addrs(path: &str, list: &[String], errs: &mut Checks<'_>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for (i, a) in list.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(sa) if sa.port() == 0 => errs.error(format!("{path}[{i}]"), "port 0 is not allowed"),
            Ok(sa) => out.push(sa),
            Err(_) => errs.error(format!("{path}[{i}]"), bad_address(a)),
        }
    }
    out
}

/// Why `a` is not an IP:port address, naming an out-of-range port.
fn bad_address(a: &str) -> String {
    let port = a.rsplit_once(':').filter(|(ip, _)| ip.trim_matches(['[', ']']).parse::<IpAddr>().is_ok());
    match port.and_then(|(_, p)| p.parse::<u64>().ok()) {
        Some(p) if p > 65535 => format!("port {p} out of range 1..=65535"),
        _ => format!("{a:?} is not an IP:port address"),
    }
}

fn side(
    name: &str,
    raw: &RawSide,
    (hide_default, nat_default): (bool, NatMode),
    errs: &mut Checks<'_>,
) -> (SideConfig, Listen) {
    let (udp_path, tcp_path) = (format!("{name}.udp"), format!("{name}.tcp"));
    let udp = addrs(&udp_path, &raw.udp, errs);
    let tcp = addrs(&tcp_path, &raw.tcp, errs);
    if raw.udp.is_empty() && raw.tcp.is_empty() {
        errs.error_from(name, &[&udp_path, &tcp_path], "at least one udp or tcp listen address is required");
    }
    let first_ip: Option<IpAddr> = udp.first().or(tcp.first()).map(SocketAddr::ip);
    let advertise = match (&raw.advertise, first_ip) {
        (Some(a), _) if a.is_empty() || a.chars().any(|c| c.is_whitespace() || c == '<' || c == '>') => {
            errs.error(format!("{name}.advertise"), format!("{a:?} is not a host name or address"));
            String::new()
        }
        (Some(a), _) => a.clone(),
        (None, Some(ip)) if ip.is_unspecified() => {
            errs.error_from(
                format!("{name}.advertise"),
                &[&udp_path, &tcp_path],
                format!("required when listening on {ip} (which address should peers use?)"),
            );
            String::new()
        }
        (None, Some(ip)) => ip.to_string(),
        (None, None) => String::new(),
    };
    // An IP address to advertise is written on flows of its family only; a flow of the other
    // family writes its own listen address, which must then be one (not `::` or `0.0.0.0`).
    if let Ok(adv) = advertise.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>()
        && let Some(any) =
            udp.iter().chain(tcp.iter()).find(|a| a.is_ipv4() != adv.is_ipv4() && a.ip().is_unspecified())
    {
        errs.error_from(
            format!("{name}.advertise"),
            &[&udp_path, &tcp_path],
            format!(
                "{adv} is an {} address: the listen address {any} needs a host name to advertise, or a specific address",
                if adv.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
        );
    }
    (
        SideConfig {
            advertise,
            udp: udp.clone(),
            tcp: tcp.clone(),
            hide: raw.hide_topology.unwrap_or(hide_default),
            nat: match raw.nat.as_deref() {
                None => nat_default,
                Some("on") => NatMode::On,
                Some("off") => NatMode::Off,
                Some("force") => NatMode::Force,
                Some(other) => {
                    errs.error(format!("{name}.nat"), format!("{other:?} is not one of on, off, force"));
                    nat_default
                }
            },
        },
        Listen { udp, tcp },
    )
}

/// TCP listen addresses of the two sides that cannot both be bound: the same port on the same
/// address, or on any address of the family where either is unspecified (a listening
/// `0.0.0.0:5060` outside takes `127.0.0.2:5060` inside too: Linux refuses the second listener
/// even with SO_REUSEADDR, and the daemon would fail to start). UDP sockets with SO_REUSEADDR may
/// share a port this way (the more specific address gets its datagrams), and the same address
/// twice is already refused by the bind itself.
fn overlapping_listens(ext: &Listen, int: &Listen, errs: &mut Checks<'_>) {
    let clash = |a: &SocketAddr, b: &SocketAddr| {
        a.port() == b.port()
            && a.is_ipv4() == b.is_ipv4()
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    for (proto, ext, int) in [("tcp", &ext.tcp, &int.tcp)] {
        for (i, b) in int.iter().enumerate() {
            if let Some(a) = ext.iter().find(|a| clash(a, b)) {
                errs.error_from(
                    format!("internal.{proto}[{i}]"),
                    &[&format!("external.{proto}")],
                    format!("{b} overlaps the external side's {a} (one port, one socket)"),
                );
            }
        }
    }
}

/// `management.listen`: an IP:port that no SIP or STUN TCP listener holds (the same port on the
/// same address, or on any address of the family where either is unspecified).
fn management(raw: &RawManagement, taken: &[&Vec<SocketAddr>], errs: &mut Checks<'_>) -> Option<SocketAddr> {
    if raw.listen.is_empty() {
        return None;
    }
    let a = match raw.listen.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => {
            errs.error("management.listen", "port 0 is not allowed");
            return None;
        }
        Ok(a) => a,
        Err(_) => {
            errs.error("management.listen", bad_address(&raw.listen));
            return None;
        }
    };
    let clash = |b: &SocketAddr| {
        a.port() == b.port()
            && a.is_ipv4() == b.is_ipv4()
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    if let Some(b) = taken.iter().flat_map(|l| l.iter()).find(|b| clash(b)) {
        errs.error("management.listen", format!("{a} overlaps the SIP or STUN TCP listener {b}"));
        return None;
    }
    Some(a)
}

fn range(errs: &mut Checks<'_>, path: &str, v: u64, lo: u64, hi: u64) {
    if v < lo || v > hi {
        errs.error(path, format!("{v} out of range {lo}..={hi}"));
    }
}

/// The checks: every problem of `raw`, as (path, message); `refused` lists the keys the parse
/// stage refused (see [`Checks`]).
fn validate(raw: Raw, refused: &[String]) -> Result<Validated, Vec<(String, String)>> {
    let mut errs = Checks { found: Vec::new(), refused };
    range(&mut errs, "engine.workers", raw.engine.workers, 0, sbc_proto::topology::shard::MAX_SHARDS as u64);
    let (external, ext_listen) = side("external", &raw.external, (true, NatMode::On), &mut errs);
    let (internal, int_listen) = side("internal", &raw.internal, (false, NatMode::Off), &mut errs);
    overlapping_listens(&ext_listen, &int_listen, &mut errs);
    if raw.core.is_empty() {
        errs.error("core", "at least one [[core]] target is required");
    }
    let mut cores = Vec::new();
    for (i, c) in raw.core.iter().enumerate() {
        let transport = match c.transport.to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            other => {
                errs.error(format!("core[{i}].transport"), format!("{other:?} is not supported (udp, tcp)"));
                None
            }
        };
        if let Some(t) = transport
            && internal.listen(t).is_empty()
        {
            let listen = format!("internal.{}", t.as_str());
            errs.error_from(
                format!("core[{i}].transport"),
                &[&listen],
                format!("the internal side has no {} listen address", t.as_str()),
            );
        }
        let Some(address) = &c.address else {
            errs.error(format!("core[{i}].address"), "required (IP:port)");
            continue;
        };
        match (address.parse::<SocketAddr>(), transport) {
            (Ok(addr), Some(transport)) => {
                if !internal.listen(transport).is_empty() && internal.local_for(transport, addr).is_none() {
                    let (family, listen) =
                        (if addr.is_ipv4() { "IPv4" } else { "IPv6" }, format!("internal.{}", transport.as_str()));
                    errs.error_from(
                        format!("core[{i}].address"),
                        &[&listen],
                        format!(
                            "the internal side has no {family} {} listen address to reach it from",
                            transport.as_str()
                        ),
                    );
                }
                cores.push(CoreTarget { addr, transport })
            }
            (Err(_), _) => errs.error(format!("core[{i}].address"), bad_address(address)),
            _ => {}
        }
    }
    let stun_udp = addrs("stun.udp", &raw.stun.udp, &mut errs);
    for (i, a) in stun_udp.iter().enumerate() {
        if ext_listen.udp.contains(a) || int_listen.udp.contains(a) {
            errs.error(format!("stun.udp[{i}]"), format!("{a} is already a SIP listen address (use stun.on_sip_udp)"));
        }
    }
    let stun_tcp = addrs("stun.tcp", &raw.stun.tcp, &mut errs);
    for (i, a) in stun_tcp.iter().enumerate() {
        if ext_listen.tcp.contains(a) || int_listen.tcp.contains(a) {
            errs.error(format!("stun.tcp[{i}]"), format!("{a} is already a SIP listen address"));
        }
    }
    let stun = stun_config(&raw.stun, stun_udp, stun_tcp, &mut errs);
    let media = media(&raw.media, &ext_listen, &int_listen, &mut errs);
    let l = &raw.limits;
    range(&mut errs, "limits.max_message_bytes", l.max_message_bytes as u64, 512, 65535);
    range(&mut errs, "limits.max_headers", l.max_headers as u64, 16, 1024);
    range(&mut errs, "limits.max_body_bytes", l.max_body_bytes as u64, 0, 65535);
    if l.max_body_bytes > l.max_message_bytes {
        errs.error_from(
            "limits.max_body_bytes",
            &["limits.max_message_bytes"],
            format!("{} exceeds limits.max_message_bytes {}", l.max_body_bytes, l.max_message_bytes),
        );
    }
    range(&mut errs, "limits.max_transactions", l.max_transactions as u64, 1, 10_000_000);
    range(&mut errs, "limits.max_dialogs", l.max_dialogs as u64, 1, 10_000_000);
    range(&mut errs, "limits.max_registrations", l.max_registrations as u64, 1, 10_000_000);
    range(&mut errs, "limits.max_tcp_connections", l.max_tcp_connections as u64, 1, 1_000_000);
    range(&mut errs, "limits.tcp_idle_secs", l.tcp_idle_secs, 10, 86400);
    let p = &raw.probe;
    if p.interval_ms != 0 {
        range(&mut errs, "probe.interval_ms", p.interval_ms, 100, 3_600_000);
    }
    range(&mut errs, "probe.timeout_ms", p.timeout_ms, 50, 60_000);
    let t = &raw.timers;
    range(&mut errs, "timers.t1_ms", t.t1_ms, 50, 5000);
    if !errs.is_refused("timers.t1_ms") {
        range(&mut errs, "timers.t2_ms", t.t2_ms, t.t1_ms.max(50), 60_000);
    }
    range(&mut errs, "timers.t4_ms", t.t4_ms, 100, 60_000);
    range(&mut errs, "topology.dialog_idle_secs", raw.topology.dialog_idle_secs, 60, 7 * 86400);
    let n = &raw.nat;
    if n.register_expiry_secs != 0 {
        range(&mut errs, "nat.register_expiry_secs", n.register_expiry_secs, 20, 86400);
    }
    if n.ping_interval_secs != 0 {
        range(&mut errs, "nat.ping_interval_secs", n.ping_interval_secs, 2, 3600);
    }
    range(&mut errs, "nat.ping_failures", n.ping_failures, 1, 100);
    if let Some(s) = &raw.topology.secret
        && s.len() < 16
    {
        errs.error("topology.secret", "use at least 16 characters");
    }
    for (i, h) in raw.topology.strip_headers.iter().enumerate() {
        if h.is_empty() || !h.bytes().all(sbc_proto::sip::message::is_token_char) {
            errs.error(format!("topology.strip_headers[{i}]"), format!("{h:?} is not a header name"));
        }
    }
    let mut trunk = trunk(&raw.trunk, &ext_listen, &mut errs);
    if raw.admin.socket.is_empty() || !raw.admin.socket.starts_with('/') {
        errs.error("admin.socket", format!("{:?} must be an absolute path", raw.admin.socket));
    }
    let management = management(&raw.management, &[&ext_listen.tcp, &int_listen.tcp, &stun.tcp], &mut errs);
    let guard = match guard_config::validate(&raw.guard.policy(), "guard") {
        Ok(config) => Some(config),
        Err(found) => {
            for (path, message) in found {
                errs.error(path, message);
            }
            None
        }
    };
    let state_dir = raw.guard.state_dir.as_str();
    if !state_dir.is_empty() && !state_dir.starts_with('/') {
        errs.error("guard.state_dir", format!("{state_dir:?} must be an absolute path (or \"\" for none)"));
    }
    let store = store(&raw.guard.store, &mut errs);
    let rate = xdp_rate(&raw.guard, &trunk, &mut errs);
    trunk.xdp_rate = rate.filter(|_| raw.guard.enabled);
    let guard = guard.filter(|_| raw.guard.enabled).map(|config| Guard {
        config,
        state_dir: (!state_dir.is_empty()).then(|| state_dir.into()),
        store,
    });
    let overload = match crate::pressure::validate(&raw.overload) {
        Ok(o) => Some(o),
        Err(found) => {
            for (path, message) in found {
                errs.error(path, message);
            }
            None
        }
    };
    if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
        errs.error("log.level", format!("{:?} is not a tracing filter", raw.log.level));
    }
    if !errs.found.is_empty() {
        return Err(errs.found);
    }
    let secret = match &raw.topology.secret {
        Some(s) => s.as_bytes().to_vec(),
        None => random_u64().to_le_bytes().iter().chain(random_u64().to_le_bytes().iter()).copied().collect(),
    };
    let engine = EngineConfig {
        external,
        internal,
        cores,
        probe_interval: (p.interval_ms > 0).then(|| Duration::from_millis(p.interval_ms)),
        probe_timeout: Duration::from_millis(p.timeout_ms),
        limits: Limits {
            max_message_bytes: l.max_message_bytes,
            max_headers: l.max_headers,
            max_body_bytes: l.max_body_bytes,
        },
        max_transactions: l.max_transactions,
        max_dialogs: l.max_dialogs,
        max_registrations: l.max_registrations,
        nat: NatConfig {
            register_expiry: (n.register_expiry_secs > 0).then(|| Duration::from_secs(n.register_expiry_secs)),
            ping_interval: (n.ping_interval_secs > 0).then(|| Duration::from_secs(n.ping_interval_secs)),
            ping_failures: u32::try_from(n.ping_failures).unwrap_or(3),
        },
        secret,
        strip_headers: raw.topology.strip_headers,
        public_domains: raw.topology.public_domains,
        strip_credentials: raw.topology.strip_credentials,
        dialog_idle: Duration::from_secs(raw.topology.dialog_idle_secs),
        timers: Timers {
            t1: Duration::from_millis(t.t1_ms),
            t2: Duration::from_millis(t.t2_ms),
            t4: Duration::from_millis(t.t4_ms),
        },
        seed: random_u64(),
        shard: sbc_proto::engine::Shard::default(),
    };
    // A request for the SBC itself (an address or advertised name of its external side) is
    // never for an unknown domain.
    let mut guard = guard;
    if let Some(g) = guard.as_mut() {
        let e = &engine.external;
        let own = e.udp.iter().chain(&e.tcp).map(|a| a.ip().to_string()).chain([e.advertise.clone()]);
        g.config.serve_own(own);
    }
    Ok(Validated {
        engine,
        external: ext_listen,
        internal: int_listen,
        max_tcp_connections: l.max_tcp_connections,
        tcp_idle: Duration::from_secs(l.tcp_idle_secs),
        log_level: raw.log.level,
        trunk,
        admin_socket: raw.admin.socket.into(),
        management,
        stun,
        media,
        media_workers: match raw.media.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => usize::try_from(n).unwrap_or(1),
        },
        workers: match raw.engine.workers {
            0 => std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(sbc_proto::topology::shard::MAX_SHARDS),
            n => usize::try_from(n).unwrap_or(1),
        },
        guard,
        // Its errors were reported above.
        overload: overload.ok_or_else(|| vec![("overload".to_string(), "invalid".to_string())])?,
    })
}

/// `[media]`: checked whether enabled or not; a session config only when enabled.
fn media(raw: &RawMedia, ext: &Listen, int: &Listen, errs: &mut Checks<'_>) -> Option<sbc_media::session::Config> {
    use sbc_media::session::{Config, LatchConfig, PerSide};
    let ports = raw
        .ports
        .split_once('-')
        .and_then(|(l, h)| Some((l.trim().parse::<u16>().ok()?, h.trim().parse::<u16>().ok()?)));
    match ports {
        Some((l, h)) if l >= 1024 && h >= l.saturating_add(3) => {}
        _ => errs.error(
            "media.ports",
            format!("{:?} is not LOW-HIGH within 1024..=65535 holding at least 2 port pairs", raw.ports),
        ),
    }
    range(errs, "media.max_calls", raw.max_calls, 1, 1_000_000);
    range(errs, "media.max_streams_per_call", raw.max_streams_per_call, 1, 16);
    range(errs, "media.idle_secs", raw.idle_secs, 10, 86400);
    range(errs, "media.workers", raw.workers, 0, 256);
    let mut address = |key: &str, given: &Option<String>, listen: &Listen| -> Option<std::net::IpAddr> {
        let path = format!("media.{key}");
        match given {
            Some(a) => match a.parse::<std::net::IpAddr>() {
                Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => Some(ip),
                _ => {
                    errs.error(path, format!("{a:?} is not a unicast IP address"));
                    None
                }
            },
            None => {
                let first = listen.udp.iter().chain(listen.tcp.iter()).map(|a| a.ip()).find(|ip| !ip.is_unspecified());
                if first.is_none() && raw.enabled {
                    errs.error(path, "required when media.enabled and the side listens on an unspecified address");
                }
                first
            }
        }
    };
    let external = address("external_ip", &raw.external_ip, ext);
    let internal = address("internal_ip", &raw.internal_ip, int);
    if !raw.enabled {
        return None;
    }
    Some(Config {
        address: PerSide { external: external?, internal: internal? },
        ports: ports?,
        max_sessions: usize::try_from(raw.max_calls).ok()?,
        max_streams: usize::try_from(raw.max_streams_per_call).ok()?,
        trust_private: PerSide { external: false, internal: true },
        is_private: sbc_proto::nat::is_private,
        latch: LatchConfig::default(),
        idle: Duration::from_secs(raw.idle_secs),
        sdp_limits: sbc_media::sdp::Limits::default(),
        origin_seed: random_u64(),
    })
}

fn stun_config(raw: &RawStun, udp: Vec<SocketAddr>, tcp: Vec<SocketAddr>, errs: &mut Checks<'_>) -> Stun {
    range(errs, "stun.workers", raw.workers, 0, 256);
    range(errs, "stun.rate_per_sec", raw.rate_per_sec, 0, 100_000_000);
    range(errs, "stun.rate_burst", raw.rate_burst, 1, 100_000_000);
    range(errs, "stun.rate_ipv4_prefix", raw.rate_ipv4_prefix, 1, 32);
    range(errs, "stun.rate_ipv6_prefix", raw.rate_ipv6_prefix, 1, 128);
    range(errs, "stun.max_sources", raw.max_sources, 8, 10_000_000);
    range(errs, "stun.tcp_max_connections", raw.tcp_max_connections, 1, 1_000_000);
    range(errs, "stun.tcp_idle_secs", raw.tcp_idle_secs, 1, 3600);
    let workers = match raw.workers {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        n => n as usize,
    };
    let to_u32 = |v: u64| std::num::NonZeroU32::new(u32::try_from(v).unwrap_or(u32::MAX));
    let rate = match (to_u32(raw.rate_per_sec), to_u32(raw.rate_burst)) {
        (Some(per_second), Some(burst)) => Some(Rate { per_second, burst }),
        _ => None,
    };
    Stun {
        on_sip_udp: raw.on_sip_udp,
        udp,
        tcp,
        workers,
        rate,
        prefixes: SourcePrefixes {
            ipv4: u8::try_from(raw.rate_ipv4_prefix).unwrap_or(32),
            ipv6: u8::try_from(raw.rate_ipv6_prefix).unwrap_or(64),
        },
        max_sources: usize::try_from(raw.max_sources).unwrap_or(usize::MAX),
        tcp_max_connections: raw.tcp_max_connections,
        tcp_idle: Duration::from_secs(raw.tcp_idle_secs),
    }
}

fn trunk(raw: &RawTrunk, ext: &Listen, errs: &mut Checks<'_>) -> Trunk {
    let xdp_mode = match raw.xdp_mode.as_deref().unwrap_or("auto") {
        "native" => XdpMode::Native,
        "skb" => XdpMode::Skb,
        "auto" => XdpMode::Auto,
        other => {
            errs.error("trunk.xdp_mode", format!("{other:?} is not one of native, skb, auto"));
            XdpMode::Auto
        }
    };
    let caller_id = match raw.caller_id.as_deref().unwrap_or("reject") {
        "reject" => CallerIdMode::Reject,
        "off" => CallerIdMode::Off,
        "replace" => CallerIdMode::Replace,
        other => {
            errs.error("trunk.caller_id", format!("{other:?} is not one of reject, replace, off"));
            CallerIdMode::Reject
        }
    };
    if let Some(i) = &raw.interface
        && (i.is_empty() || i.len() > 15 || i.contains('/') || i.chars().any(char::is_whitespace))
    {
        errs.error("trunk.interface", format!("{i:?} is not an interface name"));
    }
    if raw.interface.is_some() && raw.allowlist.is_none() {
        errs.error_from("trunk.interface", &["trunk.allowlist"], "an XDP filter needs trunk.allowlist");
    }
    let protected = match &raw.protected {
        Some(list) => {
            let mut out = Vec::new();
            for (i, p) in list.iter().enumerate() {
                let parsed = p.rsplit_once('/').and_then(|(a, t)| {
                    let tcp = match t.to_ascii_lowercase().as_str() {
                        "udp" => false,
                        "tcp" => true,
                        _ => return None,
                    };
                    a.parse::<SocketAddr>().ok().map(|a| (a, tcp))
                });
                match parsed {
                    Some(x) => out.push(x),
                    None => {
                        errs.error(format!("trunk.protected[{i}]"), format!("{p:?} is not IP:port/udp or IP:port/tcp"))
                    }
                }
            }
            out
        }
        None => ext.udp.iter().map(|a| (*a, false)).chain(ext.tcp.iter().map(|a| (*a, true))).collect(),
    };
    let mut sip_ports: Vec<(u16, bool)> =
        ext.udp.iter().map(|a| (a.port(), false)).chain(ext.tcp.iter().map(|a| (a.port(), true))).collect();
    sip_ports.sort_unstable();
    sip_ports.dedup();
    Trunk {
        allowlist: raw.allowlist.as_ref().map(Into::into),
        interface: raw.interface.clone(),
        xdp_mode,
        protected,
        sip_ports,
        xdp_rate: None,
        caller_id,
    }
}

/// `[guard.store]`: None without `redis`.
fn store(raw: &RawStore, errs: &mut Checks<'_>) -> Option<crate::store::Config> {
    let name_ok = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-:".contains(&b))
    };
    if !name_ok(&raw.prefix) {
        errs.error("guard.store.prefix", format!("{:?}: 1 to 64 of A-Z a-z 0-9 _ . - :", raw.prefix));
    }
    if !raw.node.is_empty() && !name_ok(&raw.node) {
        errs.error("guard.store.node", format!("{:?}: 1 to 64 of A-Z a-z 0-9 _ . - :", raw.node));
    }
    if raw.redis.is_empty() {
        return None;
    }
    // No `rediss://`: the client is built without TLS (a store is reached on a trusted network).
    let schemes = ["redis://", "unix://", "redis+unix://"];
    if !schemes.iter().any(|s| raw.redis.starts_with(s)) || redis::Client::open(raw.redis.as_str()).is_err() {
        errs.error(
            "guard.store.redis",
            "not a redis:// (or unix://) URL; TLS (rediss://) is not supported".to_string(),
        );
        return None;
    }
    let node = if raw.node.is_empty() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String =
            host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c)).take(40).collect();
        format!("{}-{}", if host.is_empty() { "sbc" } else { &host }, std::process::id())
    } else {
        raw.node.clone()
    };
    Some(crate::store::Config { url: raw.redis.clone(), prefix: raw.prefix.clone(), node })
}

/// OS-seeded randomness from std (RandomState is keyed from the OS at first use).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        parse(DEFAULT).unwrap();
    }

    #[test]
    fn every_file_in_config_dir_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                load(Some(&p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 1);
    }

    /// The appliance image's config and its placeholder allowlist (rootfs/overlay): the daemon
    /// on the image refuses to start on either if it does not parse.
    #[test]
    fn the_appliance_config_and_its_placeholder_allowlist_are_valid() {
        let overlay = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rootfs/overlay");
        let v = load(Some(&overlay.join("etc/sbc/sbc.toml"))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.management, Some("0.0.0.0:9090".parse().unwrap()));
        assert_eq!(v.trunk.interface.as_deref(), Some("eth0"));
        let text = std::fs::read_to_string(overlay.join("usr/share/sbc/allowlist.empty")).unwrap();
        let list = sbc_policy::allowlist::Allowlist::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(list.len(), 1, "one TEST-NET-1 placeholder");
    }

    #[test]
    fn all_errors_are_reported_with_paths() {
        let text = r#"
[external]
udp = ["203.0.113.1:5060", "nonsense", "0.0.0.0:0"]
[internal]
tcp = ["10.0.0.1:5060"]
[[core]]
address = "10.0.0.2:5060"
transport = "sctp"
[[core]]
address = "10.0.0.3:5060"
transport = "udp"
[limits]
max_message_bytes = 70000
"#;
        let errs: Vec<String> =
            parse(text).unwrap_err().0.iter().map(|p| format!("{}: {}", p.path, p.message)).collect();
        let want = [
            "external.udp[1]: \"nonsense\" is not an IP:port address",
            "external.udp[2]: port 0 is not allowed",
            "core[0].transport: \"sctp\" is not supported (udp, tcp)",
            "core[1].transport: the internal side has no udp listen address",
            "limits.max_message_bytes: 70000 out of range 512..=65535",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e == w), "missing {w:?} in {errs:#?}");
        }
    }

    #[test]
    fn stun_ports_are_parsed_and_may_not_be_sip_listen_addresses() {
        let base = "[external]\nudp=[\"127.0.0.1:5060\"]\n[internal]\nudp=[\"127.0.0.2:5060\"]\n[[core]]\naddress=\"127.0.0.3:5080\"\n";
        let v = parse(&format!("{base}[stun]\nudp=[\"127.0.0.1:3478\"]\n")).unwrap();
        assert_eq!(v.stun.udp, vec!["127.0.0.1:3478".parse::<SocketAddr>().unwrap()]);
        assert!(v.stun.on_sip_udp, "on by default");
        let e = parse(&format!("{base}[stun]\nudp=[\"127.0.0.1:5060\", \"nonsense\"]\n")).unwrap_err().to_string();
        assert!(e.contains("stun.udp[0]") && e.contains("already a SIP listen address"), "{e}");
        assert!(e.contains("stun.udp[1]"), "{e}");
    }

    #[test]
    fn engine_workers_default_to_the_cores_and_are_ranged() {
        let base = "[external]\nudp=[\"127.0.0.1:5060\"]\n[internal]\nudp=[\"127.0.0.2:5060\"]\n\
                    [[core]]\naddress=\"127.0.0.3:5080\"\n";
        assert_eq!(parse(&format!("{base}[engine]\nworkers = 3\n")).unwrap().workers, 3);
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(parse(base).unwrap().workers, cores.min(64));
        let e = lines(&format!("{base}[engine]\nworkers = 65\n"));
        assert!(e.iter().any(|l| l.contains("engine.workers: 65 out of range 0..=64")), "{e:?}");
    }

    #[test]
    fn stun_tcp_workers_and_rate_limit_are_parsed_and_ranged() {
        let base = "[external]\nudp=[\"127.0.0.1:5060\"]\ntcp=[\"127.0.0.1:5060\"]\n[internal]\nudp=[\"127.0.0.2:5060\"]\n\
                    [[core]]\naddress=\"127.0.0.3:5080\"\n";
        let v = parse(&format!(
            "{base}[stun]\ntcp=[\"127.0.0.1:3478\"]\nworkers=3\nrate_per_sec=5\nrate_burst=7\nrate_ipv6_prefix=56\n"
        ))
        .unwrap();
        assert_eq!(v.stun.tcp, vec!["127.0.0.1:3478".parse::<SocketAddr>().unwrap()]);
        assert_eq!(v.stun.workers, 3);
        let rate = v.stun.rate.unwrap();
        assert_eq!((rate.per_second.get(), rate.burst.get()), (5, 7));
        assert_eq!(v.stun.prefixes, SourcePrefixes { ipv4: 32, ipv6: 56 });
        // Defaults: one worker per core, a rate limit on.
        let d = parse(base).unwrap();
        assert!(d.stun.workers >= 1 && d.stun.rate.is_some());
        assert!(parse(&format!("{base}[stun]\nrate_per_sec=0\n")).unwrap().stun.rate.is_none(), "0 turns it off");
        let e = lines(&format!(
            "{base}[stun]\ntcp=[\"127.0.0.1:5060\"]\nworkers=1000\nrate_ipv6_prefix=129\nmax_sources=2\ntcp_idle_secs=0\n"
        ));
        for want in [
            "stun.tcp[0]: 127.0.0.1:5060 is already a SIP listen address",
            "stun.workers: 1000 out of range 0..=256",
            "stun.rate_ipv6_prefix: 129 out of range 1..=128",
            "stun.max_sources: 2 out of range 8..=10000000",
            "stun.tcp_idle_secs: 0 out of range 1..=3600",
        ] {
            assert!(e.iter().any(|l| l.ends_with(want)), "missing {want:?} in {e:#?}");
        }
    }

    #[test]
    fn media_is_off_by_default_and_its_keys_are_checked_even_then() {
        let base = "[external]\nudp=[\"203.0.113.1:5060\"]\n[internal]\nudp=[\"10.1.0.1:5060\"]\n[[core]]\naddress=\"10.0.0.5:5060\"\n";
        assert!(parse(base).unwrap().media.is_none());
        let v = parse(&format!("{base}[media]\nenabled=true\nports=\"40000-40099\"\n")).unwrap();
        let m = v.media.unwrap();
        assert_eq!(m.ports, (40000, 40099));
        assert_eq!(
            (m.address.external.to_string(), m.address.internal.to_string()),
            ("203.0.113.1".into(), "10.1.0.1".into())
        );
        assert_eq!((m.trust_private.external, m.trust_private.internal), (false, true));
        let e = parse(&format!("{base}[media]\nports=\"40000\"\nexternal_ip=\"0.0.0.0\"\nmax_streams_per_call=17\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("media.ports") && e.contains("media.external_ip") && e.contains("media.max_streams_per_call"),
            "{e}"
        );
        let any = "[external]\nudp=[\"0.0.0.0:5060\"]\nadvertise=\"sbc.example.com\"\n[internal]\nudp=[\"10.1.0.1:5060\"]\n[[core]]\naddress=\"10.0.0.5:5060\"\n";
        let e = parse(&format!("{any}[media]\nenabled=true\n")).unwrap_err().to_string();
        assert!(e.contains("media.external_ip: required"), "{e}");
        assert!(parse(&format!("{any}[media]\nenabled=true\nexternal_ip=\"2001:db8::1\"\n")).is_ok());
    }

    #[test]
    fn a_side_listening_on_the_other_sides_port_is_refused() {
        let e = parse(
            "[external]\nudp=[\"0.0.0.0:5060\"]\ntcp=[\"0.0.0.0:5060\"]\nadvertise=\"sbc.example.com\"\n\
             [internal]\nudp=[\"127.0.0.2:5060\"]\ntcp=[\"127.0.0.2:5060\"]\n[[core]]\naddress=\"127.0.0.3:5080\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("internal.tcp[0]: 127.0.0.2:5060 overlaps the external side's 0.0.0.0:5060"), "{e}");
        assert!(!e.contains("internal.udp"), "UDP with SO_REUSEADDR may share the port: {e}");
        // The other family does not clash (IPv6 sockets are v6-only).
        let other_family = parse(
            "[external]\ntcp=[\"[::]:5060\"]\nadvertise=\"sbc.example.com\"\n[internal]\ntcp=[\"127.0.0.2:5060\"]\n\
                 [[core]]\naddress=\"127.0.0.3:5080\"\ntransport=\"tcp\"\n",
        );
        assert!(other_family.is_ok(), "{:?}", other_family.err().map(|e| e.to_string()));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e =
            parse("[external]\nudp=[\"127.0.0.1:5060\"]\nudpp=[]\n[internal]\nudp=[\"127.0.0.2:5060\"]\n").unwrap_err();
        assert!(e.to_string().contains("udpp"), "{e}");
    }

    #[test]
    fn unspecified_listen_address_needs_advertise() {
        let e = parse("[external]\nudp=[\"0.0.0.0:5060\"]\n[internal]\nudp=[\"127.0.0.2:5060\"]\n[[core]]\naddress=\"127.0.0.3:5080\"\n").unwrap_err();
        assert!(e.0.iter().any(|p| p.path == "external.advertise" && p.message.starts_with("required")), "{e}");
    }

    #[test]
    fn each_family_needs_its_own_address_on_a_side() {
        // An IPv6 core needs an IPv6 internal address of its transport.
        let e = parse("[external]\nudp=[\"[2001:db8::1]:5060\"]\n[internal]\nudp=[\"10.0.0.1:5060\"]\n[[core]]\naddress=\"[fd00::10]:5060\"\n")
            .unwrap_err();
        assert!(e.0.iter().any(|p| p.path == "core[0].address" && p.message.contains("no IPv6 udp")), "{e}");
        // An IPv4 address to advertise cannot stand for `[::]`.
        let e = parse("[external]\nudp=[\"203.0.113.1:5060\", \"[::]:5060\"]\n[internal]\nudp=[\"10.0.0.1:5060\"]\n[[core]]\naddress=\"10.0.0.10:5060\"\n")
            .unwrap_err();
        assert!(e.0.iter().any(|p| p.path == "external.advertise" && p.message.contains("[::]:5060")), "{e}");
        // Both families on one side, each with its own address: valid; the engine gets both.
        let v = parse(
            "[external]\nudp=[\"203.0.113.1:5060\", \"[2001:db8::1]:5060\"]\ntcp=[\"[2001:db8::1]:5060\"]\n\
                       [internal]\nudp=[\"[fd00::1]:5060\"]\n[[core]]\naddress=\"[fd00::10]:5060\"\n",
        )
        .unwrap();
        assert_eq!(v.engine.external.udp.len(), 2);
        assert_eq!(v.engine.external.advertise, "203.0.113.1");
        assert_eq!(v.engine.internal.advertise, "fd00::1");
    }

    /// The keys serde knows at `path` (e.g. `limits`, `core[0]`), from its unknown-field error.
    fn known_keys(text: &str, path: &str) -> Vec<String> {
        let errs = parse(text).unwrap_err().0;
        let p = errs.iter().find(|p| p.path == format!("{path}.zzz") || p.path == "zzz").expect("an unknown key");
        let list = p.message.split_once("expected ").map_or("", |(_, l)| l.trim_start_matches("one of "));
        // serde: "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, `c`".
        list.split(", ").flat_map(|k| k.split(" or ")).map(|k| k.trim_matches('`').to_string()).collect()
    }

    #[test]
    fn config_readme_documents_every_key() {
        let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/README.md"))
            .expect("config/README.md");
        // The keys of each `## ` section: the first column of its tables.
        let mut documented = std::collections::BTreeMap::<String, Vec<String>>::new();
        let mut heading = String::new();
        for line in readme.lines() {
            if let Some(h) = line.strip_prefix("## ") {
                heading = h.to_string();
            } else if let Some(key) = line.strip_prefix("| `").and_then(|l| l.split_once('`')).map(|(k, _)| k) {
                documented.entry(heading.clone()).or_default().push(key.to_string());
            }
        }
        let sections = known_keys("zzz = 1\n", "");
        assert!(sections.len() >= 10, "{sections:?}");
        for section in sections {
            let (header, path) =
                if section == "core" { ("[[core]]", "core[0]".to_string()) } else { ("[SECTION]", section.clone()) };
            let header = header.replace("SECTION", &section);
            let mut want = known_keys(&format!("{header}\nzzz = 1\n"), &path);
            let mut got = documented
                .iter()
                .find(|(h, _)| h.contains(&format!("`{header}`")))
                .unwrap_or_else(|| panic!("config/README.md has no section for {header}"))
                .1
                .clone();
            want.sort();
            got.sort();
            assert_eq!(got, want, "config/README.md, {header}");
        }
    }

    #[test]
    fn the_guard_is_on_by_default_and_its_errors_carry_paths_and_lines() {
        let v = parse(MINIMAL).unwrap();
        let g = v.guard.expect("on by default");
        assert_eq!(g.state_dir.as_deref(), Some(Path::new(DEFAULT_STATE_DIR)));
        assert_eq!(g.config.jails.len(), 5, "the core's default jails");
        let off = parse(&format!("{MINIMAL}[guard]\nenabled = false\n")).unwrap();
        assert!(off.guard.is_none());
        let text = format!(
            "{MINIMAL}[guard]\nstate_dir = \"rel\"\nipv6_prefix_len = 7\n[[guard.jail]]\nname = \"x\"\nevents = [\"nope\"]\nmaxretry = 0\n"
        );
        let got = lines(&text);
        for want in [
            "line 8: guard.state_dir:",
            "line 9: guard.ipv6_prefix_len: 7 out of range",
            "guard.jail[0].events[0]",
            "guard.jail[0].maxretry",
        ] {
            assert!(got.iter().any(|l| l.contains(want)), "missing {want:?} in {got:#?}");
        }
        let none = parse(&format!("{MINIMAL}[guard]\nstate_dir = \"\"\n")).unwrap();
        assert_eq!(none.guard.unwrap().state_dir, None);
    }

    #[test]
    fn the_xdp_rate_limit_is_off_by_default_listed_gets_ten_times_and_errors_name_their_keys() {
        assert_eq!(parse(MINIMAL).unwrap().trunk.xdp_rate, None);
        let trunk = "[trunk]\nallowlist = \"/etc/sbc/allow.txt\"\ninterface = \"eth0\"\n";
        let on = parse(&format!("{MINIMAL}{trunk}[guard]\nxdp_rate_pps = 50\nipv6_prefix_len = 56\n")).unwrap();
        let r = on.trunk.xdp_rate.expect("on");
        assert_eq!((r.pps, r.burst, r.listed_pps, r.listed_burst, r.ipv6_prefix_len), (50, 50, 500, 500, 56));
        assert_eq!(on.trunk.sip_ports, vec![(5060, false)], "the external listen ports");
        let own = parse(&format!(
            "{MINIMAL}{trunk}[guard]\nxdp_rate_pps = 50\nxdp_rate_burst = 5\nxdp_listed_rate_pps = 60\nxdp_listed_rate_burst = 9\n"
        ))
        .unwrap();
        let r = own.trunk.xdp_rate.unwrap();
        assert_eq!((r.pps, r.burst, r.listed_pps, r.listed_burst), (50, 5, 60, 9));
        let off = parse(&format!("{MINIMAL}{trunk}[guard]\nenabled = false\nxdp_rate_pps = 50\n")).unwrap();
        assert_eq!(off.trunk.xdp_rate, None, "the guard off: no XDP rate limit either");
        let got = lines(&format!("{MINIMAL}[guard]\nxdp_rate_pps = 50\nxdp_listed_rate_pps = 10\n"));
        for want in
            ["guard.xdp_rate_pps: a rate limit in XDP needs trunk.interface", "guard.xdp_listed_rate_pps: 10 is below"]
        {
            assert!(got.iter().any(|l| l.contains(want)), "missing {want:?} in {got:#?}");
        }
        let got = lines(&format!("{MINIMAL}[guard]\nxdp_rate_burst = 5\nxdp_rate_pps = 20000000\n"));
        assert!(got.iter().any(|l| l.contains("guard.xdp_rate_pps: 20000000 out of range")), "{got:#?}");
        let got = lines(&format!("{MINIMAL}[guard]\nxdp_rate_burst = 5\n"));
        assert!(got.iter().any(|l| l.contains("guard.xdp_rate_burst") && l.contains("without")), "{got:#?}");
    }

    #[test]
    fn caller_id_policy_rejects_by_default_and_names_its_modes() {
        assert_eq!(parse(MINIMAL).unwrap().trunk.caller_id, CallerIdMode::Reject);
        let off = parse(&format!("{MINIMAL}[trunk]\ncaller_id = \"off\"\n")).unwrap();
        assert_eq!(off.trunk.caller_id, CallerIdMode::Off);
        let replace = parse(&format!("{MINIMAL}[trunk]\ncaller_id = \"replace\"\n")).unwrap();
        assert_eq!(replace.trunk.caller_id, CallerIdMode::Replace);
        let got = lines(&format!("{MINIMAL}[trunk]\ncaller_id = \"drop\"\n"));
        assert!(
            got.iter().any(|l| l.contains("trunk.caller_id: \"drop\" is not one of reject, replace, off")),
            "{got:#?}"
        );
    }

    #[test]
    fn the_store_is_off_by_default_and_its_errors_carry_paths_without_the_url() {
        assert_eq!(parse(MINIMAL).unwrap().guard.unwrap().store, None);
        let on = parse(&format!("{MINIMAL}[guard.store]\nredis = \"redis://10.0.0.5:6379/0\"\n")).unwrap();
        let store = on.guard.unwrap().store.expect("configured");
        assert_eq!((store.url.as_str(), store.prefix.as_str()), ("redis://10.0.0.5:6379/0", "sbc"));
        assert!(store.node.ends_with(&format!("-{}", std::process::id())), "{}", store.node);
        let named = parse(&format!("{MINIMAL}[guard.store]\nredis = \"unix:///run/redis.sock\"\nnode = \"edge-1\"\n"));
        assert_eq!(named.unwrap().guard.unwrap().store.unwrap().node, "edge-1");
        let got = lines(&format!(
            "{MINIMAL}[guard.store]\nredis = \"rediss://:secret@10.0.0.5\"\nprefix = \"a b\"\nnode = \"x y\"\n"
        ));
        for want in ["guard.store.redis", "guard.store.prefix", "guard.store.node"] {
            assert!(got.iter().any(|l| l.contains(want)), "missing {want:?} in {got:#?}");
        }
        assert!(!got.iter().any(|l| l.contains("secret")), "{got:#?}");
    }

    /// The rendered problems, one string each.
    fn lines(text: &str) -> Vec<String> {
        parse(text).unwrap_err().0.iter().map(ToString::to_string).collect()
    }

    const MINIMAL: &str = "[external]\nudp = [\"127.0.0.1:5060\"]\n[internal]\nudp = [\"127.0.0.2:5060\"]\n\
                           [[core]]\naddress = \"127.0.0.3:5080\"\n";

    #[test]
    fn check_config_reports_every_type_and_key_error_with_line() {
        // An unknown key in [limits], a string where a number belongs in [probe], a bad port.
        let text = include_str!("../../tests/fixtures/three-errors.toml");
        assert_eq!(
            lines(text),
            [
                "line 2: external.udp[0]: port 70000 out of range 1..=65535",
                "line 8: probe.interval_ms: invalid type: string \"fast\", expected u64",
                "line 10: limits.max_mesage_bytes: unknown field `max_mesage_bytes`, expected one of \
                 `max_message_bytes`, `max_headers`, `max_body_bytes`, `max_transactions`, `max_dialogs`, \
                 `max_registrations`, `max_tcp_connections`, `tcp_idle_secs`",
            ]
        );
    }

    #[test]
    fn every_unknown_key_and_type_error_is_reported_not_only_the_first() {
        let text = format!(
            "{MINIMAL}timeout_ms = true\nbogus = 1\n[[core]]\naddress = 5\n[limits]\nmax_headers = -1\n\
             max_dialogs = 1.5\nextra = \"x\"\n[topology]\nstrip_headers = [\"Server\", 7]\n[nonsense]\n"
        );
        let got: Vec<(Option<usize>, String)> =
            parse(&text).unwrap_err().0.into_iter().map(|p| (p.line, p.path)).collect();
        let want = [
            (7, "core[0].timeout_ms"),
            (8, "core[0].bogus"),
            (10, "core[1].address"),
            (12, "limits.max_headers"),
            (13, "limits.max_dialogs"),
            (14, "limits.extra"),
            (16, "topology.strip_headers[1]"),
            (17, "nonsense"),
        ];
        assert_eq!(got, want.map(|(l, p)| (Some(l), p.to_string())), "{got:#?}");
    }

    #[test]
    fn a_refused_key_does_not_cascade_into_checks_of_its_default() {
        // internal.udp refused: no "at least one listen address", no "core has no udp side";
        // limits.max_message_bytes refused: max_body_bytes is not compared with the default;
        // timers.t1_ms refused: t2_ms is not ranged against it; trunk.allowlist refused.
        let text = "[external]\nudp = [\"127.0.0.1:5060\"]\n[internal]\nudp = \"127.0.0.2:5060\"\n\
                    [[core]]\naddress = \"127.0.0.3:5080\"\n[limits]\nmax_message_bytes = \"big\"\n\
                    max_body_bytes = 30000\n[timers]\nt1_ms = \"1s\"\nt2_ms = 400\n\
                    [trunk]\nallowlist = 1\ninterface = \"eth0\"\ncore = 1\n";
        let paths: Vec<String> = parse(text).unwrap_err().0.into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            ["internal.udp", "limits.max_message_bytes", "timers.t1_ms", "trunk.allowlist", "trunk.core"]
        );
        // A whole section of the wrong type is one error too.
        let paths: Vec<String> = parse("external = 5\n").unwrap_err().0.into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["external", "internal", "core"]);
    }

    #[test]
    fn missing_sections_and_keys_are_errors_with_paths() {
        assert_eq!(
            lines("[[core]]\ntransport = \"tcp\"\n"),
            [
                "line 1: core[0].address: required (IP:port)",
                "line 2: core[0].transport: the internal side has no tcp listen address",
                "external: at least one udp or tcp listen address is required",
                "internal: at least one udp or tcp listen address is required",
            ]
        );
    }

    #[test]
    fn a_file_that_is_not_toml_is_one_error_with_line_and_column() {
        let errs = lines(&format!("{MINIMAL}[limits\nmax_headers = 96\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("line 7, column 8: not TOML: "), "{errs:?}");
    }

    #[test]
    fn semantic_errors_carry_the_line_of_their_key() {
        let text = format!(
            "{MINIMAL}[limits]\nmax_headers = 5\n[topology]\nstrip_headers = [\n  \"Server\",\n  \"Bad Name\",\n]\n"
        );
        assert_eq!(
            lines(&text),
            [
                "line 8: limits.max_headers: 5 out of range 16..=1024",
                "line 12: topology.strip_headers[1]: \"Bad Name\" is not a header name",
            ]
        );
    }

    #[test]
    fn the_management_listener_is_off_by_default_and_must_stay_off_the_sip_listeners() {
        assert_eq!(parse(MINIMAL).unwrap().management, None);
        assert_eq!(parse(DEFAULT).unwrap().management, None, "off in the embedded default");
        let on = parse(&format!("{MINIMAL}[management]\nlisten = \"127.0.0.1:9090\"\n")).unwrap();
        assert_eq!(on.management, Some("127.0.0.1:9090".parse().unwrap()));
        let clash = "[external]\nudp = [\"127.0.0.1:5060\"]\ntcp = [\"0.0.0.0:5060\"]\n[internal]\nudp = [\"127.0.0.2:5070\"]\n\
             [[core]]\naddress = \"127.0.0.3:5080\"\n[management]\nlisten = \"127.0.0.1:5060\"\n";
        assert_eq!(
            lines(clash),
            ["line 9: management.listen: 127.0.0.1:5060 overlaps the SIP or STUN TCP listener 0.0.0.0:5060"]
        );
        assert_eq!(
            lines(&format!("{MINIMAL}[management]\nlisten = \"localhost:9090\"\n")),
            ["line 8: management.listen: \"localhost:9090\" is not an IP:port address"]
        );
        assert_eq!(
            lines(&format!("{MINIMAL}[management]\nlisten = \"127.0.0.1:0\"\n")),
            ["line 8: management.listen: port 0 is not allowed"]
        );
    }
}
