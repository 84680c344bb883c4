#![doc = include_str!("../README.md")]

mod client;
pub mod config;
mod connect;
mod pacing;
pub mod webhook;

pub use client::{ATTEMPT_HEADER, HttpChamberClient, SLOT_HEADER};
pub use config::{HostPacing, HttpClientConfig};
pub use webhook::WebhookClient;
