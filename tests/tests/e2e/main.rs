//! End-to-end tests: one binary. Today the embedded pipeline on in-memory adapters; the real
//! PostgreSQL, Redis and Envoy suites join here as their issues land.

mod in_memory_pipeline;
