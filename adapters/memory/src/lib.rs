#![doc = include_str!("../README.md")]

mod access;
mod coordination;
mod dedup;
mod events;
mod queue;

pub use access::{MemoryAccessEpoch, MemoryRateLimiter};
pub use coordination::{MemoryLeaderLease, MemoryScheduleCheckpoint, SystemClock};
pub use events::{MemoryChamberChanges, MemoryEventBus};
pub use queue::MemoryPollQueue;
