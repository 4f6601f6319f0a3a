//! NAT detection (the floor above [`crate::flow`]): is the UA that sent a request behind a NAT?
//! Owns no state; the registration cache asks it once per REGISTER and remembers the answer.
//!
//! RFC 3581 `received`/`rport` already makes responses reach a NATed UA. What this adds is the
//! knowledge that the UA's flow lives in a NAT binding that expires unless traffic crosses it:
//! such a UA gets a short registration expiry and keepalive pings (see
//! the registration layer).

use std::net::IpAddr;

use crate::flow::Flow;
use crate::sip::uri::Transport;

/// NAT handling on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NatMode {
    /// No NAT handling: registrations keep the registrar's expiry, no pings.
    #[default]
    Off,
    /// Detect NAT per UA ([`behind_nat`]).
    On,
    /// Treat every UA on this side as behind NAT (carrier-grade NAT, or detection defeated by
    /// an ALG that rewrites Via and Contact).
    Force,
}

impl NatMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NatMode::Off => "off",
            NatMode::On => "on",
            NatMode::Force => "force",
        }
    }
}

/// What a request says about where its sender thinks it is.
#[derive(Debug, Clone, Copy)]
pub struct Claims<'a> {
    /// Host of the topmost Via's sent-by (lower case, IPv6 without brackets or with: both work).
    pub via_host: &'a [u8],
    /// Port of the topmost Via's sent-by (the transport's default when absent).
    pub via_port: u16,
    /// The first Contact URI's host, when it is an address.
    pub contact_ip: Option<IpAddr>,
}

/// Why a UA was judged to be behind NAT (for logs and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// The side is configured `force`.
    Forced,
    /// The Via sent-by is not the packet's source address (RFC 3261 §18.2.1's `received` case).
    ViaAddress,
    /// The Via sent-by port is not the packet's source port (RFC 3581's `rport` case; UDP only,
    /// since a TCP connection's source port is ephemeral by design).
    ViaPort,
    /// The Contact host is a private or shared address that is not the packet's source.
    PrivateContact,
}

/// RFC 1918, RFC 6598 (carrier-grade NAT), link-local, RFC 4193 unique local and IPv6
/// link-local: addresses nobody outside the UA's own network can send to.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private() || a.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = a.segments();
            (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

fn parse_host(host: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(host).ok()?;
    let s = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(s);
    s.parse().ok()
}

/// Is the UA that sent a request on `flow` behind NAT? `None`: no sign of it.
pub fn behind_nat(mode: NatMode, flow: &Flow, claims: &Claims<'_>) -> Option<Evidence> {
    match mode {
        NatMode::Off => return None,
        NatMode::Force => return Some(Evidence::Forced),
        NatMode::On => {}
    }
    let source = flow.remote.ip();
    match parse_host(claims.via_host) {
        // A host name in sent-by says nothing about the address (RFC 3261 allows it).
        None => {}
        Some(ip) if ip != source => return Some(Evidence::ViaAddress),
        Some(_) => {}
    }
    if flow.transport == Transport::Udp && claims.via_port != flow.remote.port() {
        return Some(Evidence::ViaPort);
    }
    if let Some(ip) = claims.contact_ip
        && ip != source
        && is_private(ip)
    {
        return Some(Evidence::PrivateContact);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::flow::Side;

    fn flow(remote: &str, transport: Transport) -> Flow {
        Flow {
            side: Side::External,
            transport,
            local: "203.0.113.1:5060".parse().unwrap(),
            remote: remote.parse().unwrap(),
        }
    }

    fn claims<'a>(via_host: &'a str, via_port: u16, contact: Option<&'a str>) -> Claims<'a> {
        let contact_ip = contact.and_then(|c| parse_host(c.as_bytes()));
        Claims { via_host: via_host.as_bytes(), via_port, contact_ip }
    }

    #[test]
    fn a_private_via_behind_a_masquerading_router_is_nat_rfc3261_18_2_1() {
        let f = flow("198.51.100.20:40123", Transport::Udp);
        let c = claims("192.168.1.2", 5060, Some("192.168.1.2"));
        assert_eq!(behind_nat(NatMode::On, &f, &c), Some(Evidence::ViaAddress));
    }

    #[test]
    fn a_rewritten_via_address_with_a_changed_port_is_nat_by_port_rfc3581() {
        // An ALG (or a phone that learned its public address by STUN) writes the public IP, but
        // the router picked another port.
        let f = flow("198.51.100.20:40123", Transport::Udp);
        let c = claims("198.51.100.20", 5060, Some("198.51.100.20"));
        assert_eq!(behind_nat(NatMode::On, &f, &c), Some(Evidence::ViaPort));
    }

    #[test]
    fn a_private_contact_alone_is_nat() {
        let f = flow("198.51.100.20:5060", Transport::Udp);
        let c = claims("198.51.100.20", 5060, Some("10.1.2.3"));
        assert_eq!(behind_nat(NatMode::On, &f, &c), Some(Evidence::PrivateContact));
        let c = claims("198.51.100.20", 5060, Some("[fd00::1]"));
        assert_eq!(behind_nat(NatMode::On, &f, &c), Some(Evidence::PrivateContact));
    }

    #[test]
    fn a_ua_on_a_public_address_with_matching_via_is_not_nat() {
        let f = flow("198.51.100.7:5060", Transport::Udp);
        assert_eq!(behind_nat(NatMode::On, &f, &claims("198.51.100.7", 5060, Some("198.51.100.7"))), None);
        // A host name in sent-by and Contact: nothing to compare.
        assert_eq!(parse_host(b"phone.example.com"), None);
        assert_eq!(behind_nat(NatMode::On, &f, &claims("phone.example.com", 5060, Some("phone.example.com"))), None);
        // TCP: the source port is ephemeral, the Via port is the listening one.
        let t = flow("198.51.100.7:51234", Transport::Tcp);
        assert_eq!(behind_nat(NatMode::On, &t, &claims("198.51.100.7", 5060, None)), None);
        let v6 = flow("[2001:db8::7]:5060", Transport::Udp);
        assert_eq!(behind_nat(NatMode::On, &v6, &claims("[2001:db8::7]", 5060, Some("[2001:db8::7]"))), None);
    }

    #[test]
    fn off_never_and_force_always() {
        let f = flow("198.51.100.20:40123", Transport::Udp);
        let c = claims("192.168.1.2", 5060, None);
        assert_eq!(behind_nat(NatMode::Off, &f, &c), None);
        let p = claims("198.51.100.20", 40123, None);
        assert_eq!(behind_nat(NatMode::Force, &f, &p), Some(Evidence::Forced));
    }

    #[test]
    fn private_ranges() {
        for a in ["10.0.0.1", "172.16.5.4", "192.168.0.1", "100.64.0.1", "100.127.255.254", "169.254.1.1"] {
            assert!(is_private(a.parse().unwrap()), "{a}");
        }
        for a in ["100.128.0.1", "8.8.8.8", "198.51.100.20", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(!is_private(a.parse().unwrap()), "{a}");
        }
        for a in ["fd12::1", "fe80::1", "::ffff:192.168.1.1"] {
            assert!(is_private(a.parse().unwrap()), "{a}");
        }
    }
}
