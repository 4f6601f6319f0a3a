//! The relay's port pool: a configured range cut into (even RTP, odd RTCP) pairs (RFC 3550
//! §11: RTP on an even port, RTCP on the next one), handed out first-released-last-reused so a
//! late packet of an ended call rarely reaches the next one.

use std::collections::VecDeque;

/// Pairs of ports from one range.
#[derive(Debug, Clone)]
pub struct PortPool {
    /// The first (even) port of the range.
    base: u16,
    free: VecDeque<u16>,
    used: Vec<bool>,
    in_use: usize,
}

impl PortPool {
    /// The pairs within `low..=high` (an odd `low` starts at the next even port; a last lone
    /// even port is left out).
    pub fn new(low: u16, high: u16) -> PortPool {
        let base = low.saturating_add(low & 1);
        // Pair i is (base + 2i, base + 2i + 1); the last one must end within the range.
        let pairs = if high > base { usize::from(high - base - 1) / 2 + 1 } else { 0 };
        PortPool {
            base,
            free: (0..pairs).filter_map(|i| u16::try_from(i).ok()).collect(),
            used: vec![false; pairs],
            in_use: 0,
        }
    }

    /// An even RTP port (its RTCP port is the next one), or None when every pair is taken.
    pub fn allocate(&mut self) -> Option<u16> {
        let i = self.free.pop_front()?;
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
            self.free.push_back(i);
        }
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
