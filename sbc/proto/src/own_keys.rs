//! A fast hasher for the tables keyed only by identifiers the SBC makes itself: its own
//! branches (client transactions) and dialog tokens. An outsider cannot choose those keys, so
//! cannot make them collide, and SipHash's protection (std's default, kept for every table an
//! outsider's bytes key: server transactions, Call-IDs, registrations) buys nothing there; the
//! state tables are looked up a few dozen times per call.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-rotate over 8-byte words (FxHash's mixing).
#[derive(Debug, Default, Clone, Copy)]
pub struct OwnKeyHasher(u64);

const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl OwnKeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for OwnKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.iter_mut().zip(c).for_each(|(d, s)| *d = *s);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w.iter_mut().zip(rest).for_each(|(d, s)| *d = *s);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by the SBC's own identifiers (see the module).
pub type OwnKeyMap<K, V> = HashMap<K, V, BuildHasherDefault<OwnKeyHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_differ_in_any_byte_or_length_hash_apart() {
        let h = |s: &str| {
            let mut x = OwnKeyHasher::default();
            x.write(s.as_bytes());
            x.finish()
        };
        let keys = ["z9hG4bK0123456789abcdef", "z9hG4bK0123456789abcdee", "z9hG4bK0123456789abcdef|C", "d1", "d1\0"];
        for (i, a) in keys.iter().enumerate() {
            for b in keys.iter().skip(i + 1) {
                assert_ne!(h(a), h(b), "{a} {b}");
            }
        }
        let mut m: OwnKeyMap<String, u32> = OwnKeyMap::default();
        m.insert("z9hG4bKa".into(), 1);
        assert_eq!(m.get("z9hG4bKa"), Some(&1));
    }
}
