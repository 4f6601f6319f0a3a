//! The trunk-side XDP filter (DESIGN.md capability 2; issue 3).
//!
//! Owns the per-packet verdict. For every frame it parses Ethernet (at most one 802.1Q /
//! 802.1ad tag), IPv4 or IPv6 (skipping IPv6 extension headers), then the TCP/UDP ports, and:
//!
//! 1. passes non-first fragments (no ports to judge; the first fragment is judged, so an
//!    unlisted datagram is never reassembled);
//! 2. for TCP/UDP to a protected destination (`PORTS` pre-filter by port, which also
//!    carries the per-family wildcards; then the exact address: one compare with the address
//!    in `CONFIG` when every exact destination of the family has the same one, else
//!    `PROTECTED`), drops the packet unless its source matches the current allowlist
//!    (`ALLOW_V4` / `ALLOW_V6`);
//! 3. drops whatever would pass so far if its source is on the blocklist and its ban has not
//!    expired, whatever the destination: first the single-address hash (`BLOCK_V4_HOST` /
//!    `BLOCK_V6_HOST`), then the prefix trie (`BLOCK_V4` / `BLOCK_V6`);
//! 4. limits the packet rate per source, when on, for what would still pass to an external
//!    SIP port (`PORTS` rate bits, any local address on this interface): a GCRA token bucket
//!    per source in the `RATE` LRU hash, with one limit for allowlisted sources on the
//!    protected ports (providers: never banned, only rate limited) and a lower one for every
//!    other source (an unprotected, subscriber-facing SIP port); see [`over_rate`];
//! 5. passes everything else.
//!
//! The order puts the common attack first: a flood from an unlisted source to the protected
//! port is dropped by the allowlist with no blocklist lookup at all (a banned source there
//! counts as `drop_not_allowed`: the allowlist already drops it, and the ban costs nothing).
//! The blocklist is looked up only for packets the allowlist would pass: listed sources (a
//! ban of a listed address still drops), and every packet to an unprotected port (a
//! subscriber-facing SIP port, RTP), which is where bans matter.
//!
//! Fail open: what the program cannot parse, or a missing map, passes and is counted
//! (`STATS`, one per-CPU counter per reason, see `sbc_ebpf_common::Stat`). Userspace
//! applies the same allowlist behind it, so failing open costs CPU, never access control.
//!
//! # Atomic allowlist swap: map-in-map
//!
//! `ALLOW_V4` / `ALLOW_V6` are `BPF_MAP_TYPE_ARRAY_OF_MAPS` with one slot holding an
//! `LPM_TRIE`. A reload builds a *new* trie in userspace, fills it completely, then writes
//! its fd into slot 0 with one `bpf_map_update_elem`. The kernel swaps the slot's pointer
//! atomically (`xchg`), so each packet's lookup sees either the whole old list or the whole
//! new one, never a half-written list: no instant in which a listed source is dropped or an
//! unlisted one passes. The old trie stays alive until the last program run that fetched it
//! finishes (RCU), and the update syscall itself waits for a grace period on map-in-map
//! updates (`maybe_wait_bpf_programs`), so when it returns no packet is still being judged
//! by the old list. Chosen over "two tries + an active-generation index" because that design
//! needs the same grace-period wait before the stale generation may be rewritten, and
//! userspace cannot request one for plain array updates; here there is nothing to rewrite.
//! The two families swap one after the other; every packet has one family, so each packet
//! still sees one complete list.
//!
//! The blocklist is edited in place (one entry per ban): single-element updates are
//! atomic by themselves and bans need no list-wide consistency. Single addresses (/32,
//! /128: most bans) live in a hash, checked first; shorter prefixes (an IPv6 /64 ban) in an
//! LPM trie. `CONFIG` holds each map's length so that the common case, no bans of a kind,
//! costs an inlined array read instead of a lookup per packet.
//!
//! # Ban expiry
//!
//! Each blocklist value is the ban's end on the kernel's monotonic clock
//! ([`BanExpiry`]). On a match the program reads `bpf_ktime_get_ns` (only then: a miss costs
//! no clock read) and drops only if the ban is still in force; an expired entry is passed
//! and left for userspace to delete (the daemon unbans on the same deadline), so the
//! lengths in `CONFIG` stay exact and a ban lapses on time even if userspace is late. The
//! trie returns only its longest match: an expired /64 inside a live /48 passes until
//! userspace deletes it (the daemon never keeps both).
//!
//! Cost: array lookups (`PORTS`, `CONFIG`, `STATS`, the outer `ALLOW_*`) are inlined by
//! the verifier; the helper calls are the hash lookup for an exact protected address (only
//! when the family has several exact addresses), the allowlist LPM lookup (protected
//! traffic only) and the blocklist lookups (each only for a packet that would pass, and
//! only when its map is non-empty).
//!
//! `try_*` helpers return `Result<Stat, ()>`: the verdict carries its reason, and the
//! action (pass or drop) follows from the reason; `Err(())` means "could not parse".
#![no_std]
#![no_main]
// bpf-linker reports, as a linker message, that it skipped the toolchain's libLLVM linker
// script before loading the real libLLVM; that is noise, not a problem.
#![allow(linker_messages)]

use core::mem;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::generated::bpf_ktime_get_ns,
    btf_maps::{Array, ArrayOfMaps, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};
use sbc_ebpf_common::{
    ALLOW_MAX_ENTRIES, BLOCK_HOST_FLAGS, BLOCK_HOST_MAX_ENTRIES, BLOCK_MAX_ENTRIES, BanExpiry, FlagValue, ban_expiry_ns, PORTS_LEN, PROTECTED_MAX_ENTRIES,
    ProtectedKey, RATE_MAX_ENTRIES, RateKey, RateState, Stat, config, port_flags, proto, v4_mapped,
};

/// IEEE 802 EtherTypes.
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// IPv6 extension headers (RFC 8200 §4) the program walks through.
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
/// More extension headers than this in one packet: not parsed (passes, counted).
const MAX_IPV6_EXT_HEADERS: usize = 6;

type AllowTrieV4 = LpmTrie<[u8; 4], FlagValue, { ALLOW_MAX_ENTRIES as usize }>;
type AllowTrieV6 = LpmTrie<[u8; 16], FlagValue, { ALLOW_MAX_ENTRIES as usize }>;

#[btf_map]
static PROTECTED: HashMap<ProtectedKey, FlagValue, { PROTECTED_MAX_ENTRIES as usize }> =
    HashMap::new();

#[btf_map]
static ALLOW_V4: ArrayOfMaps<AllowTrieV4, 1> = ArrayOfMaps::new();

#[btf_map]
static ALLOW_V6: ArrayOfMaps<AllowTrieV6, 1> = ArrayOfMaps::new();

#[btf_map]
static BLOCK_V4: LpmTrie<[u8; 4], BanExpiry, { BLOCK_MAX_ENTRIES as usize }> = LpmTrie::new();

#[btf_map]
static BLOCK_V6: LpmTrie<[u8; 16], BanExpiry, { BLOCK_MAX_ENTRIES as usize }> = LpmTrie::new();

#[btf_map]
static BLOCK_V4_HOST: HashMap<
    [u8; 4],
    BanExpiry,
    { BLOCK_HOST_MAX_ENTRIES as usize },
    { BLOCK_HOST_FLAGS as usize },
> = HashMap::new();

#[btf_map]
static BLOCK_V6_HOST: HashMap<
    [u8; 16],
    BanExpiry,
    { BLOCK_HOST_MAX_ENTRIES as usize },
    { BLOCK_HOST_FLAGS as usize },
> = HashMap::new();

#[btf_map]
static STATS: PerCpuArray<u64, { Stat::COUNT as usize }> = PerCpuArray::new();

#[btf_map]
static PORTS: Array<u8, { PORTS_LEN as usize }> = Array::new();

#[btf_map]
static CONFIG: Array<u32, { config::LEN as usize }> = Array::new();

#[btf_map]
static RATE: LruHashMap<RateKey, RateState, { RATE_MAX_ENTRIES as usize }> = LruHashMap::new();

/// What the allowlist decided, before the blocklist and the rate limit.
enum Judged {
    /// Dropped whatever the blocklist says (an unlisted source on a protected port).
    Drop(Stat),
    /// Passes unless the source is banned or over its rate.
    Pass(Stat, Rate),
}

/// Which rate limit applies to a packet that would pass.
#[derive(Clone, Copy)]
enum Rate {
    None,
    /// Not allowlisted (to an unprotected external SIP port).
    Unlisted,
    /// Allowlisted, to a protected port.
    Listed,
}

/// The rate bit of `PORTS` for this protocol.
#[inline(always)]
fn rate_bit(l4_proto: u8) -> u8 {
    if l4_proto == proto::UDP { port_flags::RATE_UDP } else { port_flags::RATE_TCP }
}

/// The blocklist, then the rate limit, for what the allowlist would pass; an unparsable
/// packet is still dropped if its source is banned (else it passes: fail open).
#[inline(always)]
fn finish(judged: Result<Judged, ()>, banned: impl Fn() -> bool, key: impl Fn() -> RateKey) -> Result<Stat, ()> {
    let (stat, rate) = match judged {
        Ok(Judged::Drop(s)) => return Ok(s),
        Ok(Judged::Pass(s, r)) => (s, r),
        Err(()) => return if banned() { Ok(Stat::DropBlocked) } else { Err(()) },
    };
    if banned() {
        return Ok(Stat::DropBlocked);
    }
    Ok(match rate {
        Rate::None => stat,
        Rate::Unlisted if over_rate(key(), config::RATE_EMISSION_NS, config::RATE_BURST) => Stat::DropRateLimited,
        Rate::Listed if over_rate(key(), config::RATE_LISTED_EMISSION_NS, config::RATE_LISTED_BURST) => {
            Stat::DropRateLimitedListed
        }
        _ => stat,
    })
}

/// Whether the source `key` is over its rate (GCRA, see [`RateState`]); the limit's
/// emission interval and burst are in `CONFIG` (an emission of 0: no limit, and no clock
/// read, no map access). Reads the clock, then one LRU lookup; a passing packet moves the
/// bucket, a new source gets a bucket (evicting the least recently used one when full).
/// CPUs update a bucket without a lock: two packets of one source judged at the same instant
/// on two CPUs may both pass where one should; the limit holds within that.
#[inline(always)]
fn over_rate(key: RateKey, emission_slot: u32, burst_slot: u32) -> bool {
    let emission = u64::from(config_of(emission_slot));
    if emission == 0 {
        return false;
    }
    let limit = emission * u64::from(config_of(burst_slot));
    // SAFETY: a helper with no arguments, allowed in every program type.
    let now = unsafe { bpf_ktime_get_ns() };
    match RATE.get_ptr_mut(key) {
        Some(tat) => {
            // SAFETY: a value of this map (u64, 8-aligned after a 16-byte key), read once and
            // written once by this run.
            let next = unsafe { *tat }.max(now) + emission;
            if next - now > limit {
                return true;
            }
            // SAFETY: as above.
            unsafe { *tat = next };
            false
        }
        None => {
            // A full map evicts; a failed insert only means this packet starts no bucket.
            let _ = RATE.insert(key, now + emission, 0);
            false
        }
    }
}

/// The rate key of an IPv6 source: the address masked to the configured prefix.
#[inline(always)]
fn v6_rate_key(src: [u8; 16]) -> RateKey {
    let [a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3] = src;
    let m = |i: u32, w: [u8; 4]| (u32::from_ne_bytes(w) & config_of(config::RATE_V6_MASK + i)).to_ne_bytes();
    let [a, b, c, d] = [m(0, [a0, a1, a2, a3]), m(1, [b0, b1, b2, b3]), m(2, [c0, c1, c2, c3]), m(3, [d0, d1, d2, d3])];
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
}

#[inline(always)]
fn blocklist_empty(index: u32) -> bool {
    CONFIG.get(index).is_none_or(|n| *n == 0)
}

/// Whether a ban ending at `expiry` ([`BanExpiry`]) is still in force.
#[inline(always)]
fn in_force(expiry: &BanExpiry) -> bool {
    // SAFETY: a helper with no arguments, allowed in every program type.
    ban_expiry_ns(*expiry) > unsafe { bpf_ktime_get_ns() }
}

/// Whether `src` is banned: the address hash first, then the prefix trie.
#[inline(always)]
fn banned_v4(src: [u8; 4]) -> bool {
    if !blocklist_empty(config::BLOCK_V4_HOST_LEN)
        && let Some(expiry) = BLOCK_V4_HOST.get_ptr(src)
        // SAFETY: a value of this map (8 bytes, alignment 1), read once.
        && in_force(unsafe { &*expiry })
    {
        return true;
    }
    !blocklist_empty(config::BLOCK_V4_LEN)
        && BLOCK_V4.get(&Key::new(32, src)).is_some_and(in_force)
}

/// [`banned_v4`] for IPv6.
#[inline(always)]
fn banned_v6(src: [u8; 16]) -> bool {
    if !blocklist_empty(config::BLOCK_V6_HOST_LEN)
        && let Some(expiry) = BLOCK_V6_HOST.get_ptr(src)
        // SAFETY: a value of this map (8 bytes, alignment 1), read once.
        && in_force(unsafe { &*expiry })
    {
        return true;
    }
    !blocklist_empty(config::BLOCK_V6_LEN)
        && BLOCK_V6.get(&Key::new(128, src)).is_some_and(in_force)
}

#[xdp]
pub fn sbc_xdp(ctx: XdpContext) -> u32 {
    let stat = try_classify(&ctx).unwrap_or(Stat::PassUnparsed);
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot of this CPU; XDP runs with preemption disabled.
        unsafe { *counter += 1 };
    }
    match stat {
        Stat::DropNotAllowed | Stat::DropBlocked | Stat::DropRateLimited | Stat::DropRateLimitedListed => XDP_DROP,
        _ => XDP_PASS,
    }
}

/// A pointer to a `T` at `offset` from the start of the frame, if the frame is long enough.
///
/// The comparison is written as `start + offset + size > end` on packet pointers, the form
/// the verifier tracks.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
fn try_classify(ctx: &XdpContext) -> Result<Stat, ()> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan: *const VlanHdr = ptr_at(ctx, l3)?;
        // SAFETY: bounds checked by ptr_at.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        l3 += VlanHdr::LEN;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            // Stacked tags (QinQ): more than the one tag we support.
            return Err(());
        }
    }
    match ether_type {
        ETH_P_IP => try_ipv4(ctx, l3),
        ETH_P_IPV6 => try_ipv6(ctx, l3),
        _ => Ok(Stat::PassNonIp),
    }
}

#[inline(always)]
fn try_ipv4(ctx: &XdpContext, l3: usize) -> Result<Stat, ()> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by ptr_at; Ipv4Hdr is all byte fields (alignment 1).
    let (vihl, frags, l4_proto, src, dst) = unsafe {
        (
            (*ip).vihl,
            (*ip).frags,
            (*ip).proto,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    if vihl >> 4 != 4 {
        return Err(());
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < Ipv4Hdr::LEN {
        return Err(());
    }
    finish(ipv4_verdict(ctx, l3 + ihl, frags, l4_proto, src, dst), || banned_v4(src), || v4_mapped(src))
}

/// The IPv4 verdict before the blocklist: what the allowlist says.
#[inline(always)]
fn ipv4_verdict(
    ctx: &XdpContext,
    l4: usize,
    frags: [u8; 2],
    l4_proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
) -> Result<Judged, ()> {
    // RFC 791: fragment offset is the low 13 bits; non-zero means "not the first fragment".
    if u16::from_be_bytes(frags) & 0x1fff != 0 {
        return Ok(Judged::Pass(Stat::PassFragment, Rate::None));
    }
    if l4_proto != proto::TCP && l4_proto != proto::UDP {
        return Ok(Judged::Pass(Stat::PassOtherProto, Rate::None));
    }
    let dport = try_dst_port(ctx, l4)?;
    let flags = port_flags_of(dport);
    let rated = flags & rate_bit(l4_proto) != 0;
    if !is_protected_v4(flags, dst, dport, l4_proto) {
        return Ok(Judged::Pass(Stat::PassNotProtected, if rated { Rate::Unlisted } else { Rate::None }));
    }
    let Some(allow) = ALLOW_V4.get(0) else {
        return Ok(Judged::Pass(Stat::PassInternalError, Rate::None));
    };
    Ok(if allow.get(&Key::new(32, src)).is_some() {
        Judged::Pass(Stat::PassAllowed, if rated { Rate::Listed } else { Rate::None })
    } else {
        Judged::Drop(Stat::DropNotAllowed)
    })
}

#[inline(always)]
fn try_ipv6(ctx: &XdpContext, l3: usize) -> Result<Stat, ()> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by ptr_at; Ipv6Hdr is all byte fields (alignment 1).
    let (vcf0, next, src, dst) =
        unsafe { ((*ip).vcf[0], (*ip).next_hdr, (*ip).src_addr, (*ip).dst_addr) };
    if vcf0 >> 4 != 6 {
        return Err(());
    }
    finish(ipv6_verdict(ctx, l3 + Ipv6Hdr::LEN, next, src, dst), || banned_v6(src), || v6_rate_key(src))
}

/// The IPv6 verdict before the blocklist: what the allowlist says.
#[inline(always)]
fn ipv6_verdict(ctx: &XdpContext, l4: usize, mut next: u8, src: [u8; 16], dst: [u8; 16]) -> Result<Judged, ()> {
    // RFC 8200 §4: walk the extension header chain to the upper-layer header.
    let mut off = l4;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            proto::TCP | proto::UDP => break,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let h: *const [u8; 2] = ptr_at(ctx, off)?;
                // SAFETY: bounds checked by ptr_at.
                let [nh, len] = unsafe { *h };
                next = nh;
                off += (usize::from(len) + 1) * 8;
            }
            IPPROTO_AH => {
                // RFC 4302 §2.2: length in 4-octet units, minus 2.
                let h: *const [u8; 2] = ptr_at(ctx, off)?;
                // SAFETY: bounds checked by ptr_at.
                let [nh, len] = unsafe { *h };
                next = nh;
                off += (usize::from(len) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let h: *const [u8; 4] = ptr_at(ctx, off)?;
                // SAFETY: bounds checked by ptr_at.
                let [nh, _reserved, o0, o1] = unsafe { *h };
                // RFC 8200 §4.5: offset is the high 13 bits of the last two octets.
                if u16::from_be_bytes([o0, o1]) & 0xfff8 != 0 {
                    return Ok(Judged::Pass(Stat::PassFragment, Rate::None));
                }
                next = nh;
                off += 8;
            }
            _ => return Ok(Judged::Pass(Stat::PassOtherProto, Rate::None)),
        }
    }
    if next != proto::TCP && next != proto::UDP {
        // Chain longer than MAX_IPV6_EXT_HEADERS.
        return Err(());
    }
    let dport = try_dst_port(ctx, off)?;
    let flags = port_flags_of(dport);
    let rated = flags & rate_bit(next) != 0;
    if !is_protected_v6(flags, dst, dport, next) {
        return Ok(Judged::Pass(Stat::PassNotProtected, if rated { Rate::Unlisted } else { Rate::None }));
    }
    let Some(allow) = ALLOW_V6.get(0) else {
        return Ok(Judged::Pass(Stat::PassInternalError, Rate::None));
    };
    Ok(if allow.get(&Key::new(128, src)).is_some() {
        Judged::Pass(Stat::PassAllowed, if rated { Rate::Listed } else { Rate::None })
    } else {
        Judged::Drop(Stat::DropNotAllowed)
    })
}

/// The destination port (network byte order) of a TCP or UDP header at `l4`: both put
/// it in octets 2..4 (RFC 768, RFC 9293 §3.1).
#[inline(always)]
fn try_dst_port(ctx: &XdpContext, l4: usize) -> Result<[u8; 2], ()> {
    let ports: *const [u8; 4] = ptr_at(ctx, l4)?;
    // SAFETY: bounds checked by ptr_at.
    let [_, _, d0, d1] = unsafe { *ports };
    Ok([d0, d1])
}

/// Whether TCP/UDP to `dst`:`port` is protected (IPv4): the `PORTS` `flags`, then, for a port
/// protected on exact addresses only, the address — compared with the one in `CONFIG` when
/// every exact IPv4 destination has the same address (one external address: the usual
/// case), else looked up in `PROTECTED`.
#[inline(always)]
fn is_protected_v4(flags: u8, dst: [u8; 4], port: [u8; 2], l4_proto: u8) -> bool {
    let (exact, any) = if l4_proto == proto::UDP {
        (port_flags::UDP_EXACT, port_flags::UDP_ANY_V4)
    } else {
        (port_flags::TCP_EXACT, port_flags::TCP_ANY_V4)
    };
    if flags & any != 0 {
        return true;
    }
    if flags & exact == 0 {
        return false;
    }
    if config_of(config::PROTECTED_V4_ONE) != 0 {
        return config_of(config::PROTECTED_V4_ADDR) == u32::from_ne_bytes(dst);
    }
    protected_lookup(v4_mapped(dst), port, l4_proto)
}

/// [`is_protected_v4`] for IPv6.
#[inline(always)]
fn is_protected_v6(flags: u8, dst: [u8; 16], port: [u8; 2], l4_proto: u8) -> bool {
    let (exact, any) = if l4_proto == proto::UDP {
        (port_flags::UDP_EXACT, port_flags::UDP_ANY_V6)
    } else {
        (port_flags::TCP_EXACT, port_flags::TCP_ANY_V6)
    };
    if flags & any != 0 {
        return true;
    }
    if flags & exact == 0 {
        return false;
    }
    if config_of(config::PROTECTED_V6_ONE) != 0 {
        let [a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3] = dst;
        return config_of(config::PROTECTED_V6_ADDR) == u32::from_ne_bytes([a0, a1, a2, a3])
            && config_of(config::PROTECTED_V6_ADDR + 1) == u32::from_ne_bytes([b0, b1, b2, b3])
            && config_of(config::PROTECTED_V6_ADDR + 2) == u32::from_ne_bytes([c0, c1, c2, c3])
            && config_of(config::PROTECTED_V6_ADDR + 3) == u32::from_ne_bytes([d0, d1, d2, d3]);
    }
    protected_lookup(dst, port, l4_proto)
}

#[inline(always)]
fn port_flags_of(port: [u8; 2]) -> u8 {
    PORTS.get(u32::from(u16::from_be_bytes(port))).copied().unwrap_or(0)
}

/// A `CONFIG` slot (0 if out of range: never, the indices are constants).
#[inline(always)]
fn config_of(index: u32) -> u32 {
    CONFIG.get(index).copied().unwrap_or(0)
}

#[inline(always)]
fn protected_lookup(addr: [u8; 16], port: [u8; 2], l4_proto: u8) -> bool {
    PROTECTED.get_ptr(ProtectedKey { addr, port, proto: l4_proto, pad: 0 }).is_some()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Not GPL: the program calls no GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
