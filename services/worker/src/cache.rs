//! A short-lived cache in front of what a poll reads.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{Batch, ChamberId, SectionId};
use chamberlain_domain::ports::{ChamberWithDetectors, PollReads, StoreError};
use tokio::time::Instant;

type Entry<T> = (Instant, T);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`PollReads`] cached for `ttl`: a chamber with its detectors, and a section's open batch.
/// A configuration change reaches the workers within `ttl` (or, while the store does not
/// answer, once it does: a cached entry is served until a reload succeeds, so a store that is
/// away never holds up a poll whose chamber is cached, and never a fetched answer).
pub struct CachedChambers {
    reads: Arc<dyn PollReads>,
    ttl: Duration,
    loaded: Arc<Mutex<HashMap<ChamberId, Entry<Option<ChamberWithDetectors>>>>>,
    /// Chambers whose entry is being reloaded in the background.
    refreshing: Arc<Mutex<HashSet<ChamberId>>>,
    open: Arc<Mutex<HashMap<SectionId, Entry<Option<Batch>>>>>,
    /// Sections whose open batch is being reloaded in the background.
    reopening: Arc<Mutex<HashSet<SectionId>>>,
}

impl std::fmt::Debug for CachedChambers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedChambers")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl CachedChambers {
    pub fn new(reads: Arc<dyn PollReads>, ttl: Duration) -> Self {
        Self {
            reads,
            ttl,
            loaded: Arc::default(),
            refreshing: Arc::default(),
            open: Arc::default(),
            reopening: Arc::default(),
        }
    }
}

#[async_trait]
impl PollReads for CachedChambers {
    /// A poll never waits for a reload once its chamber is cached: an entry older than the TTL
    /// is served as it is while one background task reloads it (a fleet loaded together would
    /// otherwise expire together and stall every poll of that second on the database).
    async fn load_for_poll(
        &self,
        id: ChamberId,
    ) -> Result<Option<ChamberWithDetectors>, StoreError> {
        let cached = lock(&self.loaded).get(&id).cloned();
        let Some((at, value)) = cached else {
            let loaded = self.reads.load_for_poll(id).await?;
            lock(&self.loaded).insert(id, (Instant::now(), loaded.clone()));
            return Ok(loaded);
        };
        // Each chamber's entry lives between one and two TTLs (fixed per chamber, from its id),
        // so a fleet loaded together is reloaded spread out, not in one burst.
        let spread = chamberlain_domain::schedule::stable_chamber_hash(id) % 1000;
        let ttl = self.ttl + self.ttl.mul_f64(spread as f64 / 1000.0);
        if at.elapsed() >= ttl && lock(&self.refreshing).insert(id) {
            let (reads, loaded, refreshing) = (
                self.reads.clone(),
                self.loaded.clone(),
                self.refreshing.clone(),
            );
            tokio::spawn(async move {
                match reads.load_for_poll(id).await {
                    Ok(fresh) => {
                        lock(&loaded).insert(id, (Instant::now(), fresh));
                    }
                    Err(e) => tracing::warn!(
                        chamber.id = %id, error = %e, "chamber reload failed; serving the cached one"
                    ),
                }
                lock(&refreshing).remove(&id);
            });
        }
        Ok(value)
    }
    /// The batch open in the section, as of at most `ttl` ago: a batch's start or end reaches
    /// readings within the TTL.
    async fn covering(
        &self,
        section: SectionId,
        at: Timestamp,
    ) -> Result<Option<Batch>, StoreError> {
        let cached = lock(&self.open).get(&section).cloned();
        let Some((loaded_at, open)) = cached else {
            let open = self.reads.covering(section, at).await?;
            lock(&self.open).insert(section, (Instant::now(), open.clone()));
            return Ok(open);
        };
        // As for chambers: an entry past its TTL is served while one task reloads it.
        if loaded_at.elapsed() >= self.ttl && lock(&self.reopening).insert(section) {
            let (reads, cached, reopening) = (
                self.reads.clone(),
                self.open.clone(),
                self.reopening.clone(),
            );
            tokio::spawn(async move {
                match reads.covering(section, at).await {
                    Ok(fresh) => {
                        lock(&cached).insert(section, (Instant::now(), fresh));
                    }
                    Err(e) => tracing::warn!(
                        section.id = %section, error = %e, "open batch reload failed; serving the cached one"
                    ),
                }
                lock(&reopening).remove(&section);
            });
        }
        Ok(open.filter(|b| b.covers(at)))
    }

    fn outdated(&self, chamber: ChamberId) {
        lock(&self.loaded).remove(&chamber);
    }
}
