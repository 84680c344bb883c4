//! End-to-end tests: one binary. The pipeline on in-memory adapters over simulated time, and on
//! real PostgreSQL, Redis, HTTP and simulated chambers. The API through a real Envoy.

mod api;
mod in_memory_pipeline;
mod pipeline;
mod processes;
mod support;
