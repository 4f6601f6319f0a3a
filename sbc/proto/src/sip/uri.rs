//! The rsip adapter: typed access to the URIs a routing decision needs (Request-URI, Contact,
//! Route). rsip never decides framing or validity of a message (it accepts wrong
//! Content-Length, truncated input and misses compact headers); it only types a URI the
//! sanity checks have already bounded and checked for whitespace and brackets.

use std::net::{IpAddr, SocketAddr};

/// Transports a URI or Via can name. TLS/WS/WSS are listed so the router can refuse them
/// clearly until their transports exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Ws,
    Wss,
    Other,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::Other => "other",
        }
    }
    /// Via transport token (RFC 3261 §20.42).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
            Transport::Other => "UDP",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

/// A SIP URI reduced to what routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    pub sips: bool,
    pub user: Option<String>,
    pub host: Host,
    pub port: Option<u16>,
    pub transport: Option<Transport>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("URI longer than {0} octets")]
    TooLong(usize),
    #[error("URI is not UTF-8 or contains whitespace")]
    NotText,
    #[error("not a sip/sips URI")]
    NotSip,
    #[error("rsip could not parse the URI: {0}")]
    Rsip(String),
}

/// Longest URI handed to rsip (bounded before parsing).
pub const MAX_URI: usize = 1024;

impl SipUri {
    pub fn parse(bytes: &[u8]) -> Result<SipUri, UriError> {
        if bytes.len() > MAX_URI {
            return Err(UriError::TooLong(MAX_URI));
        }
        let s = std::str::from_utf8(bytes).map_err(|_| UriError::NotText)?;
        if s.chars().any(char::is_whitespace) {
            return Err(UriError::NotText);
        }
        let lower = s.get(..5).unwrap_or(s).to_ascii_lowercase();
        let sips = lower.starts_with("sips:");
        if !sips && !lower.starts_with("sip:") {
            return Err(UriError::NotSip);
        }
        if s.contains('[') {
            // Measured: rsip 0.4 fails on IPv6 references ("invalid digit"); parse those here.
            return parse_ipv6_reference(s, sips);
        }
        let uri = rsip::Uri::try_from(s).map_err(|e| UriError::Rsip(e.to_string()))?;
        let host = match uri.host() {
            rsip::Host::IpAddr(ip) => Host::Ip(*ip),
            rsip::Host::Domain(d) => {
                // rsip keeps IPv6 references as domains "[2001:db8::1]".
                let d = d.to_string();
                match d.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                    Ok(ip) => Host::Ip(ip),
                    Err(_) => Host::Name(d),
                }
            }
        };
        let transport = uri.transport().map(|t| match t {
            rsip::Transport::Udp => Transport::Udp,
            rsip::Transport::Tcp => Transport::Tcp,
            rsip::Transport::Tls => Transport::Tls,
            rsip::Transport::Ws => Transport::Ws,
            rsip::Transport::Wss => Transport::Wss,
            _ => Transport::Other,
        });
        Ok(SipUri {
            sips,
            user: uri.user().map(str::to_owned),
            host,
            port: uri.port().map(|p| p.value()).copied(),
            transport,
        })
    }

    /// The socket address this URI designates when its host is an IP literal (RFC 3263 is not
    /// applied: names need the resolver of the daemon).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port_or_default())),
            Host::Name(_) => None,
        }
    }

    /// The port, or the scheme's default (RFC 3261 §19.1.2: 5060 for sip, 5061 for sips).
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(if self.sips { 5061 } else { 5060 })
    }
}

fn parse_ipv6_reference(s: &str, sips: bool) -> Result<SipUri, UriError> {
    let rest = s.split_once(':').map(|(_, r)| r).ok_or(UriError::NotSip)?;
    let (user, hostpart) = match rest.rfind('@') {
        Some(at) => (rest.get(..at).map(str::to_owned), rest.get(at + 1..).unwrap_or_default()),
        None => (None, rest),
    };
    let (hostport, params) = hostpart.split_once(';').unwrap_or((hostpart, ""));
    let inner = hostport.strip_prefix('[').ok_or_else(|| UriError::Rsip("bracket not at host".into()))?;
    let (ip, after) = inner.split_once(']').ok_or_else(|| UriError::Rsip("unclosed IPv6 reference".into()))?;
    let ip = super::values::ipv6_address(ip.as_bytes()).ok_or_else(|| UriError::Rsip("bad IPv6 reference".into()))?;
    let port = match after.strip_prefix(':') {
        Some(p) => Some(p.parse::<u16>().map_err(|_| UriError::Rsip("bad port".into()))?),
        None if after.is_empty() => None,
        None => return Err(UriError::Rsip("junk after IPv6 reference".into())),
    };
    let transport = params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.eq_ignore_ascii_case("transport").then(|| match v.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            _ => Transport::Other,
        })
    });
    Ok(SipUri { sips, user, host: Host::Ip(IpAddr::V6(ip)), port, transport })
}

/// The user part of a sip/sips URI without parsing the rest (hot path: token lookup).
pub fn user_part(uri: &[u8]) -> Option<&[u8]> {
    let colon = uri.iter().position(|&b| b == b':')?;
    let rest = uri.get(colon + 1..)?;
    let at = rest.iter().position(|&b| b == b'@')?;
    rest.get(..at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literal_uri_gives_a_socket_address() {
        let u = SipUri::parse(b"sip:alice@192.0.2.7:5070;transport=tcp").unwrap();
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.socket_addr(), Some("192.0.2.7:5070".parse().unwrap()));
        assert_eq!(u.transport, Some(Transport::Tcp));
    }

    #[test]
    fn ipv6_reference_is_an_ip() {
        let u = SipUri::parse(b"sip:bob@[2001:db8::10]:5080").unwrap();
        assert_eq!(u.socket_addr(), Some("[2001:db8::10]:5080".parse().unwrap()));
    }

    #[test]
    fn port_inside_brackets_is_not_a_port_rfc5118_4_3() {
        let u = SipUri::parse(b"sip:[2001:db8::10:5070]").unwrap();
        assert_eq!(u.host, Host::Ip("2001:db8::10:5070".parse().unwrap()));
        assert_eq!(u.port, None);
        let u = SipUri::parse(b"sip:[2001:db8::10]:5070").unwrap();
        assert_eq!(u.socket_addr(), Some("[2001:db8::10]:5070".parse().unwrap()));
    }

    #[test]
    fn three_colon_ipv6_reference_is_read_as_two_colons_rfc5118_4_10() {
        let u = SipUri::parse(b"sip:user@[2001:db8:::192.0.2.1]").unwrap();
        assert_eq!(u.host, Host::Ip("2001:db8::192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn ipv4_mapped_ipv6_reference_is_an_ip_rfc5118_4_9() {
        let u = SipUri::parse(b"sip:ted@[::ffff:192.0.2.2]").unwrap();
        assert_eq!(u.host, Host::Ip("::ffff:192.0.2.2".parse().unwrap()));
    }

    #[test]
    fn non_sip_scheme_is_refused_before_rsip() {
        assert_eq!(SipUri::parse(b"mailto:a@b"), Err(UriError::NotSip));
        assert_eq!(SipUri::parse(&[b'a'; 2000]), Err(UriError::TooLong(MAX_URI)));
    }

    #[test]
    fn user_part_is_found_without_parsing() {
        assert_eq!(user_part(b"sip:tok123@198.51.100.1:5060"), Some(&b"tok123"[..]));
        assert_eq!(user_part(b"sip:198.51.100.1"), None);
    }
}
