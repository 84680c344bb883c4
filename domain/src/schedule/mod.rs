//! Scheduling policy: the slot grid, spreading, and the scheduler's decision with its catch-up
//! policy. Pure: time is an argument, never read from a clock.

mod grid;
mod planner;

pub use grid::{SlotGrid, stable_chamber_hash};
pub use planner::{
    CatchUpPolicy, Decision, DuePoll, MissedSlots, SchedulePlanner, ScheduledChamber,
};

#[cfg(test)]
mod tests;
