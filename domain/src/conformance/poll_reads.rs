//! [`PollReads`] conformance: what every way of serving a poll's reads must return, whether
//! straight from the store ([`crate::ports::RepositoryPollReads`]) or through a worker's cache.
//! Each case reads everything it asserts for the first time, so a cache is held to the same
//! answers as the store.

use crate::conformance::fixtures::{self, StorePorts, T0};
use crate::model::ChamberId;
use crate::ports::PollReads;
use std::time::Duration;

fn at(s: u64) -> crate::time::Timestamp {
    T0 + Duration::from_secs(s)
}

/// A chamber comes with its detectors; an unknown or deleted one is `None`; a section's open
/// batch covers the moments from its start on, and no other section's.
pub async fn reads_a_polls_chamber_and_batch(reads: &dyn PollReads, p: &StorePorts) {
    let org = fixtures::organization("poll-reads");
    p.organizations.create(&org).await.unwrap();
    let section = fixtures::section(org.id, "room");
    let other = fixtures::section(org.id, "hall");
    p.sections.create(&section).await.unwrap();
    p.sections.create(&other).await.unwrap();
    let chamber = fixtures::chamber(org.id, section.id, "c1", 1);
    let mut detectors = vec![
        fixtures::detector(&chamber, "t"),
        fixtures::detector(&chamber, "h"),
    ];
    p.chambers.create(&chamber, &detectors).await.unwrap();
    let deleted = fixtures::chamber(org.id, section.id, "c2", 1);
    p.chambers.create(&deleted, &[]).await.unwrap();
    p.chambers.delete(org.id, deleted.id).await.unwrap();
    let batch = fixtures::batch(org.id, section.id, "lettuce", at(10));
    p.batches.start(&batch).await.unwrap();

    let loaded = reads
        .load_for_poll(chamber.id)
        .await
        .unwrap()
        .expect("the chamber is found");
    assert_eq!(loaded.chamber, chamber);
    let mut found = loaded.detectors.clone();
    found.sort_by_key(|d| d.id);
    detectors.sort_by_key(|d| d.id);
    assert_eq!(found, detectors);
    assert_eq!(reads.load_for_poll(deleted.id).await.unwrap(), None);
    assert_eq!(
        reads.load_for_poll(ChamberId::random()).await.unwrap(),
        None
    );

    assert_eq!(
        reads
            .covering(section.id, at(11))
            .await
            .unwrap()
            .map(|b| b.id),
        Some(batch.id)
    );
    assert_eq!(reads.covering(section.id, at(9)).await.unwrap(), None);
    assert_eq!(reads.covering(other.id, at(11)).await.unwrap(), None);
}

/// A chamber whose poll the store refused ([`PollReads::outdated`]) is read again: a detector
/// removed since the first read is gone from the next one at once.
pub async fn a_chamber_marked_outdated_is_read_again(reads: &dyn PollReads, p: &StorePorts) {
    let org = fixtures::organization("poll-reads-outdated");
    p.organizations.create(&org).await.unwrap();
    let section = fixtures::section(org.id, "room");
    p.sections.create(&section).await.unwrap();
    let chamber = fixtures::chamber(org.id, section.id, "c1", 1);
    let kept = fixtures::detector(&chamber, "t");
    let removed = fixtures::detector(&chamber, "h");
    p.chambers
        .create(&chamber, &[kept.clone(), removed.clone()])
        .await
        .unwrap();
    let first = reads.load_for_poll(chamber.id).await.unwrap().unwrap();
    assert_eq!(first.detectors.len(), 2);

    p.detectors.delete(org.id, removed.id).await.unwrap();
    reads.outdated(chamber.id);
    let again = reads.load_for_poll(chamber.id).await.unwrap().unwrap();
    let ids: Vec<_> = again.detectors.iter().map(|d| d.id).collect();
    assert_eq!(ids, vec![kept.id], "the removed detector is gone");
}
