//! Message boundaries, bounded before anything is parsed (RFC 3261 §18.3).
//!
//! * Datagrams: one message per datagram; leading CRLFs skipped; a CRLF-only datagram is a
//!   keepalive; Content-Length cuts the body (extra octets are ignored, RFC 4475 §3.1.1.8) and a
//!   declared length larger than what arrived is an error (§3.1.2.2); without Content-Length the
//!   body is the rest of the datagram (RFC 2543 compatibility, §3.4.1).
//! * Streams: Content-Length is mandatory for framing; several messages per read, messages split
//!   across reads, leading CRLFs and CRLFCRLF keepalives (RFC 5626 §3.5.1) are all handled;
//!   `Incomplete` (wait for more) is distinct from an error (close the connection).

use super::error::SipError;
use super::message::{HeaderName, Message, find_crlf};
use super::values::parse_u32_lenient;

/// Bounds applied to every message before it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_message_bytes: 16 * 1024, max_headers: 96, max_body_bytes: 12 * 1024 }
    }
}

/// What one datagram holds.
#[derive(Debug)]
pub enum Datagram<'a> {
    /// Only CRLFs (RFC 5626 keepalive); nothing to answer over UDP.
    Keepalive,
    Message(Message<'a>),
    /// Framing failed; `msg` is what could be indexed (enough to answer with an error response).
    Invalid {
        msg: Option<Message<'a>>,
        error: SipError,
    },
}

fn skip_crlfs(buf: &[u8]) -> usize {
    let mut i = 0;
    while matches!(buf.get(i), Some(b'\r' | b'\n')) {
        i += 1;
    }
    i
}

/// The Content-Length of an indexed message: `Ok(None)` when absent, an error when negative,
/// non-numeric or conflicting (RFC 4475 §3.1.2.3, §3.3.9).
pub fn content_length(msg: &Message<'_>) -> Result<Option<usize>, SipError> {
    let mut found: Option<u32> = None;
    for h in msg.all(HeaderName::ContentLength) {
        let n = parse_u32_lenient(&msg.unfolded(h)).map_err(|_| SipError::BadContentLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(SipError::ConflictingContentLength);
        }
        found = Some(n);
    }
    Ok(found.map(|n| n as usize))
}

/// Frames and indexes one UDP datagram.
pub fn frame_datagram<'a>(buf: &'a [u8], limits: &Limits) -> Datagram<'a> {
    if buf.len() > limits.max_message_bytes {
        return Datagram::Invalid {
            msg: None,
            error: SipError::MessageTooLarge { size: buf.len(), max: limits.max_message_bytes },
        };
    }
    let start = skip_crlfs(buf);
    let Some(rest) = buf.get(start..).filter(|r| !r.is_empty()) else {
        return Datagram::Keepalive;
    };
    let mut msg = match Message::index(rest, limits.max_headers) {
        Ok(m) => m,
        Err(e) => return Datagram::Invalid { msg: None, error: e.into() },
    };
    let available = rest.len().saturating_sub(msg.body_start as usize);
    let cl = match content_length(&msg) {
        Ok(cl) => cl,
        Err(error) => return Datagram::Invalid { msg: Some(msg), error },
    };
    let body_len = match cl {
        Some(declared) if declared > available => {
            return Datagram::Invalid { msg: Some(msg), error: SipError::Truncated { declared, available } };
        }
        Some(declared) => declared,
        None => available,
    };
    if body_len > limits.max_body_bytes {
        return Datagram::Invalid {
            msg: Some(msg),
            error: SipError::BodyTooLarge { declared: body_len, max: limits.max_body_bytes },
        };
    }
    msg.buf = rest.get(..msg.body_start as usize + body_len).unwrap_or(rest);
    Datagram::Message(msg)
}

/// What the stream framer yields.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamItem {
    /// A CRLFCRLF ping: answer with a CRLF pong (RFC 5626 §4.4.1).
    Ping,
    /// One complete message: start line, headers, body of exactly Content-Length octets.
    Message(Vec<u8>),
}

/// Accumulates bytes from a stream (TCP, later TLS) and cuts complete messages out of it.
#[derive(Debug)]
pub struct StreamFramer {
    buf: Vec<u8>,
    limits: Limits,
}

impl StreamFramer {
    pub fn new(limits: Limits) -> Self {
        StreamFramer { buf: Vec::new(), limits }
    }

    /// Bytes buffered and not yet returned as a message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Appends bytes read from the stream. Errors when the buffered, incomplete message would
    /// exceed the size limit: the caller closes the connection.
    pub fn push(&mut self, data: &[u8]) -> Result<(), SipError> {
        let total = self.buf.len() + data.len();
        // A full message plus the start of the next one may legitimately be buffered.
        let cap = self.limits.max_message_bytes.saturating_mul(2);
        if total > cap {
            return Err(SipError::MessageTooLarge { size: total, max: self.limits.max_message_bytes });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete item, `Ok(None)` when more bytes are needed.
    pub fn next_item(&mut self) -> Result<Option<StreamItem>, SipError> {
        // Leading CRLFs: a double CRLF is a keepalive ping; a lone CRLF is a pong or noise.
        let lead = skip_crlfs(&self.buf);
        if lead > 0 {
            let ping = self.buf.get(..lead).is_some_and(|l| l.windows(4).any(|w| w == b"\r\n\r\n"));
            if lead == self.buf.len() && !ping {
                // Could still be the start of a CRLFCRLF: wait unless it cannot become one.
                if lead >= 4 {
                    self.buf.clear();
                }
                return Ok(None);
            }
            self.buf.drain(..lead);
            if ping {
                return Ok(Some(StreamItem::Ping));
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let max = self.limits.max_message_bytes;
        let Some(hdr_end) = find_header_end(&self.buf) else {
            if self.buf.len() > max {
                return Err(SipError::MessageTooLarge { size: self.buf.len(), max });
            }
            return Ok(None);
        };
        if hdr_end > max {
            return Err(SipError::MessageTooLarge { size: hdr_end, max });
        }
        let head = self.buf.get(..hdr_end).unwrap_or_default();
        let msg = Message::index(head, self.limits.max_headers)?;
        // RFC 3261 §18.3: on a stream, a missing Content-Length is taken as zero.
        let cl = content_length(&msg)?.unwrap_or(0);
        if cl > self.limits.max_body_bytes {
            return Err(SipError::BodyTooLarge { declared: cl, max: self.limits.max_body_bytes });
        }
        if hdr_end + cl > max {
            return Err(SipError::MessageTooLarge { size: hdr_end + cl, max });
        }
        if self.buf.len() < hdr_end + cl {
            return Ok(None);
        }
        let rest = self.buf.split_off(hdr_end + cl);
        let msg = std::mem::replace(&mut self.buf, rest);
        Ok(Some(StreamItem::Message(msg)))
    }
}

/// Index just past the CRLFCRLF that ends the header section.
fn find_header_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(cr) = find_crlf(buf, from) {
        if buf.get(cr + 2..cr + 4) == Some(b"\r\n") {
            return Some(cr + 4);
        }
        from = cr + 2;
    }
    None
}

/// Indexes a message the stream framer returned (its length is already exact).
pub fn index_stream_message<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Message<'a>, SipError> {
    Ok(Message::index(bytes, limits.max_headers)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPT: &[u8] =
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: 4\r\n\r\nabcd";

    #[test]
    fn two_messages_in_one_read_are_both_returned() {
        let mut f = StreamFramer::new(Limits::default());
        let mut data = b"\r\n\r\n".to_vec();
        data.extend_from_slice(OPT);
        data.extend_from_slice(OPT);
        f.push(&data).unwrap();
        assert_eq!(f.next_item().unwrap(), Some(StreamItem::Ping));
        assert_eq!(f.next_item().unwrap(), Some(StreamItem::Message(OPT.to_vec())));
        assert_eq!(f.next_item().unwrap(), Some(StreamItem::Message(OPT.to_vec())));
        assert_eq!(f.next_item().unwrap(), None);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn a_message_split_byte_by_byte_is_reassembled() {
        let mut f = StreamFramer::new(Limits::default());
        for (i, b) in OPT.iter().enumerate() {
            f.push(&[*b]).unwrap();
            let item = f.next_item().unwrap();
            if i + 1 < OPT.len() {
                assert_eq!(item, None, "complete too early at byte {i}");
            } else {
                assert_eq!(item, Some(StreamItem::Message(OPT.to_vec())));
            }
        }
    }

    #[test]
    fn stream_without_header_end_is_bounded() {
        let limits = Limits { max_message_bytes: 64, ..Limits::default() };
        let mut f = StreamFramer::new(limits);
        f.push(&[b'A'; 100]).unwrap();
        assert!(matches!(f.next_item(), Err(SipError::MessageTooLarge { .. })));
        assert!(f.push(&[b'A'; 100]).is_err());
    }

    #[test]
    fn datagram_body_is_cut_to_content_length() {
        let mut d = OPT.to_vec();
        d.extend_from_slice(b"trailing junk");
        match frame_datagram(&d, &Limits::default()) {
            Datagram::Message(m) => assert_eq!(m.body(), b"abcd"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn datagram_shorter_than_content_length_is_invalid() {
        let d = &OPT[..OPT.len() - 1];
        assert!(matches!(
            frame_datagram(d, &Limits::default()),
            Datagram::Invalid { error: SipError::Truncated { declared: 4, available: 3 }, .. }
        ));
    }

    #[test]
    fn crlf_only_datagram_is_a_keepalive() {
        assert!(matches!(frame_datagram(b"\r\n\r\n", &Limits::default()), Datagram::Keepalive));
    }
}
