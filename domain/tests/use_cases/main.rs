//! Use-case tests: the domain's rules against the in-memory adapters (and mockall mocks where
//! a failure must be injected). No running service, no wall clock.

mod accounts;
mod administration;
mod alerts;
mod authentication;
mod import;
mod mocked_failures;
mod polls;
mod queries;
mod support;
mod watch;
