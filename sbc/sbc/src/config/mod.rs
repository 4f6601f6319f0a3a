//! Configuration: TOML → `Raw` (serde, unknown keys refused) → `Validated` (every error found at
//! once, each with its path, e.g. `external.udp[1]: port 0 is not allowed`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use sbc_proto::engine::{Config as EngineConfig, CoreTarget, SideConfig};
use sbc_proto::sip::framer::Limits;
use sbc_proto::sip::uri::Transport;
use sbc_proto::transaction::Timers;
use serde::Deserialize;

/// The embedded default (config/sbc.toml).
pub const DEFAULT: &str = include_str!("../../../../config/sbc.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    pub external: RawSide,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSide {
    #[serde(default)]
    pub udp: Vec<String>,
    #[serde(default)]
    pub tcp: Vec<String>,
    /// Host written in Via/Contact on this side; defaults to the first listen IP.
    pub advertise: Option<String>,
    pub hide_topology: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCore {
    pub address: String,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Skb,
    Auto,
}

#[derive(Debug, Clone)]
pub struct Trunk {
    pub allowlist: Option<std::path::PathBuf>,
    pub interface: Option<String>,
    pub xdp_mode: XdpMode,
    /// (address, is_tcp)
    pub protected: Vec<(SocketAddr, bool)>,
}

/// Every problem found, each with its path.
#[derive(Debug)]
pub struct Errors(pub Vec<String>);

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
        Some(p) => std::fs::read_to_string(p).map_err(|e| Errors(vec![format!("{}: {e}", p.display())]))?,
        None => DEFAULT.to_string(),
    };
    parse(&text)
}

pub fn parse(text: &str) -> Result<Validated, Errors> {
    let raw: Raw = toml::from_str(text).map_err(|e| Errors(vec![e.to_string().trim().to_string()]))?;
    validate(raw)
}

fn addrs(path: &str, list: &[String], errs: &mut Vec<String>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for (i, a) in list.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(sa) if sa.port() == 0 => errs.push(format!("{path}[{i}]: port 0 is not allowed")),
            Ok(sa) => out.push(sa),
            Err(_) => errs.push(format!("{path}[{i}]: {a:?} is not an IP:port address")),
        }
    }
    out
}

fn side(name: &str, raw: &RawSide, hide_default: bool, errs: &mut Vec<String>) -> (SideConfig, Listen) {
    let udp = addrs(&format!("{name}.udp"), &raw.udp, errs);
    let tcp = addrs(&format!("{name}.tcp"), &raw.tcp, errs);
    if raw.udp.is_empty() && raw.tcp.is_empty() {
        errs.push(format!("{name}: at least one udp or tcp listen address is required"));
    }
    let first_ip: Option<IpAddr> = udp.first().or(tcp.first()).map(SocketAddr::ip);
    let advertise = match (&raw.advertise, first_ip) {
        (Some(a), _) if a.is_empty() || a.chars().any(|c| c.is_whitespace() || c == '<' || c == '>') => {
            errs.push(format!("{name}.advertise: {a:?} is not a host name or address"));
            String::new()
        }
        (Some(a), _) => a.clone(),
        (None, Some(ip)) if ip.is_unspecified() => {
            errs.push(format!("{name}.advertise: required when listening on {ip} (which address should peers use?)"));
            String::new()
        }
        (None, Some(ip)) => ip.to_string(),
        (None, None) => String::new(),
    };
    (
        SideConfig {
            advertise,
            udp: udp.first().copied(),
            tcp: tcp.first().copied(),
            hide: raw.hide_topology.unwrap_or(hide_default),
        },
        Listen { udp, tcp },
    )
}

fn range(errs: &mut Vec<String>, path: &str, v: u64, lo: u64, hi: u64) {
    if v < lo || v > hi {
        errs.push(format!("{path}: {v} out of range {lo}..={hi}"));
    }
}

pub fn validate(raw: Raw) -> Result<Validated, Errors> {
    let mut errs = Vec::new();
    let (external, ext_listen) = side("external", &raw.external, true, &mut errs);
    let (internal, int_listen) = side("internal", &raw.internal, false, &mut errs);
    if raw.core.is_empty() {
        errs.push("core: at least one [[core]] target is required".into());
    }
    let mut cores = Vec::new();
    for (i, c) in raw.core.iter().enumerate() {
        let transport = match c.transport.to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            other => {
                errs.push(format!("core[{i}].transport: {other:?} is not supported (udp, tcp)"));
                None
            }
        };
        if let Some(t) = transport
            && internal.local(t).is_none()
        {
            errs.push(format!("core[{i}].transport: the internal side has no {} listen address", t.as_str()));
        }
        match (c.address.parse::<SocketAddr>(), transport) {
            (Ok(addr), Some(transport)) => cores.push(CoreTarget { addr, transport }),
            (Err(_), _) => errs.push(format!("core[{i}].address: {:?} is not an IP:port address", c.address)),
            _ => {}
        }
    }
    let l = &raw.limits;
    range(&mut errs, "limits.max_message_bytes", l.max_message_bytes as u64, 512, 65535);
    range(&mut errs, "limits.max_headers", l.max_headers as u64, 16, 1024);
    range(&mut errs, "limits.max_body_bytes", l.max_body_bytes as u64, 0, 65535);
    if l.max_body_bytes > l.max_message_bytes {
        errs.push(format!(
            "limits.max_body_bytes: {} exceeds limits.max_message_bytes {}",
            l.max_body_bytes, l.max_message_bytes
        ));
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
    range(&mut errs, "timers.t2_ms", t.t2_ms, t.t1_ms.max(50), 60_000);
    range(&mut errs, "timers.t4_ms", t.t4_ms, 100, 60_000);
    range(&mut errs, "topology.dialog_idle_secs", raw.topology.dialog_idle_secs, 60, 7 * 86400);
    if let Some(s) = &raw.topology.secret
        && s.len() < 16
    {
        errs.push("topology.secret: use at least 16 characters".into());
    }
    for (i, h) in raw.topology.strip_headers.iter().enumerate() {
        if h.is_empty() || !h.bytes().all(sbc_proto::sip::message::is_token_char) {
            errs.push(format!("topology.strip_headers[{i}]: {h:?} is not a header name"));
        }
    }
    let trunk = trunk(&raw.trunk, &ext_listen, &mut errs);
    if raw.admin.socket.is_empty() || !raw.admin.socket.starts_with('/') {
        errs.push(format!("admin.socket: {:?} must be an absolute path", raw.admin.socket));
    }
    if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
        errs.push(format!("log.level: {:?} is not a tracing filter", raw.log.level));
    }
    if !errs.is_empty() {
        return Err(Errors(errs));
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
    };
    Ok(Validated {
        engine,
        external: ext_listen,
        internal: int_listen,
        max_tcp_connections: l.max_tcp_connections,
        tcp_idle: Duration::from_secs(l.tcp_idle_secs),
        log_level: raw.log.level,
        trunk,
        admin_socket: raw.admin.socket.into(),
    })
}

fn trunk(raw: &RawTrunk, ext: &Listen, errs: &mut Vec<String>) -> Trunk {
    let xdp_mode = match raw.xdp_mode.as_deref().unwrap_or("auto") {
        "native" => XdpMode::Native,
        "skb" => XdpMode::Skb,
        "auto" => XdpMode::Auto,
        other => {
            errs.push(format!("trunk.xdp_mode: {other:?} is not one of native, skb, auto"));
            XdpMode::Auto
        }
    };
    if let Some(i) = &raw.interface
        && (i.is_empty() || i.len() > 15 || i.contains('/') || i.chars().any(char::is_whitespace))
    {
        errs.push(format!("trunk.interface: {i:?} is not an interface name"));
    }
    if raw.interface.is_some() && raw.allowlist.is_none() {
        errs.push("trunk.interface: an XDP filter needs trunk.allowlist".into());
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
                    None => errs.push(format!("trunk.protected[{i}]: {p:?} is not IP:port/udp or IP:port/tcp")),
                }
            }
            out
        }
        None => ext.udp.iter().map(|a| (*a, false)).chain(ext.tcp.iter().map(|a| (*a, true))).collect(),
    };
    Trunk { allowlist: raw.allowlist.as_ref().map(Into::into), interface: raw.interface.clone(), xdp_mode, protected }
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
        let errs = parse(text).unwrap_err().0;
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
    fn unknown_keys_are_refused() {
        let e =
            parse("[external]\nudp=[\"127.0.0.1:5060\"]\nudpp=[]\n[internal]\nudp=[\"127.0.0.2:5060\"]\n").unwrap_err();
        assert!(e.to_string().contains("udpp"), "{e}");
    }

    #[test]
    fn unspecified_listen_address_needs_advertise() {
        let e = parse("[external]\nudp=[\"0.0.0.0:5060\"]\n[internal]\nudp=[\"127.0.0.2:5060\"]\n[[core]]\naddress=\"127.0.0.3:5080\"\n").unwrap_err();
        assert!(e.0.iter().any(|l| l.starts_with("external.advertise: required")), "{e}");
    }
}
