//! STUN (RFC 8489) for a SIP port: the RFC 7983 demultiplexing rule ([`is_stun`]), a bounded
//! sans-IO codec ([`message`]: parse with bounds first, encode with FINGERPRINT) and a Binding
//! server ([`Server`]) that answers from the source address it is handed, and the framing of a
//! STUN stream over TCP ([`frame_stream`], RFC 8489 §6.2.2). No authentication:
//! like a public STUN server (RFC 8489 §9), MESSAGE-INTEGRITY and its kin are parsed and skipped.

mod crc32;
pub mod message;
mod server;

pub use message::{
    Class, Limits, Message, ParseError, RawAttribute, Writer, decode_xor_address, encode_xor_address, fingerprint_value,
};
pub use server::{Config, ConfigError, IgnoreReason, Reply, Server};

/// The magic cookie (RFC 8489 §5): bytes 4..8 of every STUN message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// The STUN header is 20 octets (RFC 8489 §5).
pub const HEADER_LEN: usize = 20;
/// The Binding method (RFC 8489 §18.2).
pub const BINDING: u16 = 0x001;

/// Attribute types this crate names (RFC 8489 §18.3).
pub mod attr {
    /// MAPPED-ADDRESS (§14.1).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME (§14.3).
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (§14.5).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE (§14.8).
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES (§14.13).
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// REALM (§14.9).
    pub const REALM: u16 = 0x0014;
    /// NONCE (§14.10).
    pub const NONCE: u16 = 0x0015;
    /// MESSAGE-INTEGRITY-SHA256 (§14.6).
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// PASSWORD-ALGORITHM (§14.12).
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    /// USERHASH (§14.4).
    pub const USERHASH: u16 = 0x001E;
    /// XOR-MAPPED-ADDRESS (§14.2).
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// PASSWORD-ALGORITHMS (§14.11).
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    /// ALTERNATE-DOMAIN (§14.16).
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    /// SOFTWARE (§14.14).
    pub const SOFTWARE: u16 = 0x8022;
    /// ALTERNATE-SERVER (§14.15).
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    /// FINGERPRINT (§14.7).
    pub const FINGERPRINT: u16 = 0x8028;

    /// The comprehension-required attributes (0x0000–0x7FFF) this server understands: those
    /// RFC 8489 §18.3.1 registers. Any other one in a request is answered 420 (§6.3.1). ICE's
    /// (PRIORITY, USE-CANDIDATE, RFC 8445 §16.1) are not among them: this is no ICE agent.
    pub const UNDERSTOOD: [u16; 11] = [
        MAPPED_ADDRESS,
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        REALM,
        NONCE,
        MESSAGE_INTEGRITY_SHA256,
        PASSWORD_ALGORITHM,
        USERHASH,
        XOR_MAPPED_ADDRESS,
    ];

    /// RFC 8489 §14 (RFC 5389 §15 before it): types 0x0000–0x7FFF are comprehension-required.
    pub fn is_comprehension_required(typ: u16) -> bool {
        typ < 0x8000
    }
}

/// RFC 7983 §7 (updating RFC 5764 §5.1.2) for a SIP UDP port: a datagram is STUN when its first
/// byte is 0..=3 (SIP starts with a letter), bytes 4..8 are the magic cookie (RFC 8489 §5), it
/// is at least a header long, and the header's length field is a multiple of 4 that covers
/// exactly the rest of the datagram. Anything else goes to the SIP framer.
pub fn is_stun(datagram: &[u8]) -> bool {
    let Some(header) = datagram.first_chunk::<HEADER_LEN>() else {
        return false;
    };
    let [first, _, l0, l1, c0, c1, c2, c3, ..] = *header;
    let declared = usize::from(u16::from_be_bytes([l0, l1]));
    first <= 3
        && u32::from_be_bytes([c0, c1, c2, c3]) == MAGIC_COOKIE
        && declared % 4 == 0
        && datagram.len() == HEADER_LEN + declared
}

/// Where the next message of a STUN stream ends (RFC 8489 §6.2.2: over TCP, STUN messages
/// follow each other, each delimited by its header's length field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFrame {
    /// Not a whole message yet; read more.
    Incomplete,
    /// The first `n` octets are one whole message (not yet parsed).
    Message(usize),
    /// Not STUN, or a message over the size limit: the stream cannot be followed any further
    /// (close it).
    Invalid(ParseError),
}

/// Frames the message at the start of `buf`, a STUN stream's unread octets, bounds first: the
/// first byte's top bits (§5) and the magic cookie are checked as soon as they have arrived, the
/// declared length (a multiple of 4) against `limits.max_message_bytes` before the body is
/// awaited, so a peer that sends garbage or announces a huge message is refused at once.
pub fn frame_stream(buf: &[u8], limits: &Limits) -> StreamFrame {
    if let Some(&first) = buf.first()
        && first & 0xC0 != 0
    {
        return StreamFrame::Invalid(ParseError::NotStun { byte: first });
    }
    if let Some(&[c0, c1, c2, c3]) = buf.get(4..8).and_then(|c| c.first_chunk::<4>()) {
        let found = u32::from_be_bytes([c0, c1, c2, c3]);
        if found != MAGIC_COOKIE {
            return StreamFrame::Invalid(ParseError::BadCookie { found });
        }
    }
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return StreamFrame::Incomplete;
    };
    let [_, _, l0, l1, ..] = *header;
    let declared = usize::from(u16::from_be_bytes([l0, l1]));
    if declared % 4 != 0 {
        return StreamFrame::Invalid(ParseError::UnalignedLength { declared });
    }
    let total = HEADER_LEN + declared;
    if total > limits.max_message_bytes {
        return StreamFrame::Invalid(ParseError::TooLong { len: total, max: limits.max_message_bytes });
    }
    if buf.len() < total { StreamFrame::Incomplete } else { StreamFrame::Message(total) }
}

#[cfg(test)]
mod tests;
