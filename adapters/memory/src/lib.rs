#![doc = include_str!("../README.md")]

mod alerts;
mod chamber_client;
mod coordination;
mod events;
mod passwords;
mod queue;
mod store;

pub use chamber_client::{ScriptedAnswer, ScriptedChamberClient};
pub use coordination::{ManualClock, MemoryLeaderLease, MemoryScheduleCheckpoint, SystemClock};
pub use events::{MemoryChamberChanges, MemoryEventBus};
pub use passwords::InsecureTestPasswordHasher;
pub use queue::MemoryPollQueue;
pub use store::MemoryStore;
