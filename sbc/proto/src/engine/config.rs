//! What the engine is configured with, already validated by the daemon's config layer.

use std::net::SocketAddr;
use std::time::Duration;

use crate::nat::NatMode;
use crate::sip::framer::Limits;
use crate::sip::uri::Transport;
use crate::transaction::Timers;

/// One side's addresses and policy.
///
/// A side may listen on IPv4 and IPv6 at once. A peer is always reached from a listen address
/// of its own family (the first one of that transport), and what the SBC writes on a flow (Via,
/// Contact, the hosts it substitutes) is of the flow's family: `advertise` when it is a name or
/// an address of that family, else the flow's own listen address (see
/// [`crate::topology::Topology::advertise`]).
#[derive(Debug, Clone)]
pub struct SideConfig {
    /// Host written in our Via and Contact on this side (an IP literal: for flows of its family).
    pub advertise: String,
    /// Listen addresses, in config order.
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    /// Mask Call-ID and tags toward this side, strip configured headers, replace the other
    /// side's host names in From/To.
    pub hide: bool,
    /// NAT handling for UAs on this side (short registration expiry, keepalive pings).
    pub nat: NatMode,
}

impl SideConfig {
    /// The listen addresses of transport `t`.
    pub fn listen(&self, t: Transport) -> &[SocketAddr] {
        match t {
            Transport::Udp => &self.udp,
            Transport::Tcp => &self.tcp,
            _ => &[],
        }
    }

    /// The address requests to `remote` leave from: the first listen address of transport `t`
    /// of `remote`'s family; None when the side has none (a peer of the other family is out of
    /// reach: IPv4 and IPv6 sockets do not talk to each other).
    pub fn local_for(&self, t: Transport, remote: SocketAddr) -> Option<SocketAddr> {
        self.listen(t).iter().copied().find(|a| a.is_ipv4() == remote.is_ipv4())
    }

    /// Whether `addr` is one of this side's listen addresses (any transport).
    pub fn listens_on(&self, addr: SocketAddr) -> bool {
        self.udp.contains(&addr) || self.tcp.contains(&addr)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreTarget {
    pub addr: SocketAddr,
    pub transport: Transport,
}

/// How the SBC keeps UAs behind NAT reachable (RFC 5626 §3.5's problem, solved from the edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatConfig {
    /// Registration expiry granted to UAs behind NAT (refreshes in between are absorbed);
    /// None keeps the registrar's.
    pub register_expiry: Option<Duration>,
    /// OPTIONS pings to UAs behind NAT over UDP; None: off.
    pub ping_interval: Option<Duration>,
    /// Unanswered pings in a row that end a binding.
    pub ping_failures: u32,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            register_expiry: Some(Duration::from_secs(60)),
            ping_interval: Some(Duration::from_secs(15)),
            ping_failures: 3,
        }
    }
}

/// Everything the engine needs, already validated by the daemon's config layer.
#[derive(Debug, Clone)]
pub struct Config {
    pub external: SideConfig,
    pub internal: SideConfig,
    /// In priority order: the first one up gets new requests.
    pub cores: Vec<CoreTarget>,
    /// OPTIONS probing of the cores; None disables it (cores are then assumed up).
    pub probe_interval: Option<Duration>,
    pub probe_timeout: Duration,
    pub limits: Limits,
    pub max_transactions: usize,
    pub max_dialogs: usize,
    pub max_registrations: usize,
    /// The registration cache's NAT keepalive settings.
    pub nat: NatConfig,
    pub secret: Vec<u8>,
    /// Headers removed from messages sent toward a hidden side.
    pub strip_headers: Vec<String>,
    /// Domains that may be seen outside: toward a hidden external side, every other host in
    /// the From, Referred-By and P-Asserted-Identity of what the internal side sends becomes
    /// the SBC's own (so the core's host names never leak, listed or not).
    pub public_domains: Vec<String>,
    /// Remove Authorization / Proxy-Authorization from requests leaving on the external side:
    /// credentials are for the core's realm, never for another subscriber.
    pub strip_credentials: bool,
    /// A confirmed dialog with no request for this long is forgotten.
    pub dialog_idle: Duration,
    pub timers: Timers,
    /// Seed of the branch/tag generator (the daemon passes OS randomness).
    pub seed: u64,
    /// Which shard this engine is (its number goes into our branches, tokens and masks; see
    /// [`super::steer`]); one shard by default.
    pub shard: crate::topology::Shard,
}

impl Config {
    /// A small valid configuration on documentation addresses: external 203.0.113.1:5060 (UDP,
    /// hidden), internal 10.99.0.1:5060 (UDP), one core 10.99.0.10:5070, no probing, fixed
    /// secret and seed. For tests, fuzzing and examples; the daemon builds its own from TOML.
    pub fn example() -> Config {
        let sa = |s: &str| s.parse::<SocketAddr>().ok();
        Config {
            external: SideConfig {
                advertise: "203.0.113.1".into(),
                udp: sa("203.0.113.1:5060").into_iter().collect(),
                tcp: Vec::new(),
                hide: true,
                nat: NatMode::On,
            },
            internal: SideConfig {
                advertise: "10.99.0.1".into(),
                udp: sa("10.99.0.1:5060").into_iter().collect(),
                tcp: Vec::new(),
                hide: false,
                nat: NatMode::Off,
            },
            cores: sa("10.99.0.10:5070")
                .map(|addr| CoreTarget { addr, transport: Transport::Udp })
                .into_iter()
                .collect(),
            probe_interval: None,
            probe_timeout: Duration::from_secs(2),
            limits: Limits::default(),
            max_transactions: 1000,
            max_dialogs: 1000,
            max_registrations: 1000,
            nat: NatConfig::default(),
            secret: b"example-secret".to_vec(),
            strip_headers: vec!["Server".into(), "User-Agent".into()],
            public_domains: Vec::new(),
            strip_credentials: true,
            dialog_idle: Duration::from_secs(3600),
            timers: Timers::default(),
            seed: 7,
            shard: crate::topology::Shard::default(),
        }
    }
}
