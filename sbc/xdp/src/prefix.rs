//! [`Prefix`]: an IPv4 or IPv6 CIDR prefix, the unit of the allowlist and the blocklist.
//!
//! Own type rather than the `ipnet` crate: we need exactly "address + length, host bits
//! zero, parse/print, to LPM key bytes", about a hundred lines, and a strict parser that
//! rejects `203.0.113.5/24` (host bits set usually means a typo in the provider table,
//! which must be reported, not silently widened).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// Why a prefix was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("{input:?}: not an IP address or CIDR prefix")]
    Syntax { input: String },
    #[error("{input:?}: prefix length {len} out of range (0..={max})")]
    LengthOutOfRange { input: String, len: u32, max: u8 },
    #[error("{input:?}: host bits set (did you mean {suggestion}?)")]
    HostBitsSet { input: String, suggestion: Prefix },
}

/// An IP prefix: an address whose bits past `len` are all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// A prefix; `None` if `len` exceeds the family's width or host bits are set.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let p = Self::new_truncating(addr, len)?;
        (p.addr == addr).then_some(p)
    }

    /// A prefix with the host bits of `addr` cleared; `None` if `len` is too long.
    pub fn new_truncating(addr: IpAddr, len: u8) -> Option<Self> {
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
        Some(Self { addr, len })
    }

    /// The single-address prefix (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` falls inside this prefix (different families never match).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match Self::new_truncating(ip, self.len) {
            Some(p) => p.addr == self.addr,
            None => false,
        }
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
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || PrefixError::Syntax {
            input: s.to_owned(),
        };
        let (addr, len) = match s.split_once('/') {
            None => (s, None),
            Some((a, l)) => (a, Some(l)),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => {
                if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) || l.len() > 3 {
                    return Err(syntax());
                }
                let n: u32 = l.parse().map_err(|_| syntax())?;
                if n > u32::from(max) {
                    return Err(PrefixError::LengthOutOfRange {
                        input: s.to_owned(),
                        len: n,
                        max,
                    });
                }
                n as u8
            }
        };
        // len <= max was checked above, so new_truncating cannot fail.
        let truncated = Self::new_truncating(addr, len).ok_or_else(syntax)?;
        if truncated.addr != addr {
            return Err(PrefixError::HostBitsSet {
                input: s.to_owned(),
                suggestion: truncated,
            });
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
    fn bare_address_is_host_prefix() {
        assert_eq!(
            p("203.0.113.10"),
            Prefix::host("203.0.113.10".parse().unwrap())
        );
        assert_eq!(p("2001:db8::1").prefix_len(), 128);
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "203.0.113.0/24",
            "0.0.0.0/0",
            "2001:db8::/32",
            "2001:db8::1/128",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
    }

    #[test]
    fn host_bits_set_is_rejected_with_suggestion() {
        let e = "203.0.113.5/24".parse::<Prefix>().unwrap_err();
        assert_eq!(
            e,
            PrefixError::HostBitsSet {
                input: "203.0.113.5/24".into(),
                suggestion: p("203.0.113.0/24")
            }
        );
        assert!(e.to_string().contains("203.0.113.0/24"));
    }

    #[test]
    fn length_out_of_range_is_rejected() {
        assert!(matches!(
            "192.0.2.0/33".parse::<Prefix>(),
            Err(PrefixError::LengthOutOfRange {
                len: 33,
                max: 32,
                ..
            })
        ));
        assert!(matches!(
            "2001:db8::/129".parse::<Prefix>(),
            Err(PrefixError::LengthOutOfRange {
                len: 129,
                max: 128,
                ..
            })
        ));
    }

    #[test]
    fn garbage_is_a_syntax_error() {
        for s in [
            "",
            "/24",
            "192.0.2.0/",
            "192.0.2.0/+4",
            "192.0.2.0/24/1",
            "host.example",
            "192.0.2.0/ 24",
            "192.0.2.0/0024",
        ] {
            assert!(
                matches!(s.parse::<Prefix>(), Err(PrefixError::Syntax { .. })),
                "{s:?}"
            );
        }
    }

    #[test]
    fn contains_respects_length_and_family() {
        let net = p("198.51.100.0/24");
        assert!(net.contains("198.51.100.66".parse().unwrap()));
        assert!(!net.contains("198.51.101.1".parse().unwrap()));
        assert!(!net.contains("::ffff:198.51.100.66".parse().unwrap()));
        assert!(p("0.0.0.0/0").contains("192.0.2.1".parse().unwrap()));
        assert!(p("2001:db8::/32").contains("2001:db8:ffff::1".parse().unwrap()));
    }

    #[test]
    fn new_rejects_host_bits_and_new_truncating_clears_them() {
        let a: IpAddr = "192.0.2.77".parse().unwrap();
        assert_eq!(Prefix::new(a, 24), None);
        assert_eq!(Prefix::new_truncating(a, 24), Some(p("192.0.2.0/24")));
        assert_eq!(Prefix::new(a, 33), None);
        assert_eq!(Prefix::new_truncating(a, 0), Some(p("0.0.0.0/0")));
    }
}
