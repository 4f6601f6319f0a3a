//! The trunk filter: the provider allowlist applied twice — in XDP on the trunk-facing
//! interface (drops before the kernel's stack), and in userspace (defence in depth, and the
//! only filter where XDP cannot attach, with a loud warning).
//!
//! Direction (see `sbc_policy::allowlist`): every listed address (IN, OUT, IN/OUT) passes the
//! packet filters, because OUT-only providers answer our requests and send in-dialog requests;
//! only IN and IN/OUT addresses may start a new dialog or transaction ([`TrunkGuard`]).
//!
//! Reload (SIGHUP, `sbc allowlist reload`) parses the file first; a bad file leaves the running
//! list in place. The XDP swap is atomic per address family (map-in-map); the userspace list is
//! swapped between two packets.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use sbc_policy::Prefix;
use sbc_policy::allowlist::Allowlist;
use sbc_proto::engine::{Admit, Flow, Guard, Side};
use sbc_proto::sip::sanity::Checked;
use sbc_proto::sip::uri::Transport;
use sbc_xdp::{AttachMode, Proto, RateLimit, RateLimits, XdpFilter};

use crate::config::{Trunk as TrunkConfig, XdpMode};

/// Counters of the userspace filter.
#[derive(Debug, Default, Clone, Copy)]
pub struct UserStats {
    pub dropped_not_listed: u64,
}

/// The running list, shared by the packet filter and the engine's guard: a reload swaps what
/// is inside, so the guard (and, later, its rate-limit and ban state) is never replaced.
pub type SharedList = Arc<RwLock<Arc<Allowlist>>>;

pub struct Trunk {
    file: PathBuf,
    list: Arc<Allowlist>,
    shared: SharedList,
    xdp: Option<XdpFilter>,
    protected: Vec<(SocketAddr, bool)>,
    pub stats: UserStats,
    /// When the running list was loaded (start or the last successful reload).
    loaded: Instant,
}

fn read_list(path: &PathBuf) -> Result<Allowlist, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Allowlist::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Trunk {
    /// Loads the allowlist and, when an interface is configured, attaches the XDP filter.
    /// `Ok(None)` when no allowlist is configured.
    pub fn start(cfg: &TrunkConfig) -> Result<Option<Trunk>, String> {
        let Some(file) = cfg.allowlist.clone() else {
            return Ok(None);
        };
        let list = Arc::new(read_list(&file)?);
        let mut trunk = Trunk {
            file,
            shared: Arc::new(RwLock::new(list.clone())),
            list,
            xdp: None,
            protected: cfg.protected.clone(),
            stats: UserStats::default(),
            loaded: Instant::now(),
        };
        if let Some(iface) = &cfg.interface {
            let mode = match cfg.xdp_mode {
                XdpMode::Native => AttachMode::Native,
                XdpMode::Skb => AttachMode::Skb,
                XdpMode::Auto => AttachMode::Auto,
            };
            match XdpFilter::attach(iface, mode) {
                Ok(mut f) => {
                    let dests: Vec<(IpAddr, u16, Proto)> = cfg
                        .protected
                        .iter()
                        .map(|(a, tcp)| (a.ip(), a.port(), if *tcp { Proto::Tcp } else { Proto::Udp }))
                        .collect();
                    f.set_protected(&dests).map_err(|e| e.to_string())?;
                    f.replace_allowlist(&trunk.list.xdp_prefixes()).map_err(|e| e.to_string())?;
                    if let Some(r) = cfg.xdp_rate {
                        let ports: Vec<(u16, Proto)> = cfg
                            .sip_ports
                            .iter()
                            .map(|&(p, tcp)| (p, if tcp { Proto::Tcp } else { Proto::Udp }))
                            .collect();
                        let limits = RateLimits {
                            unlisted: RateLimit { pps: r.pps, burst: r.burst },
                            listed: RateLimit { pps: r.listed_pps, burst: r.listed_burst },
                            ipv6_prefix_len: r.ipv6_prefix_len,
                        };
                        f.set_rate_limit(Some(&limits), &ports).map_err(|e| e.to_string())?;
                        tracing::info!(
                            pps = r.pps, burst = r.burst, listed_pps = r.listed_pps, listed_burst = r.listed_burst,
                            ports = ?cfg.sip_ports, "XDP per-source rate limit on"
                        );
                    }
                    trunk.xdp = Some(f);
                }
                Err(e) => {
                    tracing::error!(
                        %iface, error = %e,
                        "XDP FILTER NOT ATTACHED: trunk traffic is filtered in userspace only (every unlisted packet now costs the proxy)"
                    );
                }
            }
        } else {
            tracing::warn!("trunk.interface not set: the allowlist is enforced in userspace only");
        }
        tracing::info!(entries = trunk.list.len(), file = %trunk.file.display(), xdp = trunk.xdp.is_some(), "trunk allowlist loaded");
        Ok(Some(trunk))
    }

    /// Re-reads the file; on any error the running list stays.
    pub fn reload(&mut self) -> Result<String, String> {
        let list = read_list(&self.file)?;
        if let Some(x) = self.xdp.as_mut() {
            x.replace_allowlist(&list.xdp_prefixes())
                .map_err(|e| format!("XDP swap failed, previous list kept: {e}"))?;
        }
        let n = list.len();
        self.list = Arc::new(list);
        self.loaded = Instant::now();
        *self.shared.write().unwrap_or_else(|e| e.into_inner()) = self.list.clone();
        tracing::info!(entries = n, "trunk allowlist reloaded");
        Ok(format!("reloaded {n} entries from {}", self.file.display()))
    }

    /// The userspace packet filter: false when `flow` is trunk traffic from an unlisted source.
    pub fn admits_packet(&mut self, flow: &Flow) -> bool {
        if !protects(&self.protected, flow) || self.list.lookup(flow.remote.ip()).is_some() {
            return true;
        }
        self.stats.dropped_not_listed += 1;
        false
    }

    /// The engine's guard, given to the engine once: it reads the running list, whatever
    /// reloads happen.
    pub fn guard(&self) -> TrunkGuard {
        TrunkGuard { list: self.shared.clone(), protected: self.protected.clone() }
    }

    /// The running list, as the guard reads it (a reload swaps what is inside).
    pub fn list_slot(&self) -> SharedList {
        self.shared.clone()
    }

    /// Whether the XDP filter is attached (bans then drop in XDP too).
    pub fn has_xdp(&self) -> bool {
        self.xdp.is_some()
    }

    /// Puts a banned prefix into the XDP blocklist until `until` (XDP lets it lapse by
    /// itself then), when XDP is attached.
    pub fn block(&mut self, prefix: Prefix, until: std::time::Instant) -> Result<(), String> {
        match self.xdp.as_mut() {
            Some(x) => x.block(prefix, Some(until)).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// Takes a prefix out of the XDP blocklist.
    pub fn unblock(&mut self, prefix: Prefix) -> Result<(), String> {
        match self.xdp.as_mut() {
            Some(x) => x.unblock(prefix).map(|_| ()).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    pub fn show(&self) -> String {
        self.list.render()
    }

    pub fn stats_text(&self) -> String {
        let mut out = String::new();
        match &self.xdp {
            Some(x) => match x.stats() {
                Ok(c) => {
                    out.push_str(&format!("xdp.interface {}\n", x.iface()));
                    for (name, v) in c.iter() {
                        out.push_str(&format!("xdp.{name} {v}\n"));
                    }
                }
                Err(e) => out.push_str(&format!("xdp.error {e}\n")),
            },
            None => out.push_str("xdp.attached 0\n"),
        }
        out.push_str(&format!("userspace.dropped_not_listed {}\n", self.stats.dropped_not_listed));
        out.push_str(&format!("allowlist.entries {}\n", self.list.len()));
        out.push_str(&format!("allowlist.age_seconds {}\n", self.loaded.elapsed().as_secs()));
        out
    }
}

/// Whether `flow` arrived on a protected trunk address (external side only).
fn protects(protected: &[(SocketAddr, bool)], flow: &Flow) -> bool {
    let tcp = flow.transport == Transport::Tcp;
    flow.side == Side::External
        && protected.iter().any(|(a, t)| {
            *t == tcp && a.port() == flow.local.port() && (a.ip().is_unspecified() || a.ip() == flow.local.ip())
        })
}

/// Refuses new requests from OUT-only providers on the trunk; in-dialog requests pass.
pub struct TrunkGuard {
    list: SharedList,
    protected: Vec<(SocketAddr, bool)>,
}

impl TrunkGuard {
    /// The running list (a reload swaps it).
    pub fn list(&self) -> Arc<Allowlist> {
        self.list.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Guard for TrunkGuard {
    fn admit(&mut self, _now: Instant, flow: &Flow, req: &Checked<'_>) -> Admit {
        if !protects(&self.protected, flow) || req.to_tag.is_some() {
            return Admit::Accept;
        }
        let list = self.list.read().unwrap_or_else(|e| e.into_inner()).clone();
        if list.may_originate(flow.remote.ip()) {
            return Admit::Accept;
        }
        Admit::Reject { code: 403, reason: "Forbidden", retry_after: None }
    }
}
