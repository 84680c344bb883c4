#![doc = include_str!("../README.md")]

mod coordination;
mod events;
mod queue;

pub use coordination::{MemoryLeaderLease, MemoryScheduleCheckpoint, SystemClock};
pub use events::{MemoryChamberChanges, MemoryEventBus};
pub use queue::MemoryPollQueue;
