#![doc = include_str!("../README.md")]

pub mod alerting;
pub mod egress;
pub mod error;
pub mod limits;
pub mod model;
pub mod parse;
pub mod ports;
pub mod schedule;
pub mod time;
pub mod transmit;
pub mod usecases;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{Rule, ValidationError};
pub use time::Timestamp;
