//! [`Prefix`]: an IPv4 or IPv6 CIDR prefix with its host bits zero, the unit of the allowlist
//! and of the XDP maps (`sbc_xdp` re-exports this type, so the loader and the policy agree on
//! it by construction).
//!
//! Strict: `203.0.113.5/24` is rejected rather than widened, because host bits set in a
//! provider table usually mean a typo, which must be reported.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why a prefix was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("{input:?} is not an IP address or CIDR prefix")]
    Syntax { input: String },
    #[error("{input:?}: prefix length {len} out of range (0..={max})")]
    LengthOutOfRange { input: String, len: u32, max: u8 },
    #[error("{input:?}: host bits set (did you mean {suggestion}?)")]
    HostBitsSet { input: String, suggestion: Prefix },
}

/// An IP prefix: an address whose bits past `len` are all zero. Orders IPv4 before IPv6, then
/// by address, then by length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// A prefix; `None` if `len` exceeds the family's width or host bits are set.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        let p = Prefix::new_truncating(addr, len)?;
        (p.addr == addr).then_some(p)
    }

    /// A prefix with the host bits of `addr` cleared; `None` if `len` is too long.
    pub fn new_truncating(addr: IpAddr, len: u8) -> Option<Prefix> {
        let addr = match addr {
            IpAddr::V4(a) => {
                if len > 32 {
                    return None;
                }
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                if len > 128 {
                    return None;
                }
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Some(Prefix { addr, len })
    }

    /// The single-address prefix (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Prefix {
        Prefix { addr, len: if addr.is_ipv4() { 32 } else { 128 } }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` falls inside this prefix (different families never match).
    pub fn contains(&self, ip: IpAddr) -> bool {
        Prefix::new_truncating(ip, self.len).is_some_and(|p| p.addr == self.addr)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// `a.b.c.d`, `a.b.c.d/n`, `x::y`, `x::y/n`. A bare address is a host prefix.
    fn from_str(s: &str) -> Result<Prefix, PrefixError> {
        let syntax = || PrefixError::Syntax { input: s.to_owned() };
        let (addr, len) = match s.split_once('/') {
            None => (s, None),
            Some((a, l)) => (a, Some(l)),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => {
                // Digits only, no sign, no leading zeros: "24", not "+24" or "024".
                if l.is_empty()
                    || l.len() > 3
                    || !l.bytes().all(|b| b.is_ascii_digit())
                    || (l.len() > 1 && l.starts_with('0'))
                {
                    return Err(syntax());
                }
                let n: u32 = l.parse().map_err(|_| syntax())?;
                if n > u32::from(max) {
                    return Err(PrefixError::LengthOutOfRange { input: s.to_owned(), len: n, max });
                }
                u8::try_from(n).map_err(|_| syntax())?
            }
        };
        let truncated = Prefix::new_truncating(addr, len).ok_or_else(syntax)?;
        if truncated.addr != addr {
            return Err(PrefixError::HostBitsSet { input: s.to_owned(), suggestion: truncated });
        }
        Ok(truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn bare_address_is_a_host_prefix_and_display_round_trips() {
        assert_eq!(p("203.0.113.10"), Prefix::host("203.0.113.10".parse().unwrap()));
        assert_eq!(p("2001:db8::1").prefix_len(), 128);
        for s in ["203.0.113.0/24", "0.0.0.0/0", "2001:db8::/32", "2001:db8::1/128"] {
            assert_eq!(p(s).to_string(), s);
        }
    }

    #[test]
    fn host_bits_length_and_syntax_are_rejected() {
        assert!(
            matches!("203.0.113.5/24".parse::<Prefix>(), Err(PrefixError::HostBitsSet { suggestion, .. }) if suggestion == p("203.0.113.0/24"))
        );
        assert!(matches!(
            "192.0.2.0/33".parse::<Prefix>(),
            Err(PrefixError::LengthOutOfRange { len: 33, max: 32, .. })
        ));
        assert!(matches!("2001:db8::/129".parse::<Prefix>(), Err(PrefixError::LengthOutOfRange { len: 129, .. })));
        for s in [
            "",
            "/24",
            "192.0.2.0/",
            "192.0.2.0/+4",
            "192.0.2.0/24/1",
            "host.example",
            "192.0.2.0/ 24",
            "192.0.2.0/024",
            "192.0.2.300",
        ] {
            assert!(matches!(s.parse::<Prefix>(), Err(PrefixError::Syntax { .. })), "{s:?}");
        }
    }

    #[test]
    fn contains_respects_length_and_family_and_order_puts_v4_first() {
        let net = p("198.51.100.0/24");
        assert!(net.contains("198.51.100.66".parse().unwrap()));
        assert!(!net.contains("198.51.101.1".parse().unwrap()));
        assert!(!net.contains("::ffff:198.51.100.66".parse().unwrap()));
        let mut v = vec![p("2001:db8::/32"), p("203.0.113.7"), p("89.208.190.2"), p("203.0.113.0/24")];
        v.sort();
        assert_eq!(v, vec![p("89.208.190.2"), p("203.0.113.0/24"), p("203.0.113.7"), p("2001:db8::/32")]);
    }
}
