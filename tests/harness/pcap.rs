//! A reader for the classic pcap files tcpdump writes (Ethernet or Linux cooked captures,
//! IPv4/IPv6, UDP/TCP), and SIP identifier extraction with the project's own header index.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use sbc_proto::sip::framer::{Limits, StreamFramer, StreamItem};
use sbc_proto::sip::message::{Header, HeaderName, Message};
use sbc_proto::sip::uri::{Host, SipUri};
use sbc_proto::sip::values;

/// The transport of a captured packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Udp,
    /// TCP with its flags octet (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10).
    Tcp {
        flags: u8,
    },
    /// ICMP or ICMPv6 (type, code); the payload is what it quotes of the offending datagram,
    /// and both ports are 0.
    Icmp {
        kind: u8,
        code: u8,
    },
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[derive(Debug, Clone)]
pub struct Packet {
    /// Capture time (since the epoch, as tcpdump recorded it).
    pub ts: Duration,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Packet {
    /// An ICMP "port unreachable" (ICMP 3/3, ICMPv6 1/4).
    pub fn is_port_unreachable(&self) -> bool {
        matches!((self.l4, self.src.ip()), (L4::Icmp { kind: 3, code: 3 }, IpAddr::V4(_)))
            || matches!((self.l4, self.src.ip()), (L4::Icmp { kind: 1, code: 4 }, IpAddr::V6(_)))
    }

    /// For an ICMP error: the destination (address, port) of the datagram it reports.
    pub fn icmp_about(&self) -> Option<SocketAddr> {
        let L4::Icmp { .. } = self.l4 else { return None };
        let q = &self.payload;
        let (dst, l4) = match self.src.ip() {
            IpAddr::V4(_) => {
                let ihl = usize::from(q.first()? & 0x0f) * 4;
                let d: [u8; 4] = q.get(16..20)?.try_into().ok()?;
                (IpAddr::V4(Ipv4Addr::from(d)), q.get(ihl..)?)
            }
            IpAddr::V6(_) => {
                let d: [u8; 16] = q.get(24..40)?.try_into().ok()?;
                (IpAddr::V6(Ipv6Addr::from(d)), q.get(40..)?)
            }
        };
        Some(SocketAddr::new(dst, u16be(l4, 2)?))
    }

    pub fn tcp_flags(&self) -> Option<u8> {
        match self.l4 {
            L4::Tcp { flags } => Some(flags),
            _ => None,
        }
    }
}

fn u16be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

pub fn read(path: &Path) -> Result<Vec<Packet>> {
    let data = std::fs::read(path)?;
    if data.len() < 24 {
        bail!("{}: not a pcap file ({} bytes)", path.display(), data.len());
    }
    let magic = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let le = match magic {
        0xa1b2c3d4 | 0xa1b23c4d => true,
        0xd4c3b2a1 | 0x4d3cb2a1 => false,
        _ => bail!("{}: bad pcap magic {magic:x}", path.display()),
    };
    let rd32 = |b: &[u8]| {
        if le { u32::from_le_bytes([b[0], b[1], b[2], b[3]]) } else { u32::from_be_bytes([b[0], b[1], b[2], b[3]]) }
    };
    let linktype = rd32(&data[20..24]);
    let nanos = matches!(magic, 0xa1b23c4d | 0x4d3cb2a1);
    let mut out = Vec::new();
    let mut pos = 24;
    while pos + 16 <= data.len() {
        let secs = u64::from(rd32(&data[pos..pos + 4]));
        let frac = rd32(&data[pos + 4..pos + 8]);
        let ts = Duration::new(secs, if nanos { frac } else { frac.saturating_mul(1000) });
        let caplen = rd32(&data[pos + 8..pos + 12]) as usize;
        let start = pos + 16;
        let end = (start + caplen).min(data.len());
        if let Some(p) = parse_frame(ts, linktype, &data[start..end]) {
            out.push(p);
        }
        pos = end;
    }
    Ok(out)
}

fn parse_frame(ts: Duration, linktype: u32, f: &[u8]) -> Option<Packet> {
    let (mut ethertype, mut off) = match linktype {
        1 => (u16be(f, 12)?, 14),
        113 => (u16be(f, 14)?, 16),
        276 => (u16be(f, 0)?, 20),
        _ => return None,
    };
    if ethertype == 0x8100 {
        ethertype = u16be(f, off + 2)?;
        off += 4;
    }
    let ip = f.get(off..)?;
    let (src, dst, proto, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let src = Ipv4Addr::new(*ip.get(12)?, *ip.get(13)?, *ip.get(14)?, *ip.get(15)?);
            let dst = Ipv4Addr::new(*ip.get(16)?, *ip.get(17)?, *ip.get(18)?, *ip.get(19)?);
            let total = usize::from(u16be(ip, 2)?).min(ip.len());
            (IpAddr::V4(src), IpAddr::V4(dst), *ip.get(9)?, ip.get(ihl..total)?)
        }
        0x86dd => {
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(d)), *ip.get(6)?, ip.get(40..)?)
        }
        _ => return None,
    };
    let (sport, dport) = (u16be(l4, 0)?, u16be(l4, 2)?);
    let (kind, payload, ports) = match proto {
        17 => (L4::Udp, l4.get(8..)?, (sport, dport)),
        6 => (L4::Tcp { flags: *l4.get(13)? }, l4.get(usize::from(l4.get(12)? >> 4) * 4..)?, (sport, dport)),
        1 | 58 => (L4::Icmp { kind: *l4.first()?, code: *l4.get(1)? }, l4.get(8..)?, (0, 0)),
        _ => return None,
    };
    Some(Packet {
        ts,
        src: SocketAddr::new(src, ports.0),
        dst: SocketAddr::new(dst, ports.1),
        l4: kind,
        payload: payload.to_vec(),
    })
}

/// The SIP messages in one payload (a datagram, or a TCP segment holding whole messages).
pub fn sip_messages(payload: &[u8]) -> Vec<Sip> {
    let mut f = StreamFramer::new(Limits { max_message_bytes: 65535, max_headers: 256, max_body_bytes: 65535 });
    let mut out = Vec::new();
    if f.push(payload).is_err() {
        return out;
    }
    while let Ok(Some(item)) = f.next_item() {
        if let StreamItem::Message(m) = item {
            out.push(Sip(m));
        }
    }
    if out.is_empty() && !payload.is_empty() {
        // UDP datagrams without Content-Length.
        out.push(Sip(payload.to_vec()));
    }
    out
}

pub struct Sip(pub Vec<u8>);

impl Sip {
    /// The message's SDP body (Content-Type `application/sdp`), if any.
    pub fn sdp(&self) -> Option<String> {
        let m = Message::index(&self.0, 256).ok()?;
        let ct = String::from_utf8_lossy(m.value(HeaderName::ContentType)?).to_ascii_lowercase();
        let body = m.body();
        (ct.trim_start().starts_with("application/sdp") && !body.is_empty())
            .then(|| String::from_utf8_lossy(body).into_owned())
    }

    /// A response's status code.
    pub fn status(&self) -> Option<u16> {
        Message::index(&self.0, 256).ok()?.status()
    }

    /// A request's method.
    pub fn method(&self) -> Option<String> {
        let m = Message::index(&self.0, 256).ok()?;
        m.is_request().then(|| String::from_utf8_lossy(m.method_bytes()).into_owned())
    }

    /// Identifiers and names a UA creates: for a request its top Via branch, its From tag and,
    /// for an initial request (no To tag: the From is its own), its Call-ID, the host after
    /// the Call-ID's '@' and its From URI's host; in any request the URI hosts of its
    /// P-Asserted-Identity and Referred-By; for a response its To tag; in any message the
    /// values of its Server and User-Agent headers.
    pub fn core_identifiers(&self) -> Vec<String> {
        let Ok(m) = Message::index(&self.0, 256) else { return Vec::new() };
        let mut out = Vec::new();
        let tag = |name: HeaderName| -> Option<String> {
            let v = m.unfolded(m.first(name)?);
            let na = values::name_addr(&v).ok()?;
            let t = values::param(v.get(na.params)?, "tag")?;
            Some(String::from_utf8_lossy(t).into_owned())
        };
        if m.is_request() {
            if let Some(via) = m.first(HeaderName::Via)
                && let Ok(parts) = values::split_commas(&m.unfolded(via))
                && let Some(first) = parts.first()
            {
                let v = m.unfolded(via);
                if let Some(b) = v
                    .get(first.clone())
                    .and_then(|e| values::via(e).ok())
                    .and_then(|via| via.branch().map(<[u8]>::to_vec))
                {
                    out.push(String::from_utf8_lossy(&b).into_owned());
                }
            }
            out.extend(tag(HeaderName::From));
            if tag(HeaderName::To).is_none() {
                if let Some(c) = m.value(HeaderName::CallId) {
                    let c = String::from_utf8_lossy(c).trim().to_string();
                    out.extend(c.split_once('@').map(|(_, host)| host.to_string()));
                    out.push(c);
                }
                out.extend(uri_hosts(&m, |h| h.name == HeaderName::From));
            }
            out.extend(uri_hosts(&m, |h| {
                h.name == HeaderName::ReferredBy
                    || (h.name == HeaderName::Other
                        && m.slice(&h.name_span).eq_ignore_ascii_case(b"P-Asserted-Identity"))
            }));
        } else {
            out.extend(tag(HeaderName::To));
        }
        for h in m.all(HeaderName::Server).chain(m.all(HeaderName::UserAgent)) {
            out.push(String::from_utf8_lossy(&m.unfolded(h)).trim().to_string());
        }
        // What its SDP names it by (RFC 8866 §5.2, §5.3): the o= username and session id, the
        // session name. (Its addresses are searched for anyway; its ports: [`sdp_ports`].)
        if let Some(sdp) = self.sdp() {
            for line in sdp.lines() {
                if let Some(o) = line.strip_prefix("o=") {
                    let mut f = o.split(' ');
                    out.extend(f.next().filter(|u| *u != "-").map(str::to_owned));
                    out.extend(f.next().map(str::to_owned));
                } else if let Some(name) = line.strip_prefix("s=") {
                    out.push(name.trim().to_owned());
                }
            }
        }
        out
    }
}

/// The hosts of the URIs in the (comma-separated) name-addr values of the headers `pick` selects.
fn uri_hosts(m: &Message<'_>, pick: impl Fn(&Header) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for h in m.headers.iter().filter(|h| pick(h)) {
        let v = m.unfolded(h);
        for part in values::split_commas(&v).unwrap_or_default() {
            let Some(elem) = v.get(part) else { continue };
            let Some(uri) = values::name_addr(elem).ok().and_then(|na| elem.get(na.uri)) else { continue };
            match SipUri::parse(uri).map(|u| u.host) {
                Ok(Host::Name(n)) => out.push(n),
                Ok(Host::Ip(ip)) => out.push(ip.to_string()),
                Err(_) => {}
            }
        }
    }
    out
}

/// The transport ports an SDP body names: every `m=` port but 0 and every `a=rtcp` port
/// (RFC 8866 §5.14, RFC 3605).
pub fn sdp_ports(sdp: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for line in sdp.lines() {
        let port = if let Some(m) = line.strip_prefix("m=") {
            m.split(' ').nth(1).and_then(|p| p.split('/').next()).and_then(|p| p.parse::<u16>().ok())
        } else if let Some(r) = line.strip_prefix("a=rtcp:") {
            r.split(' ').next().and_then(|p| p.trim().parse::<u16>().ok())
        } else {
            None
        };
        out.extend(port.filter(|&p| p != 0));
    }
    out
}

/// Every SDP body the packets from `from` carried in a capture.
pub fn sdp_bodies(capture: &[Packet], from: std::net::IpAddr) -> Vec<String> {
    capture
        .iter()
        .filter(|p| p.src.ip() == from)
        .flat_map(|p| sip_messages(&p.payload))
        .filter_map(|m| m.sdp())
        .collect()
}
