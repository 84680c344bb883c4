//! The slot grid: slot = epoch + phase + k × interval.
//!
//! The phase spreads chambers over their interval so that ten thousand chambers at 1 s do not
//! fire in the same millisecond. It comes from a hash of the chamber id that is fixed in this
//! file (FNV-1a, then the SplitMix64 finalizer) — not `std`'s `DefaultHasher`, whose algorithm
//! may change between Rust releases — so the grid never moves across restarts or upgrades.
//!
//! When a chamber's interval changes, its grid becomes the grid of the new interval (same
//! formula, new phase); the first slot on it is the first one after the change
//! (see [`SchedulePlanner`](super::SchedulePlanner)).

use crate::model::{ChamberId, PollInterval};
use crate::time::Timestamp;

/// A stable 64-bit hash of a chamber id. Part of the on-disk contract: changing it moves every
/// chamber's grid.
pub fn stable_chamber_hash(id: ChamberId) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for b in id.as_uuid().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    // SplitMix64 finalizer: FNV's low bits are weak, and the phase is taken modulo the interval.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// One chamber's grid for one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotGrid {
    interval_ms: i64,
    phase_ms: i64,
}

impl SlotGrid {
    pub fn new(chamber: ChamberId, interval: PollInterval) -> Self {
        let interval_ms = interval.as_millis();
        let phase_ms = stable_chamber_hash(chamber) % interval_ms;
        // Both fit: the interval is at most 24 h in milliseconds.
        Self {
            interval_ms: interval_ms as i64,
            phase_ms: phase_ms as i64,
        }
    }

    /// Offset of the grid within each interval, in milliseconds.
    pub fn phase_ms(&self) -> i64 {
        self.phase_ms
    }

    pub fn interval_ms(&self) -> i64 {
        self.interval_ms
    }

    pub fn is_slot(&self, t: Timestamp) -> bool {
        (t.as_unix_millis() - self.phase_ms).rem_euclid(self.interval_ms) == 0
    }

    /// The latest slot at or before `t`.
    pub fn at_or_before(&self, t: Timestamp) -> Timestamp {
        let ms = t.as_unix_millis();
        Timestamp::from_unix_millis(ms - (ms - self.phase_ms).rem_euclid(self.interval_ms))
    }

    /// The earliest slot at or after `t`.
    pub fn at_or_after(&self, t: Timestamp) -> Timestamp {
        let before = self.at_or_before(t);
        if before == t { t } else { self.after(before) }
    }

    /// The slot after slot `slot` (`slot` must be on the grid).
    pub fn after(&self, slot: Timestamp) -> Timestamp {
        Timestamp::from_unix_millis(slot.as_unix_millis().saturating_add(self.interval_ms))
    }

    /// How many slots lie in `first..=last` (both on the grid, `first <= last`).
    pub fn count_between(&self, first: Timestamp, last: Timestamp) -> u64 {
        let span = last.as_unix_millis() - first.as_unix_millis();
        u64::try_from(span / self.interval_ms + 1).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    #[test]
    fn the_hash_is_pinned() {
        // If this changes, every installed chamber's grid moves: do not change it.
        let id = ChamberId::from_uuid(Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef));
        assert_eq!(stable_chamber_hash(id), 0x6998_767d_71fe_ab63);
    }

    proptest! {
        #[test]
        fn slots_are_on_the_grid_and_bracket_any_instant(
            raw in any::<u128>(), interval_ms in 1000u64..=86_400_000, t in -1_000_000_000_000i64..4_000_000_000_000,
        ) {
            let interval = PollInterval::try_from(interval_ms).unwrap();
            let grid = SlotGrid::new(ChamberId::from_uuid(Uuid::from_u128(raw)), interval);
            let t = Timestamp::from_unix_millis(t);
            let before = grid.at_or_before(t);
            let after = grid.at_or_after(t);
            prop_assert!(grid.is_slot(before) && grid.is_slot(after));
            prop_assert!(before <= t && t <= after);
            prop_assert!(t.as_unix_millis() - before.as_unix_millis() < interval_ms as i64);
            prop_assert!(after.as_unix_millis() - t.as_unix_millis() < interval_ms as i64);
            prop_assert_eq!(grid.after(before).as_unix_millis() - before.as_unix_millis(), interval_ms as i64);
            prop_assert!(grid.phase_ms() >= 0 && grid.phase_ms() < interval_ms as i64);
        }
    }
}
