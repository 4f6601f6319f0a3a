//! The contract between the XDP program (`ebpf/xdp`) and its userspace loader (`sbc/xdp`):
//! map names, `#[repr(C)]` keys and values, and the index of every verdict counter.
//!
//! Everything here is `no_std` and plain data, so the same definitions compile for
//! `bpfel-unknown-none` and for the host. With the `user` feature the key/value types
//! implement `aya::Pod`, which is what lets userspace read and write them in the maps.
//!
//! Byte order: addresses and ports are stored exactly as they appear on the wire
//! (network byte order), so the program builds keys by copying bytes, never swapping.
#![no_std]

/// Map names, as they appear in the object file (`#[btf_map]` statics in `ebpf/xdp`).
pub mod map {
    /// `HASH`: [`ProtectedKey`](crate::ProtectedKey) → `u8`. Destinations subject to the allowlist.
    pub const PROTECTED: &str = "PROTECTED";
    /// `ARRAY_OF_MAPS` (1 slot) whose inner map is an `LPM_TRIE` of IPv4 allowlist prefixes.
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// `ARRAY_OF_MAPS` (1 slot) whose inner map is an `LPM_TRIE` of IPv6 allowlist prefixes.
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// `LPM_TRIE` of IPv4 prefixes shorter than /32 dropped for every destination (bans),
    /// value [`BanExpiry`](crate::BanExpiry).
    pub const BLOCK_V4: &str = "BLOCK_V4";
    /// `LPM_TRIE` of IPv6 prefixes shorter than /128 dropped for every destination (bans),
    /// value [`BanExpiry`](crate::BanExpiry).
    pub const BLOCK_V6: &str = "BLOCK_V6";
    /// `HASH` (no prealloc): banned IPv4 addresses (/32) → [`BanExpiry`](crate::BanExpiry).
    /// Checked before `BLOCK_V4`: most bans are single addresses, and a hash lookup costs
    /// less than a trie walk.
    pub const BLOCK_V4_HOST: &str = "BLOCK_V4_HOST";
    /// `HASH` (no prealloc): banned IPv6 addresses (/128) → [`BanExpiry`](crate::BanExpiry).
    pub const BLOCK_V6_HOST: &str = "BLOCK_V6_HOST";
    /// `PERCPU_ARRAY` of `u64`, one slot per [`Stat`](crate::Stat).
    pub const STATS: &str = "STATS";
    /// `ARRAY` of `u8` indexed by destination port: [`port_flags`](crate::port_flags).
    /// A pre-filter in front of `PROTECTED`: array lookups are inlined by the verifier,
    /// hash lookups are helper calls, and most traffic (RTP) is on unprotected ports.
    pub const PORTS: &str = "PORTS";
    /// `ARRAY` of `u32`, indexed by [`config`](crate::config).
    pub const CONFIG: &str = "CONFIG";
    /// `LRU_HASH`: [`RateKey`](crate::RateKey) → [`RateState`](crate::RateState). The per-source
    /// token buckets of the packet-rate limit; LRU, so a spoofed spray of sources evicts the
    /// coldest buckets (which start full again) instead of filling the map.
    pub const RATE: &str = "RATE";
}

/// Bits of a `PORTS` entry. `*_EXACT`: some (address, port, proto) in `PROTECTED` has this
/// port; `*_ANY`: the port is protected on every address of some family for this
/// protocol, i.e. `PROTECTED` has a wildcard key for it.
pub mod port_flags {
    pub const UDP_EXACT: u8 = 1;
    pub const TCP_EXACT: u8 = 2;
    /// IPv4 wildcard (`0.0.0.0`), UDP.
    pub const UDP_ANY_V4: u8 = 4;
    /// IPv4 wildcard (`0.0.0.0`), TCP.
    pub const TCP_ANY_V4: u8 = 8;
    /// IPv6 wildcard (`::`), UDP.
    pub const UDP_ANY_V6: u8 = 16;
    /// IPv6 wildcard (`::`), TCP.
    pub const TCP_ANY_V6: u8 = 32;
    /// UDP to this port (any local address) is an external SIP port: the per-source packet
    /// rate limit applies (when on).
    pub const RATE_UDP: u8 = 64;
    /// [`RATE_UDP`] for TCP (every segment counts, handshake included).
    pub const RATE_TCP: u8 = 128;
}

/// Indices of `CONFIG`.
pub mod config {
    /// Number of prefixes in `BLOCK_V4` (0: the program skips the trie lookup).
    pub const BLOCK_V4_LEN: u32 = 0;
    /// Number of prefixes in `BLOCK_V6` (0: the program skips the trie lookup).
    pub const BLOCK_V6_LEN: u32 = 1;
    /// Number of addresses in `BLOCK_V4_HOST` (0: the program skips the hash lookup).
    pub const BLOCK_V4_HOST_LEN: u32 = 2;
    /// Number of addresses in `BLOCK_V6_HOST` (0: the program skips the hash lookup).
    pub const BLOCK_V6_HOST_LEN: u32 = 3;
    /// 1: every exact (non-wildcard) protected IPv4 destination has the address in
    /// [`PROTECTED_V4_ADDR`], so the program compares the destination address with it
    /// instead of looking up `PROTECTED`; 0: look up `PROTECTED`.
    pub const PROTECTED_V4_ONE: u32 = 4;
    /// The one exact protected IPv4 address (its 4 octets as a native-endian `u32`).
    pub const PROTECTED_V4_ADDR: u32 = 5;
    /// [`PROTECTED_V4_ONE`] for IPv6.
    pub const PROTECTED_V6_ONE: u32 = 6;
    /// The one exact protected IPv6 address: 4 slots from here, octets 0..4, 4..8, 8..12,
    /// 12..16, each as a native-endian `u32`.
    pub const PROTECTED_V6_ADDR: u32 = 7;
    /// Rate limit of sources not on the allowlist (every source on an unprotected SIP port):
    /// ns between two packets at the sustained rate (`1e9 / pps`); 0: no limit.
    pub const RATE_EMISSION_NS: u32 = 11;
    /// Packets such a source may send at once (the bucket's size).
    pub const RATE_BURST: u32 = 12;
    /// [`RATE_EMISSION_NS`] for allowlisted sources on the protected ports; 0: no limit.
    pub const RATE_LISTED_EMISSION_NS: u32 = 13;
    /// [`RATE_BURST`] for allowlisted sources.
    pub const RATE_LISTED_BURST: u32 = 14;
    /// The IPv6 source mask of the rate key (4 slots from here, like
    /// [`PROTECTED_V6_ADDR`]): an IPv6 source is limited per prefix (e.g. /64).
    pub const RATE_V6_MASK: u32 = 15;
    /// Number of slots.
    pub const LEN: u32 = 19;
}

/// The XDP program's function name in the object.
pub const PROGRAM_NAME: &str = "sbc_xdp";

/// Entries of `PORTS` (one per port number).
pub const PORTS_LEN: u32 = 65_536;
/// Capacity of the protected-destination hash map.
pub const PROTECTED_MAX_ENTRIES: u32 = 256;
/// Capacity of each allowlist LPM trie (the inner maps of `ALLOW_V4` / `ALLOW_V6`).
///
/// Inner maps created by userspace must match the template in the object exactly
/// (type, key/value size, flags, max_entries): the kernel checks this on every swap.
pub const ALLOW_MAX_ENTRIES: u32 = 65_536;
/// Capacity of each blocklist LPM trie (prefix bans, e.g. IPv6 /64).
pub const BLOCK_MAX_ENTRIES: u32 = 65_536;
/// Capacity of each single-address blocklist hash (`BLOCK_V4_HOST`, `BLOCK_V6_HOST`).
/// Not preallocated (`BPF_F_NO_PREALLOC`): memory follows the number of bans.
pub const BLOCK_HOST_MAX_ENTRIES: u32 = 262_144;
/// `BPF_F_NO_PREALLOC`: the only flags value the kernel accepts for an `LPM_TRIE`, and the
/// flags of the single-address blocklist hashes.
pub const LPM_FLAGS: u32 = 1;
/// Flags of `BLOCK_V4_HOST` / `BLOCK_V6_HOST` (`BPF_F_NO_PREALLOC`).
pub const BLOCK_HOST_FLAGS: u32 = 1;

/// Value of every blocklist entry: the instant the ban ends, in nanoseconds of the kernel's
/// monotonic clock (`bpf_ktime_get_ns`, which is `CLOCK_MONOTONIC`), as a host-endian `u64`
/// in bytes ([`ban_expiry`], [`BanExpiry::from`]): an LPM trie stores the value right after
/// a 4-byte IPv4 key, so the value type must have alignment 1. The program drops a matching
/// source only while `bpf_ktime_get_ns() < expiry`, so a ban lapses in XDP without
/// userspace; userspace deletes the stale entry when it processes the unban.
pub type BanExpiry = [u8; 8];
/// A ban with no end (until removed).
pub const BAN_FOREVER: BanExpiry = [0xff; 8];

/// The [`BanExpiry`] for a ban ending at `ns` on the kernel's monotonic clock.
pub const fn ban_expiry(ns: u64) -> BanExpiry {
    ns.to_ne_bytes()
}

/// The end of a ban, in ns of the kernel's monotonic clock.
pub const fn ban_expiry_ns(e: BanExpiry) -> u64 {
    u64::from_ne_bytes(e)
}

/// Capacity of `RATE` (LRU: full, the least recently used bucket is evicted).
pub const RATE_MAX_ENTRIES: u32 = 65_536;

/// Key of `RATE`: the source address, IPv4-mapped for IPv4 (RFC 4291 §2.5.5.2), IPv6 masked
/// to the configured prefix.
pub type RateKey = [u8; 16];

/// Value of `RATE`: the bucket as GCRA keeps it (ITU-T I.371's virtual scheduling), one
/// number: the theoretical arrival time of the next packet, ns on the kernel's monotonic
/// clock. A packet at `now` passes if `max(tat, now) + emission - now <= burst × emission`
/// and moves `tat` to `max(tat, now) + emission`; a dropped packet changes nothing. Equivalent
/// to a token bucket of `burst` tokens refilled at one per `emission` ns.
pub type RateState = u64;

/// Value stored in the LPM tries and in `PROTECTED`; only presence matters.
pub type FlagValue = u8;
/// The value userspace writes.
pub const PRESENT: FlagValue = 1;

/// IP protocol numbers the program distinguishes (IANA "Assigned Internet Protocol Numbers").
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Key of `PROTECTED`.
///
/// IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2), so one map
/// serves both families. The unspecified address of a family (`::ffff:0.0.0.0` for IPv4,
/// `::` for IPv6) is a wildcard: "this port and protocol on any local address of that
/// family", which is what a daemon bound to `0.0.0.0:5060` wants. Wildcards are also
/// flagged in `PORTS`, which is where the program looks for them; it looks up
/// `PROTECTED` only for the exact destination, and only when `PORTS` says to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProtectedKey {
    /// Destination address, network byte order, IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// Destination port, network byte order.
    pub port: [u8; 2],
    /// [`proto::TCP`] or [`proto::UDP`].
    pub proto: u8,
    /// Always zero: hash map keys are compared bytewise, padding included.
    pub pad: u8,
}

impl ProtectedKey {
    /// Key for an IPv4 destination (stored IPv4-mapped).
    pub const fn v4(addr: [u8; 4], port: u16, proto: u8) -> Self {
        Self::new(v4_mapped(addr), port, proto)
    }

    /// Key for an IPv6 destination.
    pub const fn v6(addr: [u8; 16], port: u16, proto: u8) -> Self {
        Self::new(addr, port, proto)
    }

    const fn new(addr: [u8; 16], port: u16, proto: u8) -> Self {
        Self { addr, port: port.to_be_bytes(), proto, pad: 0 }
    }
}

/// `::ffff:a.b.c.d` (RFC 4291 §2.5.5.2).
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]
}

/// The wildcard address of the IPv4 family in `PROTECTED` (`::ffff:0.0.0.0`).
pub const V4_WILDCARD: [u8; 16] = v4_mapped([0; 4]);
/// The wildcard address of the IPv6 family in `PROTECTED` (`::`).
pub const V6_WILDCARD: [u8; 16] = [0; 16];

/// One per-CPU counter per verdict reason; the value is the index in `STATS`.
///
/// Every packet the program sees increments exactly one of these.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stat {
    /// Not IPv4/IPv6 (ARP, LLDP, …): passed.
    PassNonIp = 0,
    /// Truncated or malformed headers, stacked VLAN tags, unknown IPv6 extension
    /// headers, ESP: passed (fail open) because the program cannot tell who it is for.
    PassUnparsed = 1,
    /// Non-first IPv4/IPv6 fragment: no L4 header to judge, passed. The first fragment
    /// (which carries the ports) is judged, so an unlisted source's datagram cannot be
    /// reassembled.
    PassFragment = 2,
    /// Not TCP/UDP (ICMP, ICMPv6 neighbour discovery, SCTP, …): passed.
    PassOtherProto = 3,
    /// TCP/UDP to a destination that is not protected: passed.
    PassNotProtected = 4,
    /// To a protected destination from a source on the allowlist: passed.
    PassAllowed = 5,
    /// To a protected destination from a source not on the allowlist: dropped.
    DropNotAllowed = 6,
    /// Source on the blocklist (any destination): dropped.
    DropBlocked = 7,
    /// A map the program needs was missing (e.g. allowlist slot empty): passed (fail open).
    PassInternalError = 8,
    /// Over the per-source packet rate on an external SIP port, from a source not on the
    /// allowlist: dropped.
    DropRateLimited = 9,
    /// Over the (higher) per-source packet rate of allowlisted sources on a protected port
    /// (a provider's address: real, or spoofed): dropped.
    DropRateLimitedListed = 10,
}

impl Stat {
    /// Number of counters (`max_entries` of `STATS`).
    pub const COUNT: u32 = 11;
    /// All counters, in index order.
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::PassNonIp,
        Stat::PassUnparsed,
        Stat::PassFragment,
        Stat::PassOtherProto,
        Stat::PassNotProtected,
        Stat::PassAllowed,
        Stat::DropNotAllowed,
        Stat::DropBlocked,
        Stat::PassInternalError,
        Stat::DropRateLimited,
        Stat::DropRateLimitedListed,
    ];

    /// Stable snake_case name (used for metrics and `sbc stats`).
    pub const fn name(self) -> &'static str {
        match self {
            Stat::PassNonIp => "pass_non_ip",
            Stat::PassUnparsed => "pass_unparsed",
            Stat::PassFragment => "pass_fragment",
            Stat::PassOtherProto => "pass_other_proto",
            Stat::PassNotProtected => "pass_not_protected",
            Stat::PassAllowed => "pass_allowed",
            Stat::DropNotAllowed => "drop_not_allowed",
            Stat::DropBlocked => "drop_blocked",
            Stat::PassInternalError => "pass_internal_error",
            Stat::DropRateLimited => "drop_rate_limited",
            Stat::DropRateLimitedListed => "drop_rate_limited_listed",
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: `ProtectedKey` is `#[repr(C)]`, `Copy`, made only of `u8` arrays and `u8`s
// (no padding, every bit pattern valid).
unsafe impl aya::Pod for ProtectedKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_key_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<ProtectedKey>(), 20);
        assert_eq!(core::mem::align_of::<ProtectedKey>(), 1);
    }

    #[test]
    fn v4_key_is_v4_mapped_with_port_in_network_order() {
        let k = ProtectedKey::v4([192, 0, 2, 1], 5060, proto::UDP);
        assert_eq!(k.addr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]);
        assert_eq!(k.port, [0x13, 0xc4]);
        assert_eq!(k.pad, 0);
    }

    #[test]
    fn ban_expiry_round_trips_and_forever_is_the_largest() {
        assert_eq!(ban_expiry_ns(ban_expiry(123_456_789)), 123_456_789);
        assert_eq!(ban_expiry_ns(BAN_FOREVER), u64::MAX);
    }

    #[test]
    fn stat_indices_are_dense_and_in_order() {
        for (i, s) in Stat::ALL.iter().enumerate() {
            assert_eq!(*s as u32, i as u32, "{}", s.name());
        }
    }
}
