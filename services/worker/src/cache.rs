//! Short-lived caches in front of the repositories a poll reads.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::Timestamp;
use chamberlain_domain::model::Detector;
use chamberlain_domain::model::{
    Batch, BatchId, Chamber, ChamberId, OrganizationId, Page, PageRequest, SectionId,
};
use chamberlain_domain::ports::{
    BatchRepository, ChamberFilter, ChamberRepository, ChamberWithDetectors, ItemError, StoreError,
};
use tokio::time::Instant;

type Entry<T> = (Instant, T);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Caches `load_for_poll` (a chamber and its detectors) and `covering` (a section's open batch)
/// for `ttl`; every other call goes straight through. A configuration change reaches the
/// workers within `ttl`.
pub struct CachedChambers {
    chambers: Arc<dyn ChamberRepository>,
    batches: Arc<dyn BatchRepository>,
    ttl: Duration,
    loaded: Arc<Mutex<HashMap<ChamberId, Entry<Option<ChamberWithDetectors>>>>>,
    /// Chambers whose entry is being reloaded in the background.
    refreshing: Arc<Mutex<HashSet<ChamberId>>>,
    open: Mutex<HashMap<SectionId, Entry<Option<Batch>>>>,
}

impl std::fmt::Debug for CachedChambers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedChambers")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl CachedChambers {
    pub fn new(
        chambers: Arc<dyn ChamberRepository>,
        batches: Arc<dyn BatchRepository>,
        ttl: Duration,
    ) -> Self {
        Self {
            chambers,
            batches,
            ttl,
            loaded: Arc::default(),
            refreshing: Arc::default(),
            open: Mutex::default(),
        }
    }

    fn fresh<K: std::hash::Hash + Eq, V: Clone>(
        &self,
        map: &Mutex<HashMap<K, Entry<V>>>,
        key: &K,
    ) -> Option<V> {
        let map = lock(map);
        map.get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }
}

#[async_trait]
impl ChamberRepository for CachedChambers {
    async fn create(&self, chamber: &Chamber, detectors: &[Detector]) -> Result<(), StoreError> {
        self.chambers.create(chamber, detectors).await
    }
    async fn create_many(&self, chambers: &[ChamberWithDetectors]) -> Result<(), ItemError> {
        self.chambers.create_many(chambers).await
    }
    async fn get(&self, org: OrganizationId, id: ChamberId) -> Result<Chamber, StoreError> {
        self.chambers.get(org, id).await
    }
    async fn list(
        &self,
        org: OrganizationId,
        filter: ChamberFilter,
        page: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>, StoreError> {
        self.chambers.list(org, filter, page).await
    }
    async fn update(&self, chamber: &Chamber) -> Result<(), StoreError> {
        self.chambers.update(chamber).await
    }
    async fn delete(&self, org: OrganizationId, id: ChamberId) -> Result<(), StoreError> {
        self.chambers.delete(org, id).await
    }
    /// A poll never waits for a reload once its chamber is cached: an entry older than the TTL
    /// is served as it is while one background task reloads it (a fleet loaded together would
    /// otherwise expire together and stall every poll of that second on the database).
    async fn load_for_poll(
        &self,
        id: ChamberId,
    ) -> Result<Option<ChamberWithDetectors>, StoreError> {
        let cached = lock(&self.loaded).get(&id).cloned();
        let Some((at, value)) = cached else {
            let loaded = self.chambers.load_for_poll(id).await?;
            lock(&self.loaded).insert(id, (Instant::now(), loaded.clone()));
            return Ok(loaded);
        };
        // Each chamber's entry lives between one and two TTLs (fixed per chamber, from its id),
        // so a fleet loaded together is reloaded spread out, not in one burst.
        let spread = chamberlain_domain::schedule::stable_chamber_hash(id) % 1000;
        let ttl = self.ttl + self.ttl.mul_f64(spread as f64 / 1000.0);
        if at.elapsed() >= ttl && lock(&self.refreshing).insert(id) {
            let (chambers, loaded, refreshing) = (
                self.chambers.clone(),
                self.loaded.clone(),
                self.refreshing.clone(),
            );
            tokio::spawn(async move {
                match chambers.load_for_poll(id).await {
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
    async fn list_active(
        &self,
        page: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>, StoreError> {
        self.chambers.list_active(page).await
    }
}

#[async_trait]
impl BatchRepository for CachedChambers {
    async fn start(&self, batch: &Batch) -> Result<(), StoreError> {
        self.batches.start(batch).await
    }
    async fn end(
        &self,
        org: OrganizationId,
        id: BatchId,
        at: Timestamp,
    ) -> Result<Batch, StoreError> {
        self.batches.end(org, id, at).await
    }
    async fn get(&self, org: OrganizationId, id: BatchId) -> Result<Batch, StoreError> {
        self.batches.get(org, id).await
    }
    async fn list(
        &self,
        org: OrganizationId,
        section: Option<SectionId>,
        page: PageRequest<BatchId>,
    ) -> Result<Page<Batch, BatchId>, StoreError> {
        self.batches.list(org, section, page).await
    }
    /// The batch open in the section, as of at most `ttl` ago: a batch's start or end reaches
    /// readings within the TTL.
    async fn covering(
        &self,
        section: SectionId,
        at: Timestamp,
    ) -> Result<Option<Batch>, StoreError> {
        if let Some(hit) = self.fresh(&self.open, &section) {
            return Ok(hit.filter(|b| b.covers(at)));
        }
        let open = self.batches.covering(section, at).await?;
        lock(&self.open).insert(section, (Instant::now(), open.clone()));
        Ok(open)
    }
}
