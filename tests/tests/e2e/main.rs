//! End-to-end tests: one binary. The pipeline on in-memory adapters over simulated time, and on
//! real PostgreSQL, Redis, HTTP and simulated chambers. The API, and its live event streams,
//! through a real Envoy; alerts and transmitters with the alerter process.

mod alerts;
mod api;
mod browser;
mod cli;
mod clients;
mod compose;
mod events;
mod in_memory_pipeline;
mod json_api;
mod pipeline;
mod processes;
mod standalone;
mod store_outage;
mod support;
mod telemetry;
mod walkthrough;
