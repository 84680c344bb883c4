//! The worker's cache serves a poll's reads as the store does (the `PollReads` conformance).

use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::conformance::fixtures::StorePorts;
use chamberlain_domain::conformance::poll_reads::{
    a_chamber_marked_outdated_is_read_again, reads_a_polls_chamber_and_batch,
};
use chamberlain_domain::ports::RepositoryPollReads;
use chamberlain_fakes::MemoryStore;
use chamberlain_worker::CachedChambers;

#[tokio::test]
async fn cached_poll_reads_conform() {
    let ports = StorePorts::from_adapter(Arc::new(MemoryStore::new()));
    let cached = CachedChambers::new(
        Arc::new(RepositoryPollReads::of(&ports.repositories)),
        Duration::from_secs(60),
    );
    reads_a_polls_chamber_and_batch(&cached, &ports).await;
    a_chamber_marked_outdated_is_read_again(&cached, &ports).await;
}
