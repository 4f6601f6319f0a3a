//! Which engine shard owns a transaction, dialog or registration, written into the identifiers
//! the SBC itself hands out so that whatever comes back names its owner without a lookup:
//!
//! | identifier | form | comes back in |
//! |---|---|---|
//! | our Via branch | `z9hG4bK` `S` ‖ 2 hex (shard) ‖ 16 hex | the top Via of every response to our requests |
//! | our Contact token | kind ‖ 2 hex (shard) ‖ 16 hex | the Request-URI of in-dialog requests and of calls to a registered UA |
//! | a masked Call-ID or tag | `sbcm` ‖ 2 hex (shard) ‖ hex(iv) ‖ hex(body) | the Call-ID of requests from the side it was masked toward |
//!
//! The shard digits are not secret (they say only which of the SBC's threads answers) and
//! not authenticated: a forged one just sends the message to a shard that does not know it,
//! which answers it as any unknown transaction or dialog (481, or a counted drop).
//! With one shard every identifier carries `00`.

/// One engine's place among the shards: its index and how many there are (1..=[`MAX_SHARDS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u8,
    pub count: u8,
}

/// The most shards the two hex digits and the daemon's config allow.
pub const MAX_SHARDS: usize = 64;

impl Default for Shard {
    fn default() -> Shard {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// Shard `index` of `count`; None when `count` is 0, over [`MAX_SHARDS`], or `index` is not below it.
    pub fn new(index: usize, count: usize) -> Option<Shard> {
        ((1..=MAX_SHARDS).contains(&count) && index < count).then_some(Shard { index: index as u8, count: count as u8 })
    }
}

/// The marker after the magic cookie that says a branch is ours and carries a shard.
const BRANCH_PREFIX: &[u8] = b"z9hG4bKS";

/// Our Via branch (RFC 3261 §8.1.1.7: magic cookie first) for shard `shard`.
pub fn branch(shard: u8, random: u64) -> String {
    let mut s = String::with_capacity(BRANCH_PREFIX.len() + 18);
    s.push_str("z9hG4bKS");
    crate::sip::values::push_hex2(&mut s, shard);
    crate::sip::values::push_hex16(&mut s, random);
    s
}

/// The shard in one of our branches.
pub fn shard_of_branch(branch: &[u8]) -> Option<u8> {
    hex2(branch.strip_prefix(BRANCH_PREFIX)?)
}

/// Length of a Contact token: kind, shard, hash.
pub const TOKEN_LEN: usize = 19;

/// Whether `s` has the shape of a token of `kind` (not whether we made it).
pub fn is_token(kind: u8, s: &[u8]) -> bool {
    s.len() == TOKEN_LEN && s.first() == Some(&kind) && s.iter().skip(1).all(u8::is_ascii_hexdigit)
}

/// The shard in a Contact token (`d…` dialog, `r…` registration).
pub fn shard_of_token(s: &[u8]) -> Option<u8> {
    if !(is_token(b'd', s) || is_token(b'r', s)) {
        return None;
    }
    hex2(s.get(1..)?)
}

/// The prefix of a masked identifier.
pub const MASK_PREFIX: &[u8] = b"sbcm";

/// The shard in a masked identifier (the shard that masked it).
pub fn shard_of_mask(s: &[u8]) -> Option<u8> {
    hex2(s.strip_prefix(MASK_PREFIX)?)
}

/// Two lower-case hex digits at the start of `s`.
fn hex2(s: &[u8]) -> Option<u8> {
    let d = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    Some(d(*s.first()?)? << 4 | d(*s.get(1)?)?)
}

/// A hash of identifier bytes for steering what carries no shard of ours (a new dialog's
/// Call-ID, a REGISTER's address of record): FNV-1a, fixed so that every socket reader and
/// every restart agrees.
pub fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_carries_its_shard() {
        let b = branch(13, 0xdead_beef);
        assert!(b.starts_with("z9hG4bK"));
        assert_eq!(shard_of_branch(b.as_bytes()), Some(13));
        assert_eq!(shard_of_branch(b"z9hG4bKua1"), None);
        assert_eq!(shard_of_branch(b"z9hG4bKSz1"), None);
    }

    #[test]
    fn token_and_mask_shards_are_read_back() {
        assert_eq!(shard_of_token(b"d030123456789abcdef"), Some(3));
        assert_eq!(shard_of_token(b"r3f0123456789abcdef"), Some(63));
        assert_eq!(shard_of_token(b"x030123456789abcdef"), None);
        assert_eq!(shard_of_token(b"d03"), None);
        assert_eq!(shard_of_mask(b"sbcm02abcdef"), Some(2));
        assert_eq!(shard_of_mask(b"abc"), None);
    }

    #[test]
    fn shard_bounds() {
        assert_eq!(Shard::new(0, 1), Some(Shard::default()));
        assert_eq!(Shard::new(1, 1), None);
        assert_eq!(Shard::new(0, 0), None);
        assert_eq!(Shard::new(0, MAX_SHARDS + 1), None);
    }
}
