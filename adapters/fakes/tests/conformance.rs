//! The store conformance suite against the in-memory store fake: domain tests may trust it to
//! behave as PostgreSQL and SQLite do.

use std::sync::Arc;

use chamberlain_domain::conformance::fixtures::StorePorts;
use chamberlain_fakes::MemoryStore;

mod store {
    use super::*;
    chamberlain_domain::store_conformance_tests!(async {
        StorePorts::from_adapter(Arc::new(MemoryStore::new()))
    });
}
