//! The trunk filter: the provider allowlist applied twice — in XDP on the trunk-facing
//! interface (drops before the kernel's stack), and in userspace (defence in depth, and the
//! only filter where XDP cannot attach, with a loud warning).
//!
//! Direction (see `sbc_policy::allowlist`): every listed address (IN, OUT, IN/OUT) passes the
//! packet filters, because OUT-only providers answer our requests and send in-dialog requests;
//! only IN and IN/OUT addresses may start a new dialog or transaction ([`TrunkGuard`]).
//!
//! Caller ID (the operator's rule: a caller ID comes only from its own account, or through a
//! provider that allows changing it): an out-of-dialog INVITE from the core whose
//! Request-URI is the IP address of a provider's OUT or IN/OUT entry, where that provider has
//! `cli_allowed=N` in the allowlist file, must carry the provider's `caller_id` as the user
//! part of its From and of every P-Asserted-Identity (`sbc_policy::caller_id::check`);
//! otherwise it is refused with 403 before anything is sent to the provider
//! (`trunk.caller_id = "reject"`), or those user parts become the provider's number
//! (`"replace"`: the bytes are spliced, the rest of each header stays), or it passes (`"off"`).
//!
//! Reload (SIGHUP, `sbc allowlist reload`) parses the file first; a bad file leaves the running
//! list in place. The XDP swap is atomic per address family (map-in-map); the userspace list is
//! swapped between two packets.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use sbc_policy::Prefix;
use sbc_policy::allowlist::Allowlist;
use sbc_policy::caller_id::{self, Verdict};
use sbc_proto::engine::{Admit, Flow, Guard, Side};
use sbc_proto::sip::message::HeaderName;
use sbc_proto::sip::sanity::Checked;
use sbc_proto::sip::uri::{Host, SipUri, Transport};
use sbc_proto::sip::{Method, values};
use sbc_xdp::{AttachMode, Proto, RateLimit, RateLimits, XdpFilter};

use crate::config::{CallerIdMode, Trunk as TrunkConfig, XdpMode};

/// Counters of the userspace filter.
#[derive(Debug, Default, Clone, Copy)]
pub struct UserStats {
    pub dropped_not_listed: u64,
}

/// Counters of the caller-ID check, shared by every shard's guard.
#[derive(Debug, Default)]
pub struct CallerIdStats {
    /// Refused with 403 (`caller_id = "reject"`, or `"replace"` where the headers could not be
    /// rewritten).
    pub rejected: AtomicU64,
    /// From and PAI users replaced by the provider's number (`caller_id = "replace"`).
    pub replaced: AtomicU64,
    /// To a `cli_allowed=N` provider without a number: passed, nothing to compare with.
    pub passed: AtomicU64,
    /// To a `cli_allowed=N` provider with its own number in From and every PAI.
    pub matched: AtomicU64,
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
    caller_id: CallerIdMode,
    cid_stats: Arc<CallerIdStats>,
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
            caller_id: cfg.caller_id,
            cid_stats: Arc::default(),
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
        TrunkGuard {
            list: self.shared.clone(),
            protected: self.protected.clone(),
            caller_id: self.caller_id,
            cid_stats: self.cid_stats.clone(),
        }
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
        let c = &self.cid_stats;
        out.push_str(&format!("trunk.caller_id_rejected {}\n", c.rejected.load(Ordering::Relaxed)));
        out.push_str(&format!("trunk.caller_id_replaced {}\n", c.replaced.load(Ordering::Relaxed)));
        out.push_str(&format!("trunk.caller_id_passed {}\n", c.passed.load(Ordering::Relaxed)));
        out.push_str(&format!("trunk.caller_id_matched {}\n", c.matched.load(Ordering::Relaxed)));
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

/// Refuses new requests from OUT-only providers on the trunk (in-dialog requests pass), and
/// the core's new calls to a provider with a caller ID the provider does not allow.
pub struct TrunkGuard {
    list: SharedList,
    protected: Vec<(SocketAddr, bool)>,
    caller_id: CallerIdMode,
    cid_stats: Arc<CallerIdStats>,
}

impl TrunkGuard {
    /// The running list (a reload swaps it).
    pub fn list(&self) -> Arc<Allowlist> {
        self.list.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Guard for TrunkGuard {
    fn admit(&mut self, _now: Instant, flow: &Flow, req: &Checked<'_>) -> Admit {
        if flow.side == Side::Internal {
            return self.caller_id(req);
        }
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

impl TrunkGuard {
    /// The caller-ID check of a request from the core (see the module doc).
    fn caller_id(&self, req: &Checked<'_>) -> Admit {
        if self.caller_id == CallerIdMode::Off || req.method != Method::Invite || req.to_tag.is_some() {
            return Admit::Accept;
        }
        // The engine routes a new request from the core to its Request-URI's address.
        let Ok(target) = SipUri::parse(req.msg.request_uri()) else { return Admit::Accept };
        let Host::Ip(ip) = target.host else { return Admit::Accept };
        let list = self.list();
        let Some(entry) = list.outbound(ip) else { return Admit::Accept };
        let Some(policy) = list.cli_policy(entry.provider_id) else { return Admit::Accept };
        let verdict = caller_id::check(policy, callers(req).iter().map(|c| c.as_deref()));
        let c = &self.cid_stats;
        match verdict {
            Verdict::Allowed => Admit::Accept,
            Verdict::Matches => {
                c.matched.fetch_add(1, Ordering::Relaxed);
                Admit::Accept
            }
            Verdict::NoNumber => {
                c.passed.fetch_add(1, Ordering::Relaxed);
                Admit::Accept
            }
            Verdict::Forbidden { number } => {
                if self.caller_id == CallerIdMode::Replace
                    && let Some(bytes) = replace_callers(req, number.as_str())
                {
                    c.replaced.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(provider = entry.provider_id, %ip, number = %number, "caller ID replaced");
                    return Admit::Rewrite(bytes);
                }
                c.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    provider = entry.provider_id, name = %entry.provider_name, %ip, allowed = %number,
                    from = ?callers(req), "caller ID not allowed by provider: refused"
                );
                Admit::Reject { code: 403, reason: "Caller ID not allowed by provider", retry_after: None }
            }
        }
    }
}

/// The request's bytes with the user part of its From and of every P-Asserted-Identity URI
/// replaced by `number`; everything else (display names, tags, hosts, other headers, the
/// body) as received. `None` when a header is folded or a URI has no user part to replace:
/// the caller then gets the 403.
fn replace_callers(req: &Checked<'_>, number: &str) -> Option<Vec<u8>> {
    let msg = &req.msg;
    let mut spans: Vec<std::ops::Range<usize>> = Vec::new();
    for h in &msg.headers {
        let pai = h.name == HeaderName::Other && msg.slice(&h.name_span).eq_ignore_ascii_case(b"P-Asserted-Identity");
        if h.name != HeaderName::From && !pai {
            continue;
        }
        if h.folded {
            return None;
        }
        let v = msg.slice(&h.value_span);
        let base = h.value_span.start as usize;
        let elems = if pai {
            match values::split_commas(v).ok()? {
                values::Commas::One(r) => vec![r],
                values::Commas::Many(rs) => rs,
            }
        } else {
            std::iter::once(0..v.len()).collect()
        };
        for r in elems {
            let na = values::name_addr(v.get(r.clone())?).ok()?;
            let uri_start = r.start + na.uri.start;
            let user = caller_id::uri_user_range(v.get(uri_start..r.start + na.uri.end)?)?;
            spans.push(base + uri_start + user.start..base + uri_start + user.end);
        }
    }
    spans.sort_by_key(|r| r.start);
    let buf = msg.buf;
    let mut out = Vec::with_capacity(buf.len() + spans.len() * number.len());
    let mut at = 0;
    for r in spans {
        out.extend_from_slice(buf.get(at..r.start)?);
        out.extend_from_slice(number.as_bytes());
        at = r.end;
    }
    out.extend_from_slice(buf.get(at..)?);
    Some(out)
}

/// The user parts of a request's From and of every P-Asserted-Identity URI (RFC 3325 §9.1:
/// one sip/sips and one tel at most, comma-separated or in two headers); `None` for a URI
/// without one or a value that does not parse.
fn callers(req: &Checked<'_>) -> Vec<Option<Vec<u8>>> {
    let msg = &req.msg;
    let user = |v: &[u8]| -> Option<Vec<u8>> {
        let na = values::name_addr(v).ok()?;
        caller_id::uri_user(v.get(na.uri)?).map(<[u8]>::to_vec)
    };
    let mut out = vec![msg.first(HeaderName::From).and_then(|h| user(&msg.unfolded(h)))];
    let pai = msg
        .all(HeaderName::Other)
        .filter(|h| msg.slice(&h.name_span).eq_ignore_ascii_case(b"P-Asserted-Identity"))
        .take(4);
    for h in pai {
        let v = msg.unfolded(h);
        match values::split_commas(&v) {
            Ok(values::Commas::One(r)) => out.push(v.get(r).and_then(user)),
            Ok(values::Commas::Many(rs)) => out.extend(rs.into_iter().take(4).map(|r| v.get(r).and_then(user))),
            Err(_) => out.push(None),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sbc_proto::engine::{Config as EngineConfig, Engine, Output};

    const LIST: &str = "# sbc-allowlist v1\n\
        198.51.100.7/32 OUT 7 \"WestCall\" 1 ip\n\
        198.51.100.8/32 IN/OUT 8 \"VoxBeam\" 2 ip\n\
        198.51.100.9/32 OUT 9 \"NoNumber\" 3 ip\n\
        provider 7 cli_allowed=N caller_id=74951815283\n\
        provider 8 cli_allowed=Y caller_id=-\n\
        provider 9 cli_allowed=N caller_id=-\n";

    fn guard(mode: CallerIdMode) -> (TrunkGuard, Arc<CallerIdStats>) {
        let list = Arc::new(Allowlist::parse(LIST).unwrap());
        let stats = Arc::new(CallerIdStats::default());
        let g = TrunkGuard {
            list: Arc::new(RwLock::new(list)),
            protected: vec![("203.0.113.1:5060".parse().unwrap(), false)],
            caller_id: mode,
            cid_stats: stats.clone(),
        };
        (g, stats)
    }

    fn core() -> Flow {
        Flow {
            side: Side::Internal,
            transport: Transport::Udp,
            local: "10.99.0.1:5060".parse().unwrap(),
            remote: "10.99.0.10:5070".parse().unwrap(),
        }
    }

    fn invite(n: u32, to: &str, from: &str, pai: &str) -> String {
        format!(
            "INVITE sip:+74950000000@{to} SIP/2.0\r\nVia: SIP/2.0/UDP 10.99.0.10:5070;branch=z9hG4bKcid{n}\r\n\
             From: \"Office\" <sip:{from}@10.99.0.10>;tag=f{n}\r\nTo: <sip:+74950000000@{to}>\r\n\
             Call-ID: cid{n}@core\r\nCSeq: 1 INVITE\r\nContact: <sip:{from}@10.99.0.10:5070>\r\n{pai}\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    }

    /// Through the engine: what the core gets back and what goes to the provider.
    fn run(g: TrunkGuard, msg: &str) -> (Vec<String>, Vec<String>) {
        let now = Instant::now();
        let mut engine = Engine::new(EngineConfig::example(), now);
        engine.set_guard(Box::new(g));
        engine.handle_datagram(now, core(), msg.as_bytes());
        let (mut to_core, mut to_provider) = (Vec::new(), Vec::new());
        while let Some(out) = engine.poll_output() {
            match out {
                Output::Transmit(t) if t.flow.side == Side::Internal => {
                    to_core.push(String::from_utf8_lossy(&t.data).into_owned());
                }
                Output::Transmit(t) => to_provider.push(String::from_utf8_lossy(&t.data).into_owned()),
                Output::Timeout(_) => break,
                _ => {}
            }
        }
        (to_core, to_provider)
    }

    #[test]
    fn the_providers_number_passes_another_is_refused_with_403_and_nothing_reaches_the_provider() {
        let (g, _) = guard(CallerIdMode::Reject);
        let (c, p) = run(g, &invite(1, "198.51.100.7", "+74951815283", ""));
        assert!(p.len() == 1 && p[0].starts_with("INVITE sip:+74950000000@198.51.100.7"), "{p:?}");
        assert!(c.iter().all(|m| !m.starts_with("SIP/2.0 403")), "{c:?}");

        let (g, _) = guard(CallerIdMode::Reject);
        let (c, p) = run(g, &invite(2, "198.51.100.7", "100", ""));
        assert!(p.is_empty(), "nothing to the provider: {p:?}");
        assert!(c.iter().any(|m| m.starts_with("SIP/2.0 403 Caller ID not allowed by provider\r\n")), "{c:?}");

        // The right From with a foreign P-Asserted-Identity: refused too.
        let (g, _) = guard(CallerIdMode::Reject);
        let pai = "P-Asserted-Identity: <sip:100@10.99.0.10>, <tel:+74951815283>\r\n";
        let (c, p) = run(g, &invite(3, "198.51.100.7", "74951815283", pai));
        assert!(p.is_empty() && c.iter().any(|m| m.starts_with("SIP/2.0 403")), "{c:?} {p:?}");

        // cli_allowed=Y, no number set, an address no provider has, and the check off: all pass.
        for (n, to, mode) in [
            (4, "198.51.100.8", CallerIdMode::Reject),
            (5, "198.51.100.9", CallerIdMode::Reject),
            (6, "192.0.2.44", CallerIdMode::Reject),
            (7, "198.51.100.7", CallerIdMode::Off),
        ] {
            let (g, _) = guard(mode);
            let (c, p) = run(g, &invite(n, to, "100", ""));
            assert_eq!(p.len(), 1, "{to} {mode:?}: {p:?} {c:?}");
        }
    }

    #[test]
    fn replace_splices_the_providers_number_into_from_and_pai_and_keeps_the_rest() {
        let (g, stats) = guard(CallerIdMode::Replace);
        let pai = "P-Asserted-Identity: \"Desk\" <sip:100;cpc=x@10.99.0.10>, <tel:100;ext=2>\r\n";
        let (c, p) = run(g, &invite(8, "198.51.100.7", "100", pai));
        assert!(c.iter().all(|m| !m.starts_with("SIP/2.0 403")), "{c:?}");
        assert_eq!(p.len(), 1, "{p:?}");
        let line = |name: &str| p[0].lines().find(|l| l.starts_with(name)).unwrap_or_default().to_string();
        assert!(line("From: ").starts_with("From: \"Office\" <sip:74951815283@"), "{}", p[0]);
        assert!(line("From: ").contains(">;tag="), "the tag (masked by the engine) stays: {}", p[0]);
        assert_eq!(
            line("P-Asserted-Identity: "),
            "P-Asserted-Identity: \"Desk\" <sip:74951815283;cpc=x@10.99.0.10>, <tel:74951815283;ext=2>",
            "{}",
            p[0]
        );
        assert_eq!(stats.replaced.load(Ordering::Relaxed), 1);
        // Folded: no rewrite, the 403.
        let (g, stats) = guard(CallerIdMode::Replace);
        let (c, p) =
            run(g, &invite(9, "198.51.100.7", "100", "P-Asserted-Identity: <sip:100@10.99.0.10>,\r\n <tel:100>\r\n"));
        assert!(p.is_empty() && c.iter().any(|m| m.starts_with("SIP/2.0 403")), "{c:?} {p:?}");
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn counters_count_each_outcome() {
        let (mut g, stats) = guard(CallerIdMode::Reject);
        let now = Instant::now();
        for (n, to, from) in
            [(1, "198.51.100.7", "+74951815283"), (2, "198.51.100.7", "100"), (3, "198.51.100.9", "100")]
        {
            let text = invite(n, to, from, "");
            let msg = sbc_proto::sip::message::Message::index(text.as_bytes(), 64).unwrap();
            let req = sbc_proto::sip::sanity::check(msg).map_err(|e| e.1).unwrap();
            g.admit(now, &core(), &req);
        }
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!((c(&stats.matched), c(&stats.rejected), c(&stats.passed)), (1, 1, 1));
    }
}
