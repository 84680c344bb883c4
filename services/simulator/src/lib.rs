#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod body;
mod cli;
mod config;
mod dice;
mod recorder;
mod report;
mod server;

pub use body::{Format, METRIC_NAME, corrupted_detector, detector_key, expected_value};
pub use cli::{SimulateArgs, run_cli, run_cli_with_output};
pub use config::{
    ChamberBehaviour, ConfigError, CorruptKind, DEFAULT_BIND, MAX_CHAMBERS, MAX_DETECTORS,
    MAX_INTERVAL, MAX_LATENCY, MAX_OVERSIZED_BYTES, SimulatorConfig, SimulatorConfigBuilder,
};
pub use recorder::SLOT_WINDOW;
pub use report::{ChamberReport, Duplicates, Injected, Lateness, SimulatorReport};
pub use server::{
    ATTEMPT_HEADER, DRAIN_TIMEOUT, SLOT_HEADER, Simulator, SimulatorError, SimulatorHandle,
};
