//! The bounded SDP parser (RFC 8866 §5): bounds first, then one pass over the lines. Lenient
//! where real endpoints are (a bare LF as line break, blank lines, unknown line types), strict
//! on what anchoring rewrites (`o=`, `c=`, `m=`, `a=rtcp`).

use std::net::IpAddr;

use super::{Address, Direction, Kind, Limits, Media, Origin, Sdp, SdpError};

/// Parses `body` within `limits`.
pub fn parse<'a>(body: &'a [u8], limits: &Limits) -> Result<Sdp<'a>, SdpError> {
    if body.len() > limits.max_bytes {
        return Err(SdpError::TooLarge { len: body.len(), max: limits.max_bytes });
    }
    let mut lines: Vec<(&[u8], Kind)> = Vec::new();
    let mut origin: Option<Origin> = None;
    let mut session_conn: Option<Address> = None;
    let mut session_dir: Option<Direction> = None;
    // Per m-line as it is read: its line, its own c=, a=rtcp, rtcp-mux, direction.
    let mut media: Vec<Partial> = Vec::new();
    for (n, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let number = n + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // A CR inside a line (RFC 8866 §5: CRLF ends lines, LF alone is tolerated) would be a
        // line break to a laxer parser downstream, hiding a line from this one: refused.
        if line.contains(&b'\r') {
            return Err(SdpError::Malformed { line: number, what: "line with a bare CR" });
        }
        if line.len() > limits.max_line_len {
            return Err(SdpError::LineTooLong { line: number, max: limits.max_line_len });
        }
        if lines.len() >= limits.max_lines {
            return Err(SdpError::TooManyLines { max: limits.max_lines });
        }
        let (kind_byte, value) = match line {
            [k, b'=', rest @ ..] if k.is_ascii_lowercase() => (*k, rest),
            _ => return Err(SdpError::BadLine { line: number }),
        };
        if lines.is_empty() && line != b"v=0" {
            return Err(SdpError::NoVersion);
        }
        let kind = match kind_byte {
            b'o' if origin.is_none() && media.is_empty() => {
                origin = Some(parse_origin(value, number)?);
                Kind::Origin
            }
            b'c' => {
                let addr = parse_connection(value, number)?;
                let hold = addr.is_hold_marker();
                match media.last_mut() {
                    Some(m) => m.connection = Some(addr),
                    None => session_conn = Some(addr),
                }
                Kind::Connection { hold }
            }
            b'm' => {
                if media.len() >= limits.max_media {
                    return Err(SdpError::TooManyMedia { max: limits.max_media });
                }
                let m = parse_media(value, number, media.len())?;
                media.push(m);
                Kind::Media(media.len() - 1)
            }
            b'a' => attribute(value, number, media.last_mut(), &mut session_dir)?,
            // RFC 8866 §5.3: the session name may name the endpoint's product or owner.
            b's' if media.is_empty() => Kind::SessionName,
            // §5.4-§5.6: information, URI, e-mail and phone (optional) name the endpoint's
            // operator: not forwarded.
            b'i' | b'u' | b'e' | b'p' => Kind::Strip,
            _ => Kind::Other,
        };
        lines.push((line, kind));
    }
    if lines.is_empty() {
        return Err(SdpError::NoVersion);
    }
    let origin = origin.ok_or(SdpError::NoOrigin)?;
    let mut out = Vec::with_capacity(media.len());
    for (i, p) in media.into_iter().enumerate() {
        let connection = p.connection.or_else(|| session_conn.clone()).ok_or(SdpError::NoConnection { media: i })?;
        out.push(Media {
            kind: p.kind,
            port: p.port,
            proto: p.proto,
            connection,
            rtcp: p.rtcp,
            rtcp_mux: p.rtcp_mux,
            direction: p.direction.or(session_dir).unwrap_or(Direction::SendRecv),
        });
    }
    Ok(Sdp { lines, origin, media: out })
}

struct Partial {
    kind: String,
    port: u16,
    proto: String,
    connection: Option<Address>,
    rtcp: Option<(u16, Option<Address>)>,
    rtcp_mux: bool,
    direction: Option<Direction>,
}

fn text<'a>(value: &'a [u8], line: usize, what: &'static str) -> Result<&'a str, SdpError> {
    std::str::from_utf8(value).map_err(|_| SdpError::Malformed { line, what })
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>` (§5.2).
fn parse_origin(value: &[u8], line: usize) -> Result<Origin, SdpError> {
    let bad = SdpError::Malformed { line, what: "o= line" };
    let v = text(value, line, "o= line")?;
    let f: Vec<&str> = v.split_ascii_whitespace().collect();
    let [username, session_id, version, nettype, addrtype, address] = f.as_slice() else { return Err(bad) };
    if !session_id.bytes().all(|b| b.is_ascii_digit()) || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    Ok(Origin {
        username: (*username).to_owned(),
        session_id: (*session_id).to_owned(),
        version: (*version).to_owned(),
        address: address_of(nettype, addrtype, address).ok_or(bad)?,
    })
}

/// `c=<nettype> <addrtype> <connection-address>` (§5.7); a multicast address's `/ttl[/n]`
/// suffix is read past.
fn parse_connection(value: &[u8], line: usize) -> Result<Address, SdpError> {
    let bad = SdpError::Malformed { line, what: "c= line" };
    let v = text(value, line, "c= line")?;
    let f: Vec<&str> = v.split_ascii_whitespace().collect();
    let [nettype, addrtype, address] = f.as_slice() else { return Err(bad) };
    let address = address.split('/').next().unwrap_or_default();
    address_of(nettype, addrtype, address).ok_or(bad)
}

fn address_of(nettype: &str, addrtype: &str, address: &str) -> Option<Address> {
    if !nettype.eq_ignore_ascii_case("IN") {
        return None;
    }
    let v6 = match addrtype {
        a if a.eq_ignore_ascii_case("IP4") => false,
        a if a.eq_ignore_ascii_case("IP6") => true,
        _ => return None,
    };
    match address.parse::<IpAddr>() {
        Ok(ip) if ip.is_ipv6() == v6 => Some(Address::Ip(ip)),
        Ok(_) => None,
        Err(_) => {
            let name_ok = !address.is_empty()
                && address.len() <= 253
                && address.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            name_ok.then(|| Address::Name(address.to_owned()))
        }
    }
}

/// `m=<media> <port>[/<number of ports>] <proto> <fmt> ...` (§5.14).
fn parse_media(value: &[u8], line: usize, index: usize) -> Result<Partial, SdpError> {
    let bad = SdpError::Malformed { line, what: "m= line" };
    let v = text(value, line, "m= line")?;
    let mut f = v.split_ascii_whitespace();
    let (Some(kind), Some(port), Some(proto)) = (f.next(), f.next(), f.next()) else { return Err(bad) };
    let (port, count) = match port.split_once('/') {
        Some((p, c)) => (p, Some(c)),
        None => (port, None),
    };
    let port: u16 = port.parse().map_err(|_| bad.clone())?;
    if let Some(c) = count {
        let count: u16 = c.parse().map_err(|_| bad.clone())?;
        if count != 1 {
            return Err(SdpError::PortCount { media: index, count });
        }
    }
    Ok(Partial {
        kind: kind.to_owned(),
        port,
        proto: proto.to_owned(),
        connection: None,
        rtcp: None,
        rtcp_mux: false,
        direction: None,
    })
}

/// An `a=` line: the ones anchoring reads, the ones it strips, the rest kept.
fn attribute(
    value: &[u8],
    line: usize,
    media: Option<&mut Partial>,
    session_dir: &mut Option<Direction>,
) -> Result<Kind, SdpError> {
    let (name, arg) = match value.iter().position(|&b| b == b':') {
        Some(i) => (value.get(..i).unwrap_or_default(), value.get(i + 1..)),
        None => (value, None),
    };
    let direction = match name {
        b"sendrecv" => Some(Direction::SendRecv),
        b"sendonly" => Some(Direction::SendOnly),
        b"recvonly" => Some(Direction::RecvOnly),
        b"inactive" => Some(Direction::Inactive),
        _ => None,
    };
    if let Some(d) = direction {
        match media {
            Some(m) => m.direction = Some(d),
            None => *session_dir = Some(d),
        }
        return Ok(Kind::Other);
    }
    match name {
        b"candidate" | b"remote-candidates" | b"ice-ufrag" | b"ice-pwd" | b"ice-options" | b"ice-lite"
        | b"ice-mismatch" | b"end-of-candidates" | b"alt" | b"bundle-only" => Ok(Kind::Strip),
        b"group"
            if arg.is_some_and(|a| a.len() >= 6 && a.get(..6).is_some_and(|p| p.eq_ignore_ascii_case(b"BUNDLE"))) =>
        {
            Ok(Kind::Strip)
        }
        b"rtcp-mux" => {
            if let Some(m) = media {
                m.rtcp_mux = true;
            }
            Ok(Kind::Other)
        }
        b"rtcp" => {
            let bad = SdpError::Malformed { line, what: "a=rtcp (RFC 3605)" };
            let v = text(arg.unwrap_or_default(), line, "a=rtcp (RFC 3605)")?;
            let f: Vec<&str> = v.split_ascii_whitespace().collect();
            let (port, address) = match f.as_slice() {
                [p] => (p, None),
                [p, n, t, a] => (p, Some(address_of(n, t, a).ok_or(bad.clone())?)),
                _ => return Err(bad),
            };
            let port: u16 = port.parse().map_err(|_| bad)?;
            let with_address = address.is_some();
            // A session-level a=rtcp means nothing (RFC 3605 §2.1: media level only), and
            // it may name an address: removed.
            match media {
                Some(m) => m.rtcp = Some((port, address)),
                None => return Ok(Kind::Strip),
            }
            Ok(Kind::Rtcp { with_address })
        }
        _ => Ok(Kind::Other),
    }
}
