#![doc = include_str!("../README.md")]

mod chamber_client;
mod clock;
mod passwords;
mod store;

pub use chamber_client::{ScriptedAnswer, ScriptedChamberClient};
pub use clock::{ManualClock, TokioClock};
pub use passwords::InsecureTestPasswordHasher;
pub use store::MemoryStore;
