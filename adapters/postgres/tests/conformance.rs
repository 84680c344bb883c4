//! The repository conformance suite on PostgreSQL: each case in a database of its own,
//! created on the local server and dropped after.

use std::sync::Arc;

use chamberlain_domain::conformance::fixtures::StorePorts;
use chamberlain_postgres::testing::fresh_store;

async fn ports() -> StorePorts {
    let (store, guard) = fresh_store().await;
    StorePorts {
        keepalive: Some(guard),
        ..StorePorts::from_adapter(Arc::new(store))
    }
}

chamberlain_domain::store_conformance_tests!(ports());
