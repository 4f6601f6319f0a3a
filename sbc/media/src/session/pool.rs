//! The relay's port pool: a configured range cut into (even RTP, odd RTCP) pairs (RFC 3550
//! §11: RTP on an even port, RTCP on the next one), each pair facing one side for good (pairs
//! alternate: the first faces outside, the next the core, and so on), so the daemon binds each
//! port once, on its side's address, before any call. Handed out first-released-last-reused so
//! a late packet of an ended call rarely reaches the next one.

use std::collections::VecDeque;

use super::{PerSide, Side};

/// Pairs of ports from one range.
#[derive(Debug, Clone)]
pub struct PortPool {
    /// The first (even) port of the range.
    base: u16,
    free: PerSide<VecDeque<u16>>,
    used: Vec<bool>,
    in_use: usize,
}

/// The side pair `i` of a range faces.
fn facing(i: u16) -> Side {
    if i.is_multiple_of(2) { Side::External } else { Side::Internal }
}

impl PortPool {
    /// The pairs within `low..=high` (an odd `low` starts at the next even port; a last lone
    /// even port is left out).
    pub fn new(low: u16, high: u16) -> PortPool {
        let base = low.saturating_add(low & 1);
        // Pair i is (base + 2i, base + 2i + 1); the last one must end within the range.
        let pairs = if high > base { usize::from(high - base - 1) / 2 + 1 } else { 0 };
        let mut free = PerSide::<VecDeque<u16>>::default();
        for i in (0..pairs).filter_map(|i| u16::try_from(i).ok()) {
            free.get_mut(facing(i)).push_back(i);
        }
        PortPool { base, free, used: vec![false; pairs], in_use: 0 }
    }

    /// An even RTP port facing `side` (its RTCP port is the next one), or None when every pair
    /// of that side is taken.
    pub fn allocate(&mut self, side: Side) -> Option<u16> {
        let i = self.free.get_mut(side).pop_front()?;
        if let Some(u) = self.used.get_mut(usize::from(i)) {
            *u = true;
        }
        self.in_use += 1;
        Some(self.base + 2 * i)
    }

    /// Gives back the pair of `rtp_port`; a port not handed out (or given back twice) is ignored.
    pub fn release(&mut self, rtp_port: u16) {
        let Some(offset) = rtp_port.checked_sub(self.base) else { return };
        if offset % 2 != 0 {
            return;
        }
        let i = offset / 2;
        if let Some(u) = self.used.get_mut(usize::from(i))
            && *u
        {
            *u = false;
            self.in_use -= 1;
            self.free.get_mut(facing(i)).push_back(i);
        }
    }

    /// Every pair of the range: its RTP port and the side it faces (what the daemon binds).
    pub fn pairs(&self) -> impl Iterator<Item = (u16, Side)> + '_ {
        (0..self.used.len()).filter_map(|i| u16::try_from(i).ok()).map(|i| (self.base + 2 * i, facing(i)))
    }

    /// Pairs handed out now.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Pairs in the range.
    pub fn capacity(&self) -> usize {
        self.used.len()
    }
}
