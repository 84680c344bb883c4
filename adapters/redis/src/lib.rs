#![doc = include_str!("../README.md")]

mod access;
mod config;
mod connection;
mod events;
mod lease;
mod queue;
#[cfg(feature = "testing")]
pub mod testing;

pub use access::{ACCESS_READ_TIMEOUT, RedisAccessEpoch, RedisRateLimiter};
pub use config::RedisConfig;
pub use events::{RedisChamberChanges, RedisEventBus};
pub use lease::{RedisLeaderLease, RedisScheduleCheckpoint};
pub use queue::RedisPollQueue;
