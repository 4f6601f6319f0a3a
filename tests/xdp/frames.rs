//! Hand-built Ethernet frames for verdict tests: the cases real sockets cannot produce
//! here (VLAN tags, stacked tags, IPv6 extension headers, lone fragments, truncation).

use std::net::{Ipv4Addr, Ipv6Addr};

pub const UDP: u8 = 17;
pub const TCP: u8 = 6;
pub const ICMP: u8 = 1;

/// A frame under construction: Ethernet header, optional tags, then layers appended.
pub struct Frame {
    pub bytes: Vec<u8>,
}

impl Frame {
    /// Ethernet header; `tags` are 802.1Q VLAN ids (0, 1 or 2 of them), `ether_type` the
    /// type after the tags.
    pub fn eth(dst: [u8; 6], tags: &[u16], ether_type: u16) -> Frame {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&dst);
        b.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        for vid in tags {
            b.extend_from_slice(&0x8100u16.to_be_bytes());
            b.extend_from_slice(&vid.to_be_bytes());
        }
        b.extend_from_slice(&ether_type.to_be_bytes());
        Frame { bytes: b }
    }

    /// IPv4 header (no options unless `options` non-empty, a multiple of 4 bytes).
    /// `frag` is the raw flags+offset field.
    pub fn ipv4(
        mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        frag: u16,
        options: &[u8],
        payload_len: usize,
    ) -> Frame {
        assert!(options.len().is_multiple_of(4) && options.len() <= 40);
        let ihl = 5 + options.len() / 4;
        let total = (ihl * 4 + payload_len) as u16;
        let start = self.bytes.len();
        self.bytes.push(0x40 | ihl as u8);
        self.bytes.push(0);
        self.bytes.extend_from_slice(&total.to_be_bytes());
        self.bytes.extend_from_slice(&[0x12, 0x34]);
        self.bytes.extend_from_slice(&frag.to_be_bytes());
        self.bytes.extend_from_slice(&[64, proto, 0, 0]);
        self.bytes.extend_from_slice(&src.octets());
        self.bytes.extend_from_slice(&dst.octets());
        self.bytes.extend_from_slice(options);
        let sum = checksum(&self.bytes[start..]);
        self.bytes[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
        self
    }

    /// IPv6 header; `next` is the first next-header value.
    pub fn ipv6(mut self, src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload_len: usize) -> Frame {
        self.bytes.extend_from_slice(&[0x60, 0, 0, 0]);
        self.bytes.extend_from_slice(&(payload_len as u16).to_be_bytes());
        self.bytes.extend_from_slice(&[next, 64]);
        self.bytes.extend_from_slice(&src.octets());
        self.bytes.extend_from_slice(&dst.octets());
        self
    }

    /// An 8-byte IPv6 extension header of the "next header, length" kind (hop-by-hop,
    /// destination options: PadN filling it).
    pub fn ext8(mut self, next: u8) -> Frame {
        self.bytes.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        self
    }

    /// IPv6 Fragment header (RFC 8200 §4.5); `offset` in 8-octet units.
    pub fn frag6(mut self, next: u8, offset: u16, more: bool) -> Frame {
        let field = (offset << 3) | u16::from(more);
        self.bytes.extend_from_slice(&[next, 0]);
        self.bytes.extend_from_slice(&field.to_be_bytes());
        self.bytes.extend_from_slice(&[0, 0, 0, 1]);
        self
    }

    /// UDP header + payload (checksum left zero: XDP does not look at it).
    pub fn udp(mut self, sport: u16, dport: u16, payload: &[u8]) -> Frame {
        self.bytes.extend_from_slice(&sport.to_be_bytes());
        self.bytes.extend_from_slice(&dport.to_be_bytes());
        self.bytes.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        self.bytes.extend_from_slice(&[0, 0]);
        self.bytes.extend_from_slice(payload);
        self
    }

    /// TCP SYN header (20 bytes).
    pub fn tcp_syn(mut self, sport: u16, dport: u16) -> Frame {
        self.bytes.extend_from_slice(&sport.to_be_bytes());
        self.bytes.extend_from_slice(&dport.to_be_bytes());
        self.bytes.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        self
    }

    pub fn raw(mut self, bytes: &[u8]) -> Frame {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// Pads to the 60-byte Ethernet minimum, as a NIC would.
    pub fn build(mut self) -> Vec<u8> {
        if self.bytes.len() < 60 {
            self.bytes.resize(60, 0);
        }
        self.bytes
    }
}

/// RFC 1071 Internet checksum.
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
