//! The STUN message codec (RFC 8489 §5, §7, §14): [`Message::parse`] bounds before it parses
//! (total size, attribute count, each attribute's length and padding, FINGERPRINT checked), and
//! [`Writer`] builds a message with zero padding and, optionally, a FINGERPRINT. The codec
//! knows the wire format and the address and fingerprint attributes; what a message means is
//! the [`super::Server`]'s business.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::crc32::crc32;
use super::{HEADER_LEN, MAGIC_COOKIE, attr};

/// RFC 8489 §14.7: the CRC-32 of a FINGERPRINT is XORed with this ("STUN" in ASCII).
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// The bounds [`Message::parse`] enforces before it looks inside a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole message (header included), in octets; larger ones are refused unread.
    pub max_message_bytes: usize,
    /// Most attributes one message may carry.
    pub max_attributes: usize,
}

impl Default for Limits {
    /// 1280 octets (the IPv6 minimum MTU; a Binding request is well under 200) and 32 attributes.
    fn default() -> Self {
        Limits { max_message_bytes: 1280, max_attributes: 32 }
    }
}

/// The class of a message (RFC 8489 §5: bits C1 and C0 of the message type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    SuccessResponse,
    ErrorResponse,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::SuccessResponse => 0b10,
            Class::ErrorResponse => 0b11,
        }
    }

    fn from_bits(bits: u16) -> Class {
        match bits & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::SuccessResponse,
            _ => Class::ErrorResponse,
        }
    }
}

/// The 14-bit message type for a class and a 12-bit method (RFC 8489 §5, figure 3: the class
/// bits sit at positions 4 and 8, between the method's bits).
pub fn message_type(class: Class, method: u16) -> u16 {
    let c = class.bits();
    (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | ((c & 0b01) << 4) | ((c & 0b10) << 7)
}

fn split_type(typ: u16) -> (Class, u16) {
    let class = Class::from_bits(((typ >> 4) & 0b01) | ((typ >> 7) & 0b10));
    let method = (typ & 0x000F) | ((typ >> 1) & 0x0070) | ((typ >> 2) & 0x0F80);
    (class, method)
}

/// Why a datagram is not a well-formed STUN message (the codec's one error type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{len} octets, over the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("{len} octets, shorter than the 20-octet header")]
    TooShort { len: usize },
    #[error("first byte {byte:#04x}: the two top bits of a STUN message are zero (RFC 8489 §5)")]
    NotStun { byte: u8 },
    #[error("magic cookie {found:#010x}, expected 0x2112a442")]
    BadCookie { found: u32 },
    #[error("header length {declared} is not a multiple of 4")]
    UnalignedLength { declared: usize },
    #[error("header length {declared}, but {actual} octets follow the header")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("more than {max} attributes")]
    TooManyAttributes { max: usize },
    #[error("attribute header at offset {offset} is cut short")]
    AttributeHeaderTruncated { offset: usize },
    #[error(
        "attribute {typ:#06x} at offset {offset}: length {len} (padded) runs past the end, {remaining} octets left"
    )]
    AttributePastEnd { typ: u16, offset: usize, len: usize, remaining: usize },
    #[error("attribute {typ:#06x} follows FINGERPRINT, which must be last (RFC 8489 §14.7)")]
    AfterFingerprint { typ: u16 },
    #[error("FINGERPRINT of {len} octets, expected 4")]
    FingerprintLength { len: usize },
    #[error("FINGERPRINT {found:#010x}, computed {computed:#010x}")]
    BadFingerprint { found: u32, computed: u32 },
    #[error("address attribute of {len} octets for family {family:#04x}")]
    AddressLength { family: u8, len: usize },
    #[error("unknown address family {family:#04x}")]
    AddressFamily { family: u8 },
}

/// One attribute as it sits in the message (RFC 8489 §14): its type, its value without the
/// padding, and the offset of its 4-octet header from the start of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    pub typ: u16,
    pub value: &'a [u8],
    pub offset: usize,
}

/// A parsed message: the header's fields and every attribute, borrowed from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub class: Class,
    pub method: u16,
    pub transaction_id: [u8; 12],
    /// In wire order; at most `Limits::max_attributes`.
    pub attributes: Vec<RawAttribute<'a>>,
    /// The FINGERPRINT value when present; [`Message::parse`] has checked it.
    pub fingerprint: Option<u32>,
}

impl<'a> Message<'a> {
    /// Parses one datagram as a STUN message, bounds first: its size against `limits` before
    /// anything is read, then the header (RFC 8489 §5: top bits, cookie, length a multiple of 4
    /// and equal to what follows), then each attribute's header and padded length against what
    /// is left and the attribute count against `limits`, and last the FINGERPRINT (§14.7),
    /// which must be the last attribute and match. Never panics.
    pub fn parse(bytes: &'a [u8], limits: &Limits) -> Result<Message<'a>, ParseError> {
        if bytes.len() > limits.max_message_bytes {
            return Err(ParseError::TooLong { len: bytes.len(), max: limits.max_message_bytes });
        }
        let (header, body) =
            bytes.split_first_chunk::<HEADER_LEN>().ok_or(ParseError::TooShort { len: bytes.len() })?;
        let [t0, t1, l0, l1, c0, c1, c2, c3, tid @ ..] = *header;
        if t0 & 0xC0 != 0 {
            return Err(ParseError::NotStun { byte: t0 });
        }
        let cookie = u32::from_be_bytes([c0, c1, c2, c3]);
        if cookie != MAGIC_COOKIE {
            return Err(ParseError::BadCookie { found: cookie });
        }
        let declared = usize::from(u16::from_be_bytes([l0, l1]));
        if declared % 4 != 0 {
            return Err(ParseError::UnalignedLength { declared });
        }
        if declared != body.len() {
            return Err(ParseError::LengthMismatch { declared, actual: body.len() });
        }
        let (class, method) = split_type(u16::from_be_bytes([t0, t1]));

        let mut attributes = Vec::new();
        let mut fingerprint = None;
        let mut rest = body;
        let mut offset = HEADER_LEN;
        while !rest.is_empty() {
            let (ah, after) = rest.split_first_chunk::<4>().ok_or(ParseError::AttributeHeaderTruncated { offset })?;
            let [a0, a1, a2, a3] = *ah;
            let typ = u16::from_be_bytes([a0, a1]);
            if fingerprint.is_some() {
                return Err(ParseError::AfterFingerprint { typ });
            }
            if attributes.len() >= limits.max_attributes {
                return Err(ParseError::TooManyAttributes { max: limits.max_attributes });
            }
            let len = usize::from(u16::from_be_bytes([a2, a3]));
            let padded = len.next_multiple_of(4);
            let past_end = || ParseError::AttributePastEnd { typ, offset, len: padded, remaining: after.len() };
            let value = after.get(..len).ok_or_else(past_end)?;
            let next = after.get(padded..).ok_or_else(past_end)?;
            if typ == attr::FINGERPRINT {
                let found = u32::from_be_bytes(
                    value.try_into().map_err(|_| ParseError::FingerprintLength { len: value.len() })?,
                );
                // The CRC covers the message up to the attribute, length field as sent.
                let computed = fingerprint_value(bytes.get(..offset).unwrap_or(bytes));
                if found != computed {
                    return Err(ParseError::BadFingerprint { found, computed });
                }
                fingerprint = Some(found);
            }
            attributes.push(RawAttribute { typ, value, offset });
            offset += 4 + padded;
            rest = next;
        }
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&tid);
        Ok(Message { class, method, transaction_id, attributes, fingerprint })
    }

    /// The first attribute of type `typ`.
    pub fn attribute(&self, typ: u16) -> Option<&RawAttribute<'a>> {
        self.attributes.iter().find(|a| a.typ == typ)
    }

    /// The attributes a receiver acts on (RFC 8489 §9): everything up to and including the first
    /// MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256; what follows those is ignored, except a
    /// MESSAGE-INTEGRITY-SHA256 or FINGERPRINT, which this crate understands anyway.
    pub fn effective_attributes(&self) -> &[RawAttribute<'a>] {
        let end = self
            .attributes
            .iter()
            .position(|a| a.typ == attr::MESSAGE_INTEGRITY || a.typ == attr::MESSAGE_INTEGRITY_SHA256)
            .map_or(self.attributes.len(), |i| i + 1);
        self.attributes.get(..end).unwrap_or(&self.attributes)
    }

    /// The XOR-MAPPED-ADDRESS (RFC 8489 §14.2), decoded, when present.
    pub fn xor_mapped_address(&self) -> Option<Result<SocketAddr, ParseError>> {
        self.attribute(attr::XOR_MAPPED_ADDRESS).map(|a| decode_xor_address(a.value, &self.transaction_id))
    }
}

/// The FINGERPRINT value (RFC 8489 §14.7) for a message whose bytes up to the FINGERPRINT
/// attribute are `before` (header length already counting the FINGERPRINT attribute).
pub fn fingerprint_value(before: &[u8]) -> u32 {
    crc32(before) ^ FINGERPRINT_XOR
}

/// The XOR mask of an address (RFC 8489 §14.2): the magic cookie, then the transaction id.
fn xor_mask(transaction_id: &[u8; 12]) -> [u8; 16] {
    let mut mask = [0u8; 16];
    let (cookie, tid) = mask.split_at_mut(4);
    cookie.copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    tid.copy_from_slice(transaction_id);
    mask
}

fn xor16(a: [u8; 16], b: [u8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

/// The value of an XOR-MAPPED-ADDRESS for `addr` (RFC 8489 §14.2): family 0x01 with 4 octets or
/// 0x02 with 16, the port XOR the cookie's top half, the address XOR cookie ‖ transaction id.
/// An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 peer) is sent as IPv4.
pub fn encode_xor_address(addr: SocketAddr, transaction_id: &[u8; 12]) -> Vec<u8> {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mask = xor_mask(transaction_id);
    let mut value = Vec::with_capacity(20);
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => {
            value.extend_from_slice(&[0, 0x01]);
            value.extend_from_slice(&port.to_be_bytes());
            value.extend_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
        }
        IpAddr::V6(ip) => {
            value.extend_from_slice(&[0, 0x02]);
            value.extend_from_slice(&port.to_be_bytes());
            value.extend_from_slice(&xor16(ip.octets(), mask));
        }
    }
    value
}

/// Decodes an XOR-MAPPED-ADDRESS value (RFC 8489 §14.2); the first octet is ignored.
pub fn decode_xor_address(value: &[u8], transaction_id: &[u8; 12]) -> Result<SocketAddr, ParseError> {
    let Some(([_, family, p0, p1], addr)) = value.split_first_chunk::<4>().map(|(h, a)| (*h, a)) else {
        return Err(ParseError::AddressLength { family: value.get(1).copied().unwrap_or(0), len: value.len() });
    };
    let port = u16::from_be_bytes([p0, p1]) ^ (MAGIC_COOKIE >> 16) as u16;
    let bad_len = ParseError::AddressLength { family, len: value.len() };
    let ip = match family {
        0x01 => {
            let a: [u8; 4] = addr.try_into().map_err(|_| bad_len)?;
            IpAddr::V4(Ipv4Addr::from(u32::from_be_bytes(a) ^ MAGIC_COOKIE))
        }
        0x02 => {
            let a: [u8; 16] = addr.try_into().map_err(|_| bad_len)?;
            IpAddr::V6(Ipv6Addr::from(xor16(a, xor_mask(transaction_id))))
        }
        _ => return Err(ParseError::AddressFamily { family }),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Builds one message (RFC 8489 §5, §14): the header, then attributes each padded with zeros to
/// a multiple of 4, the header's length kept current.
#[derive(Debug, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A message of `class` and `method` with `transaction_id` and no attributes yet.
    pub fn new(class: Class, method: u16, transaction_id: &[u8; 12]) -> Writer {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&message_type(class, method).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(transaction_id);
        Writer { buf }
    }

    /// Appends an attribute. A value is at most 65535 octets (its length field's range); the
    /// callers here write a few dozen, and a longer one is cut to that.
    pub fn attribute(&mut self, typ: u16, value: &[u8]) -> &mut Writer {
        let value = value.get(..usize::from(u16::MAX)).unwrap_or(value);
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
        self.set_length(self.buf.len() - HEADER_LEN);
        self
    }

    fn set_length(&mut self, len: usize) {
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        if let Some(field) = self.buf.get_mut(2..4) {
            field.copy_from_slice(&len.to_be_bytes());
        }
    }

    /// The message as it stands.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// The message with a FINGERPRINT appended (RFC 8489 §14.7): the length field is set to
    /// count it before the CRC is taken.
    pub fn finish_with_fingerprint(mut self) -> Vec<u8> {
        self.set_length(self.buf.len() + 8 - HEADER_LEN);
        let fp = fingerprint_value(&self.buf);
        self.attribute(attr::FINGERPRINT, &fp.to_be_bytes());
        self.buf
    }
}
