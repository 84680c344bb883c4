//! Cheap shared random draws: a counter run through the SplitMix64 finaliser.
//!
//! One relaxed atomic add per draw, no lock and no per-thread state; good enough to decide
//! which requests get a fault, not for anything that needs real randomness.

use std::sync::atomic::{AtomicU64, Ordering};

/// SplitMix64's increment (the golden ratio in 64 bits).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 finaliser: a bijection that scatters nearby inputs.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stream of uniform draws shared by every connection.
#[derive(Debug)]
pub(crate) struct Dice {
    state: AtomicU64,
}

impl Dice {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    /// A draw from `[0, 1)`.
    pub(crate) fn unit(&self) -> f64 {
        let z = mix(self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA));
        // The top 53 bits, scaled: every value is exactly representable and below 1.
        (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Whether an event of probability `rate` happens: never for 0, always for 1.
    pub(crate) fn happens(&self, rate: f64) -> bool {
        rate > 0.0 && self.unit() < rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_in_the_unit_interval_and_rates_hold_at_the_ends() {
        let dice = Dice::new(7);
        for _ in 0..10_000 {
            let u = dice.unit();
            assert!((0.0..1.0).contains(&u), "{u}");
            assert!(dice.happens(1.0));
            assert!(!dice.happens(0.0));
        }
    }

    #[test]
    fn a_rate_is_met_roughly() {
        let dice = Dice::new(1);
        let hits = (0..100_000).filter(|_| dice.happens(0.25)).count();
        assert!((23_000..27_000).contains(&hits), "{hits}");
    }
}
