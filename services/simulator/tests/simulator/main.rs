//! The simulator driven over real TCP by a plain hyper client. One test binary.

mod bodies;
mod cli;
mod faults;
mod recording;
mod server;
mod support;
