//! Userspace half of the trunk-side XDP filter (issue 3): loads the program that
//! `build.rs` compiled from `ebpf/xdp`, attaches it to an interface, keeps its maps in sync
//! with the configuration (protected destinations, allowlist, blocklist) and reads its
//! counters. Detaches on drop.
//!
//! This crate is where the BPF syscalls (through aya) live; the daemon sees only
//! [`XdpFilter`], [`Prefix`], [`Counters`] and [`XdpError`].
//!
//! Map layout and the reason the allowlist swap is atomic are documented in
//! `ebpf/xdp/src/main.rs`; the contract (names, key layouts, counter indices) is
//! `sbc_ebpf_common`.
//!
//! Not done here: resource limits. Since Linux 5.11 BPF memory is charged to the
//! cgroup, not `RLIMIT_MEMLOCK`; on older kernels the caller must raise that limit.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, ArrayOfMaps, HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
    programs::{ProgramError, TestRun as _, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
pub use sbc_ebpf_common::Stat as Verdict;
use sbc_ebpf_common::{
    ALLOW_MAX_ENTRIES, BAN_FOREVER, BLOCK_HOST_MAX_ENTRIES, BLOCK_MAX_ENTRIES, BanExpiry, FlagValue, LPM_FLAGS,
    PRESENT, PROGRAM_NAME, PROTECTED_MAX_ENTRIES, ProtectedKey, Stat, V4_WILDCARD, V6_WILDCARD, config, map,
    port_flags, proto,
};
/// The one prefix type of the project, shared with the allowlist and the guard (sbc-policy is
/// sans-IO and depends on no other workspace crate, so the loader does not pull in SIP).
pub use sbc_policy::{Prefix, PrefixError};

/// The eBPF object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sbc-ebpf-xdp"));

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`); fails if the driver has no XDP support.
    Native,
    /// Generic XDP after the skb is built (`XDP_FLAGS_SKB_MODE`); works everywhere, slower.
    Skb,
    /// Native, falling back to generic (with a warning) if native is refused.
    Auto,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
            AttachMode::Auto => "auto",
        })
    }
}

/// What the program decided for a frame ([`XdpFilter::test_run`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAction {
    Pass,
    Drop,
    /// Any other XDP action (the program never returns one).
    Other(u32),
}

impl XdpAction {
    fn from_raw(v: u32) -> Self {
        match v {
            2 => XdpAction::Pass, // XDP_PASS
            1 => XdpAction::Drop, // XDP_DROP
            other => XdpAction::Other(other),
        }
    }
}

/// Transport protocol of a protected destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Udp => proto::UDP,
            Proto::Tcp => proto::TCP,
        }
    }
}

/// One per-source packet-rate limit: `burst` packets at once, then `pps` per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub pps: u32,
    pub burst: u32,
}

impl RateLimit {
    /// The program's emission interval, ns between two packets at `pps` (at least 1; 0 is
    /// "off" to the program, and `pps` 0 is off here too).
    fn emission_ns(self) -> u32 {
        1_000_000_000u32.checked_div(self.pps).map_or(0, |ns| ns.max(1))
    }
}

/// The per-source packet-rate limits of [`XdpFilter::set_rate_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Sources not on the allowlist, on an external SIP port that is not protected (the
    /// allowlist already drops them on the protected ones).
    pub unlisted: RateLimit,
    /// Allowlisted sources on a protected port (providers: rate limited, never banned).
    pub listed: RateLimit,
    /// An IPv6 source is limited per prefix of this length (`0..=128`).
    pub ipv6_prefix_len: u8,
}

/// Everything that can go wrong; each variant names the interface or map concerned.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("no XDP object embedded: sbc-xdp was built with AYA_BUILD_SKIP set")]
    NoObject,
    #[error("loading the XDP object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the kernel rejected the XDP program: {0}")]
    Verify(#[source] ProgramError),
    #[error("cannot attach XDP to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: AttachMode,
        #[source]
        source: ProgramError,
    },
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(#[source] ProgramError),
    #[error("XDP object has no {0} (object and sbc-ebpf-common out of step?)")]
    Missing(&'static str),
    #[error("XDP map {map}: {op} failed: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{what}: {count} entries exceed the capacity {max}")]
    TooMany { what: &'static str, count: usize, max: u32 },
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> XdpError {
    move |source| XdpError::Map { map, op, source }
}

/// The verdict counters, summed over CPUs. One field per [`Stat`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    values: [u64; Stat::COUNT as usize],
}

impl Counters {
    pub fn get(&self, stat: Stat) -> u64 {
        self.values.get(stat as usize).copied().unwrap_or(0)
    }

    /// `(name, value)` for every counter, in index order (for metrics and `sbc stats`).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Stat::ALL.iter().map(|s| (s.name(), self.get(*s)))
    }

    pub fn pass_not_protected(&self) -> u64 {
        self.get(Stat::PassNotProtected)
    }
    pub fn pass_allowed(&self) -> u64 {
        self.get(Stat::PassAllowed)
    }
    pub fn drop_not_allowed(&self) -> u64 {
        self.get(Stat::DropNotAllowed)
    }
    pub fn drop_blocked(&self) -> u64 {
        self.get(Stat::DropBlocked)
    }
    pub fn pass_fragment(&self) -> u64 {
        self.get(Stat::PassFragment)
    }
    pub fn pass_unparsed(&self) -> u64 {
        self.get(Stat::PassUnparsed)
    }
    pub fn pass_non_ip(&self) -> u64 {
        self.get(Stat::PassNonIp)
    }
    pub fn pass_other_proto(&self) -> u64 {
        self.get(Stat::PassOtherProto)
    }
    pub fn pass_internal_error(&self) -> u64 {
        self.get(Stat::PassInternalError)
    }
    pub fn drop_rate_limited(&self) -> u64 {
        self.get(Stat::DropRateLimited)
    }
    pub fn drop_rate_limited_listed(&self) -> u64 {
        self.get(Stat::DropRateLimitedListed)
    }

    /// Packets seen (every packet increments exactly one counter).
    pub fn total(&self) -> u64 {
        self.values.iter().sum()
    }

    /// Counter-wise `self - earlier` (saturating), for "what happened during this test".
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut values = self.values;
        for (v, e) in values.iter_mut().zip(earlier.values.iter()) {
            *v = v.saturating_sub(*e);
        }
        Counters { values }
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, v) in self.iter() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{name}={v}")?;
        }
        Ok(())
    }
}

type AllowV4 = LpmTrie<MapData, [u8; 4], FlagValue>;
type AllowV6 = LpmTrie<MapData, [u8; 16], FlagValue>;

/// The XDP filter attached to one interface. Detaches (and unloads) on drop.
pub struct XdpFilter {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
    iface: String,
    mode: Option<AttachMode>,
    protected: HashMap<MapData, ProtectedKey, FlagValue>,
    allow_v4: ArrayOfMaps<MapData, AllowV4>,
    allow_v6: ArrayOfMaps<MapData, AllowV6>,
    block_v4: LpmTrie<MapData, [u8; 4], BanExpiry>,
    block_v6: LpmTrie<MapData, [u8; 16], BanExpiry>,
    block_v4_host: HashMap<MapData, [u8; 4], BanExpiry>,
    block_v6_host: HashMap<MapData, [u8; 16], BanExpiry>,
    stats: PerCpuArray<MapData, u64>,
    ports: Array<MapData, u8>,
    config: Array<MapData, u32>,
    protected_now: Vec<ProtectedKey>,
    /// `PORTS` as written: the protection bits of `protected_now` ...
    ports_now: BTreeMap<u16, u8>,
    /// ... or'ed with these rate bits ([`XdpFilter::set_rate_limit`]).
    rate_ports: BTreeMap<u16, u8>,
    /// The blocklist as written to the maps: prefix → its [`BanExpiry`].
    blocked: BTreeMap<Prefix, BanExpiry>,
    /// Entries per blocklist map, indexed like [`BlockMap::config_index`]: kept here so
    /// that a ban costs no scan of the map or of `blocked`.
    block_len: [u32; 4],
}

impl fmt::Debug for XdpFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpFilter")
            .field("iface", &self.iface)
            .field("mode", &self.mode)
            .field("protected", &self.protected_now.len())
            .finish_non_exhaustive()
    }
}

impl XdpFilter {
    /// Loads the program, installs an empty allowlist (so protected destinations are
    /// closed, not open, until [`replace_allowlist`](Self::replace_allowlist)) and attaches
    /// it to `iface`.
    ///
    /// With nothing protected yet, the attached program passes everything: call
    /// [`set_protected`](Self::set_protected) and `replace_allowlist` next (in either order).
    ///
    /// On error nothing stays attached; the daemon falls back to userspace filtering.
    pub fn attach(iface: &str, mode: AttachMode) -> Result<Self, XdpError> {
        let mut filter = Self::load()?;
        let program = filter.program_mut()?;
        let attach = |program: &mut Xdp, m: AttachMode, xm: XdpMode| {
            program.attach(iface, xm).map_err(|source| XdpError::Attach { iface: iface.to_owned(), mode: m, source })
        };
        let (link, used) = match mode {
            AttachMode::Native => (attach(program, mode, XdpMode::Driver)?, mode),
            AttachMode::Skb => (attach(program, mode, XdpMode::Skb)?, mode),
            AttachMode::Auto => match attach(program, AttachMode::Native, XdpMode::Driver) {
                Ok(link) => (link, AttachMode::Native),
                Err(native) => {
                    tracing::warn!(%iface, error = %native, "native XDP refused; trying generic (skb) mode");
                    (attach(program, AttachMode::Skb, XdpMode::Skb)?, AttachMode::Skb)
                }
            },
        };
        filter.link = Some(link);
        filter.iface = iface.to_owned();
        filter.mode = Some(used);
        tracing::info!(%iface, mode = %used, "XDP filter attached");
        Ok(filter)
    }

    /// Loads and verifies the program and its maps without attaching it anywhere, with an
    /// empty allowlist installed. [`attach`](Self::attach) is this plus the attach; on its
    /// own it serves [`test_run`](Self::test_run).
    pub fn load() -> Result<Self, XdpError> {
        if PROGRAM_OBJECT.is_empty() {
            return Err(XdpError::NoObject);
        }
        let mut ebpf = EbpfLoader::new().load(PROGRAM_OBJECT).map_err(XdpError::Load)?;
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(XdpError::Missing(name));
        let protected = HashMap::try_from(take(map::PROTECTED)?).map_err(map_err(map::PROTECTED, "open"))?;
        let allow_v4 = ArrayOfMaps::try_from(take(map::ALLOW_V4)?).map_err(map_err(map::ALLOW_V4, "open"))?;
        let allow_v6 = ArrayOfMaps::try_from(take(map::ALLOW_V6)?).map_err(map_err(map::ALLOW_V6, "open"))?;
        let block_v4 = LpmTrie::try_from(take(map::BLOCK_V4)?).map_err(map_err(map::BLOCK_V4, "open"))?;
        let block_v6 = LpmTrie::try_from(take(map::BLOCK_V6)?).map_err(map_err(map::BLOCK_V6, "open"))?;
        let block_v4_host =
            HashMap::try_from(take(map::BLOCK_V4_HOST)?).map_err(map_err(map::BLOCK_V4_HOST, "open"))?;
        let block_v6_host =
            HashMap::try_from(take(map::BLOCK_V6_HOST)?).map_err(map_err(map::BLOCK_V6_HOST, "open"))?;
        let stats = PerCpuArray::try_from(take(map::STATS)?).map_err(map_err(map::STATS, "open"))?;
        let ports = Array::try_from(take(map::PORTS)?).map_err(map_err(map::PORTS, "open"))?;
        let config = Array::try_from(take(map::CONFIG)?).map_err(map_err(map::CONFIG, "open"))?;

        let mut filter = XdpFilter {
            ebpf,
            link: None,
            iface: String::new(),
            mode: None,
            protected,
            allow_v4,
            allow_v6,
            block_v4,
            block_v6,
            block_v4_host,
            block_v6_host,
            stats,
            ports,
            config,
            protected_now: Vec::new(),
            ports_now: BTreeMap::new(),
            rate_ports: BTreeMap::new(),
            blocked: BTreeMap::new(),
            block_len: [0; 4],
        };
        // Before any packet can reach it: an empty slot would make the program fail open.
        filter.replace_allowlist(&[])?;
        filter.program_mut()?.load().map_err(XdpError::Verify)?;
        Ok(filter)
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, XdpError> {
        self.ebpf.program_mut(PROGRAM_NAME).ok_or(XdpError::Missing(PROGRAM_NAME))?.try_into().map_err(XdpError::Verify)
    }

    fn program(&self) -> Option<&Xdp> {
        self.ebpf.program(PROGRAM_NAME)?.try_into().ok()
    }

    /// Runs the program once on `frame` (an Ethernet frame) with `BPF_PROG_TEST_RUN`,
    /// against the current maps, and returns its action. Counters count it like any
    /// packet. For tests and diagnostics (`sbc xdp explain`-style tools).
    pub fn test_run(&self, frame: &[u8]) -> Result<XdpAction, XdpError> {
        let program = self.program().ok_or(XdpError::Missing(PROGRAM_NAME))?;
        let opts = TestRunOptions { data_in: Some(frame), repeat: 1, ..Default::default() };
        let r = program.test_run(opts).map_err(XdpError::TestRun)?;
        Ok(XdpAction::from_raw(r.return_value))
    }

    /// The interface it is attached to (empty if only [`load`](Self::load)ed).
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The mode actually in use (never [`AttachMode::Auto`]); `None` if not attached.
    pub fn mode(&self) -> Option<AttachMode> {
        self.mode
    }

    /// The kernel's id of the loaded program (for `bpftool prog show id N`).
    pub fn program_id(&self) -> Option<u32> {
        self.program()?.info().ok().map(|i| i.id())
    }

    /// Sets the protected destinations: TCP/UDP to these `(address, port, protocol)` is
    /// subject to the allowlist. An unspecified address (`0.0.0.0`, `::`) protects the port
    /// on every address of its family.
    ///
    /// Additions are in force before removals start, so a destination in both the old and
    /// the new set is never momentarily unprotected.
    pub fn set_protected(&mut self, dests: &[(IpAddr, u16, Proto)]) -> Result<(), XdpError> {
        let keys = protected_keys(dests);
        if keys.len() > PROTECTED_MAX_ENTRIES as usize {
            return Err(XdpError::TooMany {
                what: "protected destinations",
                count: keys.len(),
                max: PROTECTED_MAX_ENTRIES,
            });
        }
        let new_ports = port_table(&keys);
        // The hash decides while the sets change; the one-address compare comes back last.
        for one in [config::PROTECTED_V4_ONE, config::PROTECTED_V6_ONE] {
            self.config.set(one, 0, 0).map_err(map_err(map::CONFIG, "set"))?;
        }
        for k in &keys {
            self.protected.insert(k, PRESENT, 0).map_err(map_err(map::PROTECTED, "insert"))?;
        }
        // Union first, then removals, then the exact new flags.
        let touched: BTreeSet<u16> = self.ports_now.keys().chain(new_ports.keys()).copied().collect();
        let rate = |port: &u16| self.rate_ports.get(port).copied().unwrap_or(0);
        for &port in &touched {
            let union = self.ports_now.get(&port).copied().unwrap_or(0) | new_ports.get(&port).copied().unwrap_or(0);
            self.ports.set(u32::from(port), union | rate(&port), 0).map_err(map_err(map::PORTS, "set"))?;
        }
        let stale: Vec<ProtectedKey> =
            self.protected.keys().filter_map(Result::ok).filter(|k| !keys.contains(k)).collect();
        for k in &stale {
            match self.protected.remove(k) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(map::PROTECTED, "remove")(e)),
            }
        }
        let rate = |port: &u16| self.rate_ports.get(port).copied().unwrap_or(0);
        for &port in &touched {
            let flags = new_ports.get(&port).copied().unwrap_or(0);
            self.ports.set(u32::from(port), flags | rate(&port), 0).map_err(map_err(map::PORTS, "set"))?;
        }
        let (one_v4, one_v6) = one_exact_address(&keys);
        if let Some(a) = one_v4 {
            self.config.set(config::PROTECTED_V4_ADDR, a, 0).map_err(map_err(map::CONFIG, "set"))?;
            self.config.set(config::PROTECTED_V4_ONE, 1, 0).map_err(map_err(map::CONFIG, "set"))?;
        }
        if let Some(words) = one_v6 {
            for (i, w) in (0u32..).zip(words) {
                self.config.set(config::PROTECTED_V6_ADDR + i, w, 0).map_err(map_err(map::CONFIG, "set"))?;
            }
            self.config.set(config::PROTECTED_V6_ONE, 1, 0).map_err(map_err(map::CONFIG, "set"))?;
        }
        self.protected_now = keys;
        self.ports_now = new_ports;
        Ok(())
    }

    /// Sets the per-source packet-rate limit (`None`: off) and the external SIP ports it
    /// applies to (any local address on the interface). What the program does with it is in
    /// `ebpf/xdp` (GCRA per source in an LRU hash; the allowlist and the blocklist decide
    /// first). The limit is off while it changes (a few packets pass unlimited), never
    /// half-set: both emission intervals go to 0 first and are written last.
    pub fn set_rate_limit(&mut self, limits: Option<&RateLimits>, ports: &[(u16, Proto)]) -> Result<(), XdpError> {
        let set =
            |config: &mut Array<MapData, u32>, i: u32, v: u32| config.set(i, v, 0).map_err(map_err(map::CONFIG, "set"));
        set(&mut self.config, config::RATE_EMISSION_NS, 0)?;
        set(&mut self.config, config::RATE_LISTED_EMISSION_NS, 0)?;
        let new_rate = if limits.is_some() { rate_port_table(ports) } else { BTreeMap::new() };
        let touched: BTreeSet<u16> = self.rate_ports.keys().chain(new_rate.keys()).copied().collect();
        for &port in &touched {
            let flags = self.ports_now.get(&port).copied().unwrap_or(0) | new_rate.get(&port).copied().unwrap_or(0);
            self.ports.set(u32::from(port), flags, 0).map_err(map_err(map::PORTS, "set"))?;
        }
        self.rate_ports = new_rate;
        let Some(l) = limits else { return Ok(()) };
        for (i, w) in (0u32..).zip(v6_mask_words(l.ipv6_prefix_len)) {
            set(&mut self.config, config::RATE_V6_MASK + i, w)?;
        }
        set(&mut self.config, config::RATE_BURST, l.unlisted.burst.max(1))?;
        set(&mut self.config, config::RATE_LISTED_BURST, l.listed.burst.max(1))?;
        set(&mut self.config, config::RATE_EMISSION_NS, l.unlisted.emission_ns())?;
        set(&mut self.config, config::RATE_LISTED_EMISSION_NS, l.listed.emission_ns())?;
        Ok(())
    }

    /// Replaces the allowlist atomically (see the map-in-map note in `ebpf/xdp`): fresh
    /// tries are filled completely, then swapped in with one update per family. On error
    /// nothing has been swapped for that family and the previous list stays in force.
    /// Duplicates and overlapping prefixes are fine.
    pub fn replace_allowlist(&mut self, prefixes: &[Prefix]) -> Result<(), XdpError> {
        let (v4, v6) = lpm_keys(prefixes);
        for (what, n) in [("IPv4 allowlist", v4.len()), ("IPv6 allowlist", v6.len())] {
            if n > ALLOW_MAX_ENTRIES as usize {
                return Err(XdpError::TooMany { what, count: n, max: ALLOW_MAX_ENTRIES });
            }
        }
        let mut new_v4 = AllowV4::create(ALLOW_MAX_ENTRIES, LPM_FLAGS).map_err(map_err(map::ALLOW_V4, "create"))?;
        for k in &v4 {
            new_v4.insert(k, PRESENT, 0).map_err(map_err(map::ALLOW_V4, "insert"))?;
        }
        let mut new_v6 = AllowV6::create(ALLOW_MAX_ENTRIES, LPM_FLAGS).map_err(map_err(map::ALLOW_V6, "create"))?;
        for k in &v6 {
            new_v6.insert(k, PRESENT, 0).map_err(map_err(map::ALLOW_V6, "insert"))?;
        }
        // The swap. Each returns after an RCU grace period, so no program run still uses
        // the old trie; our fd to the new one can be dropped, the slot holds a reference.
        self.allow_v4.set(0, &new_v4, 0).map_err(map_err(map::ALLOW_V4, "swap"))?;
        self.allow_v6.set(0, &new_v6, 0).map_err(map_err(map::ALLOW_V6, "swap"))?;
        Ok(())
    }

    /// Adds a prefix to the blocklist (dropped for every destination) until `until`
    /// (`None`: until [`unblock`](Self::unblock)ed). The program itself stops dropping at
    /// `until` ([`ban_expiry`] converts it to the kernel's clock); the entry stays in the map
    /// until `unblock`. Banning a prefix again replaces its expiry. A /32 or /128 goes to the
    /// address hash, a shorter prefix to the trie. Costs two map syscalls, no scan.
    pub fn block(&mut self, prefix: Prefix, until: Option<Instant>) -> Result<(), XdpError> {
        let expiry = until.map_or(BAN_FOREVER, ban_expiry);
        let which = BlockMap::of(prefix);
        let known = self.blocked.get(&prefix).copied();
        if known == Some(expiry) {
            return Ok(());
        }
        let len = self.block_len_of(which);
        if known.is_none() && len >= which.capacity() {
            return Err(XdpError::TooMany { what: which.name(), count: len as usize + 1, max: which.capacity() });
        }
        match (lpm_key(prefix), which) {
            (LpmKey::V4(k), BlockMap::V4Host) => {
                self.block_v4_host.insert(k.data(), expiry, 0).map_err(map_err(which.name(), "insert"))?
            }
            (LpmKey::V6(k), BlockMap::V6Host) => {
                self.block_v6_host.insert(k.data(), expiry, 0).map_err(map_err(which.name(), "insert"))?
            }
            (LpmKey::V4(k), _) => self.block_v4.insert(&k, expiry, 0).map_err(map_err(which.name(), "insert"))?,
            (LpmKey::V6(k), _) => self.block_v6.insert(&k, expiry, 0).map_err(map_err(which.name(), "insert"))?,
        }
        self.blocked.insert(prefix, expiry);
        if known.is_none() {
            self.set_block_len(which, len.saturating_add(1))?;
        }
        Ok(())
    }

    /// Removes a prefix from the blocklist; `Ok(false)` if it was not there.
    pub fn unblock(&mut self, prefix: Prefix) -> Result<bool, XdpError> {
        let which = BlockMap::of(prefix);
        let r = match (lpm_key(prefix), which) {
            (LpmKey::V4(k), BlockMap::V4Host) => self.block_v4_host.remove(&k.data()),
            (LpmKey::V6(k), BlockMap::V6Host) => self.block_v6_host.remove(&k.data()),
            (LpmKey::V4(k), _) => self.block_v4.remove(&k),
            (LpmKey::V6(k), _) => self.block_v6.remove(&k),
        };
        let was_there = match r {
            Ok(()) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(map_err(which.name(), "remove")(e)),
        };
        if self.blocked.remove(&prefix).is_some() {
            let len = self.block_len_of(which);
            self.set_block_len(which, len.saturating_sub(1))?;
        }
        Ok(was_there)
    }

    /// The blocklist, sorted.
    pub fn blocked(&self) -> Vec<Prefix> {
        self.blocked.keys().copied().collect()
    }

    /// Number of blocklist entries (all four maps).
    pub fn blocked_len(&self) -> usize {
        self.blocked.len()
    }

    fn block_len_of(&self, which: BlockMap) -> u32 {
        self.block_len.get(which.config_index() as usize).copied().unwrap_or(0)
    }

    /// Tells the program how many entries a blocklist map holds (0: skip the lookup).
    fn set_block_len(&mut self, which: BlockMap, n: u32) -> Result<(), XdpError> {
        self.config.set(which.config_index(), n, 0).map_err(map_err(map::CONFIG, "set"))?;
        if let Some(slot) = self.block_len.get_mut(which.config_index() as usize) {
            *slot = n;
        }
        Ok(())
    }

    /// The verdict counters summed over all CPUs.
    pub fn stats(&self) -> Result<Counters, XdpError> {
        let mut c = Counters::default();
        for (i, slot) in c.values.iter_mut().enumerate() {
            let per_cpu = self.stats.get(&(i as u32), 0).map_err(map_err(map::STATS, "read"))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(c)
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            match self.program_mut().map(|p| p.detach(link)) {
                Ok(Ok(())) => tracing::info!(iface = %self.iface, "XDP filter detached"),
                Ok(Err(e)) => {
                    tracing::warn!(iface = %self.iface, error = %e, "XDP detach failed; unloading anyway")
                }
                Err(e) => {
                    tracing::warn!(iface = %self.iface, error = %e, "XDP detach impossible; unloading anyway")
                }
            }
        }
        // Dropping `ebpf` unloads the program; the maps go with their last fd.
    }
}

/// The four blocklist maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockMap {
    V4Trie,
    V6Trie,
    V4Host,
    V6Host,
}

impl BlockMap {
    fn of(p: Prefix) -> Self {
        match (p.is_ipv4(), p.prefix_len()) {
            (true, 32) => BlockMap::V4Host,
            (true, _) => BlockMap::V4Trie,
            (false, 128) => BlockMap::V6Host,
            (false, _) => BlockMap::V6Trie,
        }
    }

    fn config_index(self) -> u32 {
        match self {
            BlockMap::V4Trie => config::BLOCK_V4_LEN,
            BlockMap::V6Trie => config::BLOCK_V6_LEN,
            BlockMap::V4Host => config::BLOCK_V4_HOST_LEN,
            BlockMap::V6Host => config::BLOCK_V6_HOST_LEN,
        }
    }

    fn name(self) -> &'static str {
        match self {
            BlockMap::V4Trie => map::BLOCK_V4,
            BlockMap::V6Trie => map::BLOCK_V6,
            BlockMap::V4Host => map::BLOCK_V4_HOST,
            BlockMap::V6Host => map::BLOCK_V6_HOST,
        }
    }

    fn capacity(self) -> u32 {
        match self {
            BlockMap::V4Trie | BlockMap::V6Trie => BLOCK_MAX_ENTRIES,
            BlockMap::V4Host | BlockMap::V6Host => BLOCK_HOST_MAX_ENTRIES,
        }
    }
}

/// `until` on the kernel's monotonic clock (`bpf_ktime_get_ns` is `CLOCK_MONOTONIC`), as a
/// blocklist value: now on that clock (`clock_gettime(CLOCK_MONOTONIC)`) plus what remains
/// until `until`. `Instant` is `CLOCK_MONOTONIC` too on Linux, but std does not expose its
/// raw value, so the two clocks are read back to back (a few ns apart). An `until` already
/// past gives "now" (the ban is out of force at once); an unreadable clock, never expiring
/// (the daemon still unbans on time, and fails closed is what a ban asks for).
pub fn ban_expiry(until: Instant) -> BanExpiry {
    sbc_ebpf_common::ban_expiry(ban_expiry_ns(until))
}

/// [`ban_expiry`] as ns of the kernel's monotonic clock (`u64::MAX`: never).
pub fn ban_expiry_ns(until: Instant) -> u64 {
    let remaining = until.saturating_duration_since(Instant::now());
    let Ok(now) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return u64::MAX;
    };
    let now = Duration::from(now);
    now.saturating_add(remaining).as_nanos().try_into().unwrap_or(u64::MAX)
}

/// A delete of a key that is not there: aya reports it as a syscall error (ENOENT).
fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Keys for `PROTECTED`, deduplicated, IPv4 (and IPv4-mapped IPv6) stored IPv4-mapped.
fn protected_keys(dests: &[(IpAddr, u16, Proto)]) -> Vec<ProtectedKey> {
    let mut keys: Vec<ProtectedKey> = dests
        .iter()
        .map(|&(addr, port, p)| match addr {
            IpAddr::V4(a) => ProtectedKey::v4(a.octets(), port, p.number()),
            IpAddr::V6(a) => ProtectedKey::v6(a.octets(), port, p.number()),
        })
        .collect();
    keys.sort_by_key(|k| (k.addr, k.port, k.proto));
    keys.dedup();
    keys
}

/// Per family, the address every exact (non-wildcard) protected key has, when they all have
/// the same one, as the program's `CONFIG` words (`config::PROTECTED_V4_ADDR`,
/// `config::PROTECTED_V6_ADDR`): then `PORTS` plus one compare is the exact test, and the
/// program skips the `PROTECTED` hash lookup. `None` when a family has no exact key (nothing
/// to compare) or several addresses (the hash decides).
fn one_exact_address(keys: &[ProtectedKey]) -> (Option<u32>, Option<[u32; 4]>) {
    let word = |b: &[u8]| -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(b.get(..4).unwrap_or(&[0; 4]));
        u32::from_ne_bytes(w)
    };
    let one = |v4: bool| {
        let mut addrs = keys
            .iter()
            .filter(|k| k.addr != V4_WILDCARD && k.addr != V6_WILDCARD)
            .filter(|k| (k.addr[..12] == V4_WILDCARD[..12]) == v4)
            .map(|k| k.addr);
        let first = addrs.next()?;
        addrs.all(|a| a == first).then_some(first)
    };
    let v4 = one(true).map(|a| word(&a[12..]));
    let v6 = one(false).map(|a| [word(&a[0..]), word(&a[4..]), word(&a[8..]), word(&a[12..])]);
    (v4, v6)
}

/// `PORTS` rate bits for the external SIP ports.
fn rate_port_table(ports: &[(u16, Proto)]) -> BTreeMap<u16, u8> {
    let mut t = BTreeMap::new();
    for &(port, p) in ports {
        *t.entry(port).or_insert(0) |= match p {
            Proto::Udp => port_flags::RATE_UDP,
            Proto::Tcp => port_flags::RATE_TCP,
        };
    }
    t
}

/// The IPv6 rate-key mask for a prefix length, as the program's four `CONFIG` words.
fn v6_mask_words(len: u8) -> [u32; 4] {
    let mut bytes = [0u8; 16];
    for (i, b) in (0u32..).zip(bytes.iter_mut()) {
        let bits = u32::from(len.min(128)).saturating_sub(8 * i).min(8);
        *b = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
    let word = |i: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(bytes.get(i..i + 4).unwrap_or(&[0; 4]));
        u32::from_ne_bytes(w)
    };
    [word(0), word(4), word(8), word(12)]
}

/// `PORTS` entries (non-zero only) for a set of protected keys.
fn port_table(keys: &[ProtectedKey]) -> BTreeMap<u16, u8> {
    let mut t = BTreeMap::new();
    for k in keys {
        let udp = k.proto == proto::UDP;
        let bit = match (k.addr, udp) {
            (a, true) if a == V4_WILDCARD => port_flags::UDP_ANY_V4,
            (a, false) if a == V4_WILDCARD => port_flags::TCP_ANY_V4,
            (a, true) if a == V6_WILDCARD => port_flags::UDP_ANY_V6,
            (a, false) if a == V6_WILDCARD => port_flags::TCP_ANY_V6,
            (_, true) => port_flags::UDP_EXACT,
            (_, false) => port_flags::TCP_EXACT,
        };
        *t.entry(u16::from_be_bytes(k.port)).or_insert(0) |= bit;
    }
    t
}

enum LpmKey {
    V4(Key<[u8; 4]>),
    V6(Key<[u8; 16]>),
}

fn lpm_key(p: Prefix) -> LpmKey {
    match p.addr() {
        IpAddr::V4(a) => LpmKey::V4(Key::new(u32::from(p.prefix_len()), a.octets())),
        IpAddr::V6(a) => LpmKey::V6(Key::new(u32::from(p.prefix_len()), a.octets())),
    }
}

type KeysV4 = Vec<Key<[u8; 4]>>;
type KeysV6 = Vec<Key<[u8; 16]>>;

/// LPM keys per family, deduplicated.
fn lpm_keys(prefixes: &[Prefix]) -> (KeysV4, KeysV6) {
    let mut sorted = prefixes.to_vec();
    sorted.sort();
    sorted.dedup();
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for p in sorted {
        match lpm_key(p) {
            LpmKey::V4(k) => v4.push(k),
            LpmKey::V6(k) => v6.push(k),
        }
    }
    (v4, v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_is_embedded_and_is_bpf_elf() {
        if std::env::var_os("AYA_BUILD_SKIP").is_some() {
            return;
        }
        assert!(PROGRAM_OBJECT.len() > 64, "object missing");
        assert_eq!(&PROGRAM_OBJECT[..4], b"\x7fELF");
        // e_machine (offset 18, little-endian) = EM_BPF (247)
        assert_eq!(u16::from_le_bytes([PROGRAM_OBJECT[18], PROGRAM_OBJECT[19]]), 247);
    }

    #[test]
    fn protected_keys_map_v4_and_dedup() {
        let dests = [
            ("192.0.2.1".parse().unwrap(), 5060, Proto::Udp),
            ("::ffff:192.0.2.1".parse().unwrap(), 5060, Proto::Udp),
            ("192.0.2.1".parse().unwrap(), 5060, Proto::Tcp),
            ("0.0.0.0".parse().unwrap(), 5061, Proto::Tcp),
        ];
        let keys = protected_keys(&dests);
        assert_eq!(keys.len(), 3, "v4 and v4-mapped are the same destination");
        assert!(keys.contains(&ProtectedKey::v4([192, 0, 2, 1], 5060, proto::UDP)));
        assert!(keys.contains(&ProtectedKey::v4([0; 4], 5061, proto::TCP)));
        assert!(keys.iter().any(|k| k.addr == sbc_ebpf_common::V4_WILDCARD));
    }

    #[test]
    fn port_table_flags_wildcards_per_family_and_exact() {
        let keys = protected_keys(&[
            ("0.0.0.0".parse().unwrap(), 5060, Proto::Udp),
            ("::".parse().unwrap(), 5060, Proto::Tcp),
            ("192.0.2.1".parse().unwrap(), 5060, Proto::Tcp),
            ("2001:db8::1".parse().unwrap(), 5061, Proto::Udp),
        ]);
        let t = port_table(&keys);
        assert_eq!(t.len(), 2);
        assert_eq!(t[&5060], port_flags::UDP_ANY_V4 | port_flags::TCP_ANY_V6 | port_flags::TCP_EXACT);
        assert_eq!(t[&5061], port_flags::UDP_EXACT);
    }

    #[test]
    fn one_exact_address_per_family_or_none() {
        let keys = protected_keys(&[
            ("192.0.2.1".parse().unwrap(), 5060, Proto::Udp),
            ("192.0.2.1".parse().unwrap(), 5061, Proto::Tcp),
            ("0.0.0.0".parse().unwrap(), 5080, Proto::Udp),
            ("::".parse().unwrap(), 5080, Proto::Udp),
            ("2001:db8::1".parse().unwrap(), 5060, Proto::Udp),
        ]);
        let (v4, v6) = one_exact_address(&keys);
        assert_eq!(v4, Some(u32::from_ne_bytes([192, 0, 2, 1])), "wildcards do not count");
        let w = |b: [u8; 4]| u32::from_ne_bytes(b);
        assert_eq!(v6, Some([w([0x20, 0x01, 0x0d, 0xb8]), 0, 0, w([0, 0, 0, 1])]));
        let keys = protected_keys(&[
            ("192.0.2.1".parse().unwrap(), 5060, Proto::Udp),
            ("192.0.2.2".parse().unwrap(), 5060, Proto::Udp),
            ("::".parse().unwrap(), 5060, Proto::Udp),
        ]);
        assert_eq!(one_exact_address(&keys), (None, None), "two v4 addresses: the hash; v6 wildcard only");
    }

    #[test]
    fn rate_limit_parameters_as_the_program_reads_them() {
        assert_eq!(RateLimit { pps: 100, burst: 5 }.emission_ns(), 10_000_000);
        assert_eq!(RateLimit { pps: 3, burst: 5 }.emission_ns(), 333_333_333);
        assert_eq!(RateLimit { pps: 0, burst: 5 }.emission_ns(), 0, "0 pps: off");
        assert_eq!(RateLimit { pps: u32::MAX, burst: 5 }.emission_ns(), 1, "never 0 while on");
        let t = rate_port_table(&[(5060, Proto::Udp), (5060, Proto::Tcp), (5080, Proto::Udp)]);
        assert_eq!(t[&5060], port_flags::RATE_UDP | port_flags::RATE_TCP);
        assert_eq!(t[&5080], port_flags::RATE_UDP);
        let w = |b: [u8; 4]| u32::from_ne_bytes(b);
        assert_eq!(v6_mask_words(64), [u32::MAX, u32::MAX, 0, 0]);
        assert_eq!(v6_mask_words(56), [u32::MAX, w([0xff, 0xff, 0xff, 0]), 0, 0]);
        assert_eq!(v6_mask_words(128), [u32::MAX; 4]);
        assert_eq!(v6_mask_words(33), [u32::MAX, w([0x80, 0, 0, 0]), 0, 0]);
        assert_eq!(v6_mask_words(0), [0; 4]);
    }

    #[test]
    fn lpm_keys_split_families_and_dedup() {
        let ps: Vec<Prefix> = ["203.0.113.0/24", "2001:db8::/32", "203.0.113.0/24", "198.51.100.7"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let (v4, v6) = lpm_keys(&ps);
        assert_eq!(v4.len(), 2);
        assert_eq!(v6.len(), 1);
        let lens: Vec<u32> = v4.iter().map(|k| k.prefix_len()).collect();
        assert!(lens.contains(&24) && lens.contains(&32));
        assert_eq!(v6[0].data()[..4], [0x20, 0x01, 0x0d, 0xb8]);
    }

    #[test]
    fn counters_since_and_display() {
        let mut a = Counters::default();
        let mut b = Counters::default();
        a.values[Stat::DropNotAllowed as usize] = 10;
        b.values[Stat::DropNotAllowed as usize] = 25;
        b.values[Stat::PassAllowed as usize] = 3;
        let d = b.since(&a);
        assert_eq!(d.drop_not_allowed(), 15);
        assert_eq!(d.pass_allowed(), 3);
        assert_eq!(d.total(), 18);
        assert!(d.to_string().contains("drop_not_allowed=15"));
    }

    #[test]
    fn single_addresses_go_to_the_hash_and_prefixes_to_the_trie() {
        let of = |s: &str| BlockMap::of(s.parse().unwrap());
        assert_eq!(of("198.51.100.7"), BlockMap::V4Host);
        assert_eq!(of("198.51.100.0/31"), BlockMap::V4Trie);
        assert_eq!(of("2001:db8::1"), BlockMap::V6Host);
        assert_eq!(of("2001:db8::/64"), BlockMap::V6Trie);
    }

    #[test]
    fn ban_expiry_is_on_the_monotonic_clock() {
        let mono = || Duration::from(nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap());
        let before = mono();
        let e = Duration::from_nanos(ban_expiry_ns(Instant::now() + Duration::from_secs(60)));
        let after = mono();
        assert!(e >= before + Duration::from_secs(60) && e <= after + Duration::from_secs(60), "{e:?}");
        // Already past: "now", so the program treats the ban as lapsed.
        let past = Duration::from_nanos(ban_expiry_ns(Instant::now().checked_sub(Duration::from_secs(5)).unwrap()));
        assert!(past >= after && past <= mono(), "{past:?}");
    }

    #[test]
    fn attach_mode_display() {
        assert_eq!(AttachMode::Native.to_string(), "native");
    }
}
