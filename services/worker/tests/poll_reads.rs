//! The worker's cache serves a poll's reads as the store does (the `PollReads` conformance),
//! and keeps them current by following the chamber change feed.

use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::{self, StorePorts};
use chamberlain_domain::conformance::poll_reads::{
    a_chamber_marked_outdated_is_read_again, reads_a_polls_chamber_and_batch,
};
use chamberlain_domain::model::{Batch, ChamberId, SectionId};
use chamberlain_domain::ports::{
    ChamberChange, ChamberChanges as _, ChamberWithDetectors, PollReads, RepositoryPollReads,
    StoreError,
};
use chamberlain_fakes::MemoryStore;
use chamberlain_memory::MemoryChamberChanges;
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

/// A chamber of two detectors in a fresh organization of `ports`.
async fn chamber_of_two(
    ports: &StorePorts,
    label: &str,
) -> (
    chamberlain_domain::model::Chamber,
    chamberlain_domain::model::Detector,
) {
    let org = fixtures::organization(label);
    ports.organizations.create(&org).await.unwrap();
    let section = fixtures::section(org.id, "room");
    ports.sections.create(&section).await.unwrap();
    let chamber = fixtures::chamber(org.id, section.id, "c1", 1);
    let kept = fixtures::detector(&chamber, "t");
    let removed = fixtures::detector(&chamber, "h");
    ports
        .chambers
        .create(&chamber, &[kept, removed.clone()])
        .await
        .unwrap();
    (chamber, removed)
}

async fn detectors_of(cached: &CachedChambers, chamber: ChamberId) -> usize {
    cached
        .load_for_poll(chamber)
        .await
        .unwrap()
        .expect("chamber")
        .detectors
        .len()
}

/// Loads the chamber until it has `n` detectors (the feed is followed by a task of its own),
/// failing after a generous deadline.
async fn until_detectors(cached: &CachedChambers, chamber: ChamberId, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while detectors_of(cached, chamber).await != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cache never showed {n} detectors"
        );
        tokio::task::yield_now().await;
    }
}

/// A cache following `changes` (its chambers kept an hour; a TTL of zero otherwise), with a
/// chamber of two detectors cached, one of them then removed from the store without a word on
/// the feed.
async fn following_with_a_detector_removed(
    ports: &StorePorts,
    changes: &MemoryChamberChanges,
    label: &str,
) -> (CachedChambers, chamberlain_domain::model::Chamber) {
    let cached = CachedChambers::new(
        Arc::new(RepositoryPollReads::of(&ports.repositories)),
        Duration::ZERO,
    )
    .following(changes, Duration::from_secs(3600))
    .await;
    let (chamber, removed) = chamber_of_two(ports, label).await;
    assert_eq!(detectors_of(&cached, chamber.id).await, 2);
    ports
        .detectors
        .delete(chamber.organization_id, removed.id)
        .await
        .unwrap();
    (cached, chamber)
}

#[tokio::test]
async fn a_cache_following_the_change_feed_keeps_chambers_until_a_change_is_published() {
    let ports = StorePorts::from_adapter(Arc::new(MemoryStore::new()));
    let changes = MemoryChamberChanges::new(16);
    let (cached, chamber) =
        following_with_a_detector_removed(&ports, &changes, "cache-follows").await;
    // Nothing published: the cached definition stays (with the constructor's TTL of zero it
    // would be reloaded at once).
    for _ in 0..3 {
        assert_eq!(detectors_of(&cached, chamber.id).await, 2);
        tokio::task::yield_now().await;
    }
    // Published: the next polls read the chamber afresh.
    changes
        .publish(&ChamberChange::Upserted {
            chamber: chamber.clone(),
        })
        .await
        .unwrap();
    until_detectors(&cached, chamber.id, 1).await;
}

#[tokio::test]
async fn a_resync_of_the_change_feed_reloads_every_chamber() {
    let ports = StorePorts::from_adapter(Arc::new(MemoryStore::new()));
    let changes = MemoryChamberChanges::new(16);
    let (cached, chamber) =
        following_with_a_detector_removed(&ports, &changes, "cache-resync").await;
    changes.publish(&ChamberChange::Resync).await.unwrap();
    until_detectors(&cached, chamber.id, 1).await;
}

/// Reads the store, then waits for the gate before answering: a load that read a chamber
/// before a change and finishes after it.
struct GatedReads {
    inner: RepositoryPollReads,
    read: tokio::sync::Notify,
    gate: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl PollReads for GatedReads {
    async fn load_for_poll(
        &self,
        id: ChamberId,
    ) -> Result<Option<Arc<ChamberWithDetectors>>, StoreError> {
        let loaded = self.inner.load_for_poll(id).await;
        self.read.notify_one();
        self.gate.acquire().await.expect("gate open").forget();
        loaded
    }

    async fn covering(
        &self,
        section: SectionId,
        at: Timestamp,
    ) -> Result<Option<Batch>, StoreError> {
        self.inner.covering(section, at).await
    }
}

#[tokio::test]
async fn a_load_that_read_before_a_change_is_not_kept() {
    let ports = StorePorts::from_adapter(Arc::new(MemoryStore::new()));
    let gated = Arc::new(GatedReads {
        inner: RepositoryPollReads::of(&ports.repositories),
        read: tokio::sync::Notify::new(),
        gate: tokio::sync::Semaphore::new(0),
    });
    let cached = Arc::new(CachedChambers::new(
        gated.clone(),
        Duration::from_secs(3600),
    ));
    let (chamber, removed) = chamber_of_two(&ports, "cache-race").await;
    let first = tokio::spawn({
        let cached = cached.clone();
        async move { detectors_of(&cached, chamber.id).await }
    });
    gated.read.notified().await;
    // The load has read two detectors; one is removed and the change announced before it ends.
    ports
        .detectors
        .delete(chamber.organization_id, removed.id)
        .await
        .unwrap();
    cached.outdated(chamber.id);
    gated.gate.add_permits(1);
    assert_eq!(first.await.unwrap(), 2, "the load answers what it read");
    // What it read is not cached: the next poll reads the store.
    gated.gate.add_permits(1);
    assert_eq!(detectors_of(&cached, chamber.id).await, 1);
}
