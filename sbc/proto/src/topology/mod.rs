//! Topology hiding, every rule of it: the reversible, keyed masking of identifiers (Call-ID,
//! tags) toward a hidden side, opaque tokens for our Contact URIs, the value rewrites (tag
//! params, URI hosts), and in [`hide`] what a forwarded request or response keeps, replaces and
//! drops when it crosses from one side to the other.
//!
//! Masking is a synthetic-IV construction: `iv = PRF(k1, value)`, `masked = PREFIX ‖ hex(iv) ‖
//! hex(value ⊕ PRF-stream(k2, iv))`. It is deterministic (the same value always masks the same
//! way, so retransmissions and later requests agree without state), reversible by the SBC only,
//! and authenticated (unmasking recomputes the IV), so a value that merely looks masked is never
//! mistaken for one of ours.

use std::hash::Hasher;

use siphasher::sip::SipHasher24;

use crate::sip::values;

mod hide;
pub mod shard;
pub use hide::{Forward, Requester, Settings, SideView, Topology, hostport, sbc_uri, via_line};
pub use shard::Shard;

const PREFIX: &[u8] = shard::MASK_PREFIX;
const IV_LEN: usize = 8;

/// The keyed masker, one per engine shard (keys from config, or random at start: the same for
/// every shard, which differ only in the shard number they write, see [`shard`]).
#[derive(Clone)]
pub struct Masker {
    k_iv: [u8; 16],
    k_stream: [u8; 16],
    shard: u8,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Masker(<keys>)")
    }
}

fn prf(key: &[u8; 16], parts: &[&[u8]]) -> u64 {
    let mut h = SipHasher24::new_with_key(key);
    for p in parts {
        h.write(p);
        h.write_u8(0xff);
    }
    h.finish()
}

fn hex_digit(n: u8) -> u8 {
    if n < 10 { b'0' + n } else { b'a' + (n - 10) }
}

fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(hex_digit(b >> 4));
        out.push(hex_digit(b & 15));
    }
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 2);
    for c in s.chunks_exact(2) {
        let [hi, lo] = c else { return None };
        out.push(nibble(*hi)? << 4 | nibble(*lo)?);
    }
    Some(out)
}

impl Masker {
    /// Derives both keys from one secret (shard 0).
    pub fn new(secret: &[u8]) -> Masker {
        Masker::for_shard(secret, 0)
    }

    /// Derives both keys from one secret; what it masks and the tokens it makes name `shard`.
    pub fn for_shard(secret: &[u8], shard: u8) -> Masker {
        let mut k_iv = [0u8; 16];
        let mut k_stream = [0u8; 16];
        let zero = [0u8; 16];
        k_iv[..8].copy_from_slice(&prf(&zero, &[b"iv-a", secret]).to_le_bytes());
        k_iv[8..].copy_from_slice(&prf(&zero, &[b"iv-b", secret]).to_le_bytes());
        k_stream[..8].copy_from_slice(&prf(&zero, &[b"st-a", secret]).to_le_bytes());
        k_stream[8..].copy_from_slice(&prf(&zero, &[b"st-b", secret]).to_le_bytes());
        Masker { k_iv, k_stream, shard }
    }

    fn xor_stream(&self, iv: &[u8], data: &mut [u8]) {
        for (block, chunk) in data.chunks_mut(8).enumerate() {
            let ks = prf(&self.k_stream, &[iv, &(block as u64).to_le_bytes()]).to_le_bytes();
            for (d, k) in chunk.iter_mut().zip(ks.iter()) {
                *d ^= k;
            }
        }
    }

    pub fn mask(&self, value: &[u8]) -> Vec<u8> {
        let iv = prf(&self.k_iv, &[value]).to_le_bytes();
        let mut body = value.to_vec();
        self.xor_stream(&iv, &mut body);
        let mut out = Vec::with_capacity(PREFIX.len() + 2 * (1 + IV_LEN + value.len()));
        out.extend_from_slice(PREFIX);
        hex_into(&mut out, &[self.shard]);
        hex_into(&mut out, &iv);
        hex_into(&mut out, &body);
        out
    }

    /// The original value if `masked` is one of ours.
    pub fn unmask(&self, masked: &[u8]) -> Option<Vec<u8>> {
        // The shard digits say who masked it, for steering; any shard unmasks it.
        let rest = masked.strip_prefix(PREFIX)?.get(2..)?;
        let iv = unhex(rest.get(..2 * IV_LEN)?)?;
        let mut body = unhex(rest.get(2 * IV_LEN..)?)?;
        self.xor_stream(&iv, &mut body);
        (prf(&self.k_iv, &[&body]).to_le_bytes().as_slice() == iv.as_slice()).then_some(body)
    }

    /// The crossing rule for an identifier going to a side: values we masked toward that side
    /// earlier come back as they were; other values are masked when the side is hidden.
    pub fn cross(&self, value: &[u8], hide: bool) -> Option<Vec<u8>> {
        if let Some(orig) = self.unmask(value) {
            return Some(orig);
        }
        hide.then(|| self.mask(value))
    }

    /// Whether `s` has the shape of a [`Masker::token`] of `kind` (not whether we made it).
    pub fn is_token(kind: u8, s: &[u8]) -> bool {
        shard::is_token(kind, s)
    }

    /// A token for our Contact user part: opaque, keyed, stable for the same input on the same
    /// shard; kind, shard (two hex digits), hash.
    pub fn token(&self, kind: u8, parts: &[&[u8]]) -> String {
        let mut h = SipHasher24::new_with_key(&self.k_iv);
        h.write_u8(kind);
        for p in parts {
            h.write(p);
            h.write_u8(0xff);
        }
        let mut s = String::with_capacity(19);
        s.push(char::from(kind));
        values::push_hex2(&mut s, self.shard);
        values::push_hex16(&mut s, h.finish());
        s
    }
}

/// Rewrites the value of header parameter `name` (e.g. `tag`) in a name-addr header value.
/// Returns None when the parameter is absent or the function declines.
pub fn rewrite_param(value: &[u8], name: &str, f: impl FnOnce(&[u8]) -> Option<Vec<u8>>) -> Option<Vec<u8>> {
    let na = values::name_addr(value).ok()?;
    let params = value.get(na.params.clone())?;
    let old = values::param(params, name)?;
    let start = old.as_ptr() as usize - value.as_ptr() as usize;
    let new = f(old)?;
    let mut out = Vec::with_capacity(value.len() + new.len());
    out.extend_from_slice(value.get(..start)?);
    out.extend_from_slice(&new);
    out.extend_from_slice(value.get(start + old.len()..)?);
    Some(out)
}

/// Replaces the host[:port] of the URI inside a name-addr value when `hidden(host)` says so.
pub fn rewrite_uri_host(value: &[u8], hidden: impl Fn(&[u8]) -> bool, replacement: &[u8]) -> Option<Vec<u8>> {
    let (abs, host_start, host_end, end) = uri_host_span(value)?;
    let host = value.get(abs + host_start..abs + host_end)?;
    if !hidden(host) {
        return None;
    }
    let mut out = Vec::with_capacity(value.len() + replacement.len());
    out.extend_from_slice(value.get(..abs + host_start)?);
    out.extend_from_slice(replacement);
    out.extend_from_slice(value.get(abs + end..)?);
    Some(out)
}

/// (URI offset in `value`, host start, host end, end of host and `:port`), offsets after the
/// first three relative to the URI.
fn uri_host_span(value: &[u8]) -> Option<(usize, usize, usize, usize)> {
    let na = values::name_addr(value).ok()?;
    let uri = value.get(na.uri.clone())?;
    let colon = uri.iter().position(|&b| b == b':')?;
    let after_scheme = colon + 1;
    let rest = uri.get(after_scheme..)?;
    let host_start = after_scheme + rest.iter().rposition(|&b| b == b'@').map_or(0, |p| p + 1);
    let tail = uri.get(host_start..)?;
    let host_end = host_start
        + if tail.first() == Some(&b'[') {
            tail.iter().position(|&b| b == b']').map_or(tail.len(), |p| p + 1)
        } else {
            tail.iter().position(|&b| b == b':' || b == b';' || b == b'?').unwrap_or(tail.len())
        };
    // Include a :port after the host.
    let mut end = host_end;
    if uri.get(end) == Some(&b':') {
        end += 1;
        while uri.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
    }
    Some((na.uri.start, host_start, host_end, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_round_trips_and_is_deterministic() {
        let m = Masker::new(b"secret");
        let a = m.mask(b"1-2345@10.99.0.10");
        assert_eq!(a, m.mask(b"1-2345@10.99.0.10"));
        assert!(!a.windows(10).any(|w| w == b"10.99.0.10"));
        assert_eq!(m.unmask(&a).as_deref(), Some(&b"1-2345@10.99.0.10"[..]));
    }

    #[test]
    fn forged_or_foreign_masks_are_not_unmasked() {
        let m = Masker::new(b"secret");
        let other = Masker::new(b"other");
        assert_eq!(m.unmask(&other.mask(b"abc")), None);
        let mut a = m.mask(b"abc");
        let last = a.len() - 1;
        a[last] = if a[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(m.unmask(&a), None);
        assert_eq!(m.unmask(b"sbcmzz"), None);
    }

    #[test]
    fn crossing_restores_masked_and_masks_native() {
        let m = Masker::new(b"k");
        let masked = m.cross(b"core-tag", true).unwrap();
        assert_eq!(m.cross(&masked, false).as_deref(), Some(&b"core-tag"[..]));
        assert_eq!(m.cross(b"phone-tag", false), None);
    }

    #[test]
    fn tag_param_is_rewritten_in_place() {
        let v = br#""A" <sip:a@h>;x=1;tag=abc;y"#;
        let out = rewrite_param(v, "tag", |_| Some(b"zzz".to_vec())).unwrap();
        assert_eq!(out, br#""A" <sip:a@h>;x=1;tag=zzz;y"#);
    }

    #[test]
    fn uri_host_and_port_are_replaced() {
        let v = b"sipp <sip:sipp@10.99.0.10:5070>;tag=1";
        let out = rewrite_uri_host(v, |h| h == b"10.99.0.10", b"203.0.113.1").unwrap();
        assert_eq!(out, b"sipp <sip:sipp@203.0.113.1>;tag=1");
        assert_eq!(rewrite_uri_host(v, |_| false, b"x"), None);
    }
}
