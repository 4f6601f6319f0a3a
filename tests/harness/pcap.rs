//! A reader for the classic pcap files tcpdump writes (Ethernet or Linux cooked captures,
//! IPv4/IPv6, UDP/TCP), and SIP identifier extraction with the project's own header index.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use anyhow::{Result, bail};
use sbc_proto::sip::framer::{Limits, StreamFramer, StreamItem};
use sbc_proto::sip::message::{HeaderName, Message};
use sbc_proto::sip::values;

#[derive(Debug, Clone)]
pub struct Packet {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub tcp: bool,
    pub payload: Vec<u8>,
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
    let mut out = Vec::new();
    let mut pos = 24;
    while pos + 16 <= data.len() {
        let caplen = rd32(&data[pos + 8..pos + 12]) as usize;
        let start = pos + 16;
        let end = (start + caplen).min(data.len());
        if let Some(p) = parse_frame(linktype, &data[start..end]) {
            out.push(p);
        }
        pos = end;
    }
    Ok(out)
}

fn parse_frame(linktype: u32, f: &[u8]) -> Option<Packet> {
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
    let (tcp, payload) = match proto {
        17 => (false, l4.get(8..)?),
        6 => (true, l4.get(usize::from(l4.get(12)? >> 4) * 4..)?),
        _ => return None,
    };
    Some(Packet { src: SocketAddr::new(src, sport), dst: SocketAddr::new(dst, dport), tcp, payload: payload.to_vec() })
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
    /// Identifiers a UA creates: for a request its top Via branch, its From tag and (initial
    /// requests) its Call-ID; for a response its To tag.
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
            if tag(HeaderName::To).is_none()
                && let Some(c) = m.value(HeaderName::CallId)
            {
                out.push(String::from_utf8_lossy(c).trim().to_string());
            }
        } else {
            out.extend(tag(HeaderName::To));
        }
        out
    }
}
