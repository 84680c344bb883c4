#![doc = include_str!("../README.md")]

mod config;
mod errors;
mod store;

pub use chamberlain_domain::ports::ConversionProgress;
pub use config::{
    DEFAULT_BUSY_TIMEOUT, DEFAULT_POOL_SIZE, MAX_BUSY_TIMEOUT, MAX_POOL_SIZE, SqliteConfig,
    SqliteConfigError, SqliteLocation,
};
pub use store::{DEFAULT_CHUNK_POLLS, SqliteStore};
