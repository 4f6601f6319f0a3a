//! The unit the guard limits and bans: a source's prefix (IPv4 /32, IPv6 the configured prefix,
//! /64 by default: one subscriber's LAN, so rotating through its addresses does not help), and
//! the bounded, escaped text it keeps of what a source sent (user names, User-Agents).

use std::fmt::Write;
use std::net::IpAddr;

use crate::Prefix;

/// The prefix `ip` is limited and banned as. An IPv4-mapped IPv6 address is its IPv4 address
/// (a dual-stack socket reports IPv4 peers that way).
pub fn source_key(ip: IpAddr, ipv6_prefix_len: u8) -> Prefix {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => Prefix::host(v4),
        v6 @ IpAddr::V6(_) => Prefix::new_truncating(v6, ipv6_prefix_len.min(128)).unwrap_or(Prefix::host(v6)),
    }
}

/// Longest text kept from a message field (user, User-Agent), in bytes before escaping.
pub const MAX_FIELD: usize = 64;

/// `s` cut to [`MAX_FIELD`] bytes and escaped so that it is one printable line: bytes outside
/// 0x20..0x7e, `%` and `"` become `%XX` (a User-Agent may carry anything).
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_FIELD));
    for &b in s.as_bytes().iter().take(MAX_FIELD) {
        if (0x20..0x7f).contains(&b) && b != b'%' && b != b'"' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if s.len() > MAX_FIELD {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_keyed_per_address_and_ipv6_per_configured_prefix() {
        let k = |s: &str, l| source_key(s.parse().unwrap(), l).to_string();
        assert_eq!(k("198.51.100.66", 64), "198.51.100.66/32");
        assert_eq!(k("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(k("2001:db8:1:2:aaaa::1", 48), "2001:db8:1::/48");
        assert_eq!(k("2001:db8:1:2:aaaa::1", 128), "2001:db8:1:2:aaaa::1/128");
        assert_eq!(k("::ffff:198.51.100.66", 64), "198.51.100.66/32");
    }

    #[test]
    fn clean_text_is_bounded_and_one_printable_line() {
        assert_eq!(clean("friendly-scanner"), "friendly-scanner");
        assert_eq!(clean("a\tb\r\n%\"é"), "a%09b%0D%0A%25%22%C3%A9");
        let long = "x".repeat(1000);
        assert_eq!(clean(&long).len(), MAX_FIELD + 3);
    }
}
