//! [`BoundedMap`]: a hash map with a capacity, for state an outsider creates by sending from new
//! addresses. Full, a new key evicts the least valuable of a few entries drawn at random
//! (sampled eviction, as Redis does): a flood of spoofed one-shot sources evicts its own kind,
//! not a source that has already piled up hits. Entries live in a dense vector (the hash map
//! holds their index) so that a draw is one read. Expiry is the owner's `retain`, run on its sweep.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};

/// How many entries a full map compares to pick the one to evict.
const SAMPLE: usize = 8;

#[derive(Debug)]
pub struct BoundedMap<K, V> {
    /// Each key's slot in `slots`.
    map: HashMap<K, usize>,
    /// The entries, densely, so that a random draw is one read.
    slots: Vec<(K, V)>,
    cap: usize,
    evicted: u64,
    /// xorshift64 state for the draws (seeded at random: an outsider cannot predict them).
    rng: u64,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    pub fn new(cap: usize) -> BoundedMap<K, V> {
        let seed = RandomState::new().hash_one(0u8) | 1;
        BoundedMap { map: HashMap::new(), slots: Vec::new(), cap: cap.max(1), evicted: 0, rng: seed }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Entries evicted to make room since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).and_then(|&i| self.slots.get(i)).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get(k).and_then(|&i| self.slots.get_mut(i)).map(|(_, v)| v)
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.map.remove(k)?;
        if i >= self.slots.len() {
            return None;
        }
        let (_, v) = self.slots.swap_remove(i);
        if let Some((moved, _)) = self.slots.get(i)
            && let Some(index) = self.map.get_mut(moved)
        {
            *index = i;
        }
        Some(v)
    }

    fn draw(&mut self) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        usize::try_from(self.rng % self.slots.len().max(1) as u64).unwrap_or(0)
    }

    /// The entry of `k`, made by `make` if absent; when full, the drawn entry with the lowest
    /// `score` goes first. (Always `Some`; an `Option` rather than an index that could panic.)
    pub fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V, score: impl Fn(&V) -> u64) -> Option<&mut V> {
        if let Some(&i) = self.map.get(&k) {
            return self.slots.get_mut(i).map(|(_, v)| v);
        }
        if self.slots.len() >= self.cap {
            let mut victim: Option<(u64, usize)> = None;
            for _ in 0..SAMPLE {
                let i = self.draw();
                if let Some((_, v)) = self.slots.get(i) {
                    let s = score(v);
                    if victim.is_none_or(|(best, _)| s < best) {
                        victim = Some((s, i));
                    }
                }
            }
            if let Some(key) = victim.and_then(|(_, i)| self.slots.get(i)).map(|(k, _)| k.clone()) {
                self.remove(&key);
                self.evicted += 1;
            }
        }
        self.map.insert(k.clone(), self.slots.len());
        self.slots.push((k, make()));
        self.slots.last_mut().map(|(_, v)| v)
    }

    pub fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        let before = self.slots.len();
        self.slots.retain_mut(|(k, v)| f(k, v));
        if self.slots.len() == before {
            return;
        }
        self.map.clear();
        for (i, (k, _)) in self.slots.iter().enumerate() {
            self.map.insert(k.clone(), i);
        }
        if self.slots.capacity() > 4 * self.slots.len().max(64) {
            self.map.shrink_to_fit();
            self.slots.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_map_evicts_a_low_score_entry_and_never_grows_past_its_cap() {
        let mut m = BoundedMap::new(100);
        // One valuable entry, then a flood of one-shot keys.
        *m.get_or_insert_with(u32::MAX, || 0u64, |v| *v).unwrap() = 1_000;
        for k in 0..100_000u32 {
            m.get_or_insert_with(k, || 1, |v| *v);
            assert!(m.len() <= 100);
        }
        assert_eq!(m.len(), 100);
        assert_eq!(m.get(&u32::MAX), Some(&1_000), "the entry with hits survived the flood");
        assert_eq!(m.evicted(), 100_000 - 99);
        // Indexes stay consistent through removals and a retain.
        m.retain(|k, _| k % 2 == 0);
        for k in 0..100_000u32 {
            m.remove(&k);
        }
        assert_eq!(m.len(), 0);
        assert!(m.map.is_empty() && m.slots.is_empty());
    }
}
