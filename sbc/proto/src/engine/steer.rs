//! Steering: which of N engine shards a message belongs to, from its bytes alone, so that any
//! socket reader can hand it to its owner without a shared table or lock. The owner's number
//! is written into what the SBC hands out ([`crate::topology::shard`]); what carries none is
//! hashed on an identifier every message of the same transaction or dialog repeats.
//!
//! In order:
//! 1. A response: the shard in our branch (the top Via of a response to us is ours).
//! 2. A request whose Request-URI user is one of our Contact tokens: an in-dialog request
//!    (either side; the ACK of a 2xx included) or a call to a UA registered through us. The
//!    dialog or binding lives where the token was made.
//! 3. A REGISTER: a hash of its To URI (the address of record), so that every refresh of a
//!    binding, whatever its Call-ID, reaches the shard holding it and the token it gets.
//! 4. Anything else — a new dialog-creating request, an out-of-dialog request, and the CANCEL,
//!    the non-2xx ACK and the retransmissions that repeat its Call-ID: the shard in a masked
//!    Call-ID (a request from the side we masked it toward), else a hash of the Call-ID.
//!    Hashing (not round-robin) is what lets a CANCEL or a retransmission find its INVITE.
//!
//! None: nothing identifies an owner (not SIP, no Call-ID); the caller picks any shard, which
//! answers or drops it as one engine would.

use crate::sip::message::{HeaderName, Message};
use crate::sip::values;
use crate::topology::shard;

/// The shard (below `shards`) that owns the message in `data` (one datagram or one framed
/// stream message); `max_headers` bounds the indexing as the engine's limits do.
pub fn shard_of(data: &[u8], shards: usize, max_headers: usize) -> Option<usize> {
    if shards <= 1 {
        return Some(0);
    }
    // Leading CRLFs (keepalives, RFC 5626 §4.4.1) before a message, as the framer skips them.
    let start = data.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
    let msg = Message::index(data.get(start..)?, max_headers).ok()?;
    shard_of_message(&msg, shards)
}

/// [`shard_of`] on a message already indexed.
pub fn shard_of_message(msg: &Message<'_>, shards: usize) -> Option<usize> {
    if shards <= 1 {
        return Some(0);
    }
    let ours = |s: Option<u8>| s.map(usize::from).filter(|s| *s < shards);
    if !msg.is_request() {
        if let Some(s) = ours(top_branch(msg).and_then(|b| shard::shard_of_branch(&b))) {
            return Some(s);
        }
    } else {
        if let Some(s) = ours(uri_user(msg.request_uri()).and_then(shard::shard_of_token)) {
            return Some(s);
        }
        if msg.method_bytes() == b"REGISTER"
            && let Some(to) = msg.first(HeaderName::To)
        {
            let to = msg.unfolded(to);
            if let Ok(na) = values::name_addr(&to)
                && let Some(aor) = to.get(na.uri)
            {
                return Some(bucket(shard::hash(aor), shards));
            }
        }
    }
    let call_id = msg.first(HeaderName::CallId).map(|h| msg.unfolded(h))?;
    let call_id = call_id.trim_ascii();
    ours(shard::shard_of_mask(call_id)).or_else(|| Some(bucket(shard::hash(call_id), shards)))
}

fn bucket(hash: u64, shards: usize) -> usize {
    (hash % shards as u64) as usize
}

/// The user part of a SIP URI, without parameters (`sip:user;p=1@host` keeps `user`).
fn uri_user(uri: &[u8]) -> Option<&[u8]> {
    let user = crate::sip::uri::user_part(uri)?;
    Some(user.split(|&b| b == b';').next().unwrap_or(user))
}

/// The branch of the topmost Via element.
fn top_branch(msg: &Message<'_>) -> Option<Vec<u8>> {
    let v = msg.unfolded(msg.first(HeaderName::Via)?);
    let first = values::split_commas(&v).ok()?.into_iter().next()?;
    let via = values::via(v.get(first)?).ok()?;
    via.branch().map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, ruri: &str, call_id: &str, to: &str) -> Vec<u8> {
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\nFrom: <sip:a@x>;tag=1\r\n\
             To: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn responses_follow_our_branch() {
        let b = shard::branch(3, 42);
        let resp = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch={b}, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKy\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(shard_of(resp.as_bytes(), 4, 64), Some(3));
        // A shard number out of range (another configuration's) falls back to the Call-ID.
        let far = resp.replace(&b, &shard::branch(9, 42));
        assert_eq!(shard_of(far.as_bytes(), 4, 64), Some(bucket(shard::hash(b"c"), 4)));
    }

    #[test]
    fn tokens_in_the_request_uri_win() {
        let r = req("BYE", "sip:d020123456789abcdef@203.0.113.1:5060;transport=udp", "whatever", "<sip:b@y>;tag=2");
        assert_eq!(shard_of(&r, 4, 64), Some(2));
        let r = req("INVITE", "sip:r030123456789abcdef@10.99.0.1", "core-call", "<sip:b@y>");
        assert_eq!(shard_of(&r, 4, 64), Some(3));
    }

    #[test]
    fn register_hashes_the_address_of_record_not_the_call_id() {
        let a = req("REGISTER", "sip:example.com", "one", "\"Bob\" <sip:bob@example.com>");
        let b = req("REGISTER", "sip:example.com", "two", "<sip:bob@example.com>;x=y");
        assert_eq!(shard_of(&a, 4, 64), shard_of(&b, 4, 64));
        assert_eq!(shard_of(&a, 4, 64), Some(bucket(shard::hash(b"sip:bob@example.com"), 4)));
    }

    #[test]
    fn new_requests_hash_the_call_id_and_masks_name_their_shard() {
        let inv = req("INVITE", "sip:bob@203.0.113.1", "abc@host", "<sip:bob@x>");
        let cancel = req("CANCEL", "sip:bob@203.0.113.1", "abc@host", "<sip:bob@x>");
        assert_eq!(shard_of(&inv, 4, 64), shard_of(&cancel, 4, 64));
        let masked = req("BYE", "sip:bob@10.0.0.9", "sbcm01ffff", "<sip:bob@x>;tag=9");
        assert_eq!(shard_of(&masked, 4, 64), Some(1));
    }

    #[test]
    fn garbage_has_no_owner_and_one_shard_is_always_zero() {
        assert_eq!(shard_of(b"\r\n\r\n", 4, 64), None);
        assert_eq!(shard_of(b"hello", 4, 64), None);
        assert_eq!(shard_of(b"hello", 1, 64), Some(0));
    }
}
