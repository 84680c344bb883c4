//! A cache in front of what a poll reads, kept current by the chamber change feed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{Batch, ChamberId, SectionId};
use chamberlain_domain::ports::{
    ChamberChange, ChamberChanges, ChamberWithDetectors, PollReads, StoreError,
};
use tokio::time::Instant;

type Entry<T> = (Instant, T);

/// Each chamber read, `None` if it was not found, with when it was read.
type Loaded = HashMap<ChamberId, Entry<Option<Arc<ChamberWithDetectors>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`PollReads`] cached: a chamber with its detectors, and a section's open batch.
///
/// A configuration change reaches the workers within `ttl`, or, once the cache
/// [follows the change feed](CachedChambers::following), at the chamber's next poll after the
/// change is published (the `ttl` given there is then only a safety net). While the store does
/// not answer, a cached entry is served until a reload succeeds, so a store that is away never
/// holds up a poll whose chamber is cached, and never a fetched answer. A section's open batch
/// is always cached for `ttl` (a batch's start or end is not on the change feed).
pub struct CachedChambers {
    reads: Arc<dyn PollReads>,
    ttl: Duration,
    /// How long a chamber's entry lives, ms: `ttl`, or longer while the change feed is followed.
    chamber_ttl_ms: Arc<AtomicU64>,
    loaded: Arc<Mutex<Loaded>>,
    /// Chambers whose entry is being reloaded in the background.
    refreshing: Arc<Mutex<HashSet<ChamberId>>>,
    open: Arc<Mutex<HashMap<SectionId, Entry<Option<Batch>>>>>,
    /// Sections whose open batch is being reloaded in the background.
    reopening: Arc<Mutex<HashSet<SectionId>>>,
    /// Counts invalidations: a load that began before one is returned but not cached (it may
    /// have read what the change replaced).
    invalidations: Arc<AtomicU64>,
    /// Chamber entries loaded before this instant are expired (the feed asked for a resync).
    stale_before: Arc<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for CachedChambers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedChambers")
            .field("ttl", &self.ttl)
            .field(
                "chamber_ttl_ms",
                &self.chamber_ttl_ms.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl CachedChambers {
    pub fn new(reads: Arc<dyn PollReads>, ttl: Duration) -> Self {
        Self {
            reads,
            ttl,
            chamber_ttl_ms: Arc::new(AtomicU64::new(millis(ttl))),
            loaded: Arc::default(),
            refreshing: Arc::default(),
            open: Arc::default(),
            reopening: Arc::default(),
            invalidations: Arc::default(),
            stale_before: Arc::default(),
        }
    }

    /// Follows `changes`: a chamber upserted or removed is read afresh at its next poll, a
    /// resync of the feed expires every chamber (each served once more while it reloads), and
    /// chambers are otherwise kept for `chamber_ttl`. Changes published from when this returns
    /// are seen. If the feed cannot be subscribed to (logged), or closes later, chambers are
    /// kept for the constructor's `ttl` instead.
    pub async fn following(self, changes: &dyn ChamberChanges, chamber_ttl: Duration) -> Self {
        let mut feed = match changes.subscribe().await {
            Ok(feed) => feed,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "chamber change feed not followed; chambers are read again every {} s",
                    self.ttl.as_secs()
                );
                return self;
            }
        };
        self.chamber_ttl_ms
            .store(millis(chamber_ttl), Ordering::Relaxed);
        let invalidate = self.invalidator();
        let (chamber_ttl_ms, fallback) = (self.chamber_ttl_ms.clone(), millis(self.ttl));
        tokio::spawn(async move {
            while let Some(change) = feed.next().await {
                match change {
                    ChamberChange::Upserted { chamber } => invalidate.chamber(chamber.id),
                    ChamberChange::Removed { chamber_id, .. } => invalidate.chamber(chamber_id),
                    ChamberChange::Resync => invalidate.all(),
                }
            }
            tracing::info!("chamber change feed closed; chambers are read again on a timer");
            chamber_ttl_ms.store(fallback, Ordering::Relaxed);
            invalidate.all();
        });
        self
    }

    fn invalidator(&self) -> Invalidate {
        Invalidate {
            loaded: self.loaded.clone(),
            invalidations: self.invalidations.clone(),
            stale_before: self.stale_before.clone(),
        }
    }
}

/// What marks cached chambers outdated, shared with the task following the change feed.
struct Invalidate {
    loaded: Arc<Mutex<Loaded>>,
    invalidations: Arc<AtomicU64>,
    stale_before: Arc<Mutex<Option<Instant>>>,
}

impl Invalidate {
    /// The chamber is read from the store at its next poll.
    fn chamber(&self, id: ChamberId) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        lock(&self.loaded).remove(&id);
    }

    /// Every chamber is reloaded, each served as cached until its reload is done (a fleet
    /// dropped at once would stall a round of polls on the store).
    fn all(&self) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        *lock(&self.stale_before) = Some(Instant::now());
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
    ) -> Result<Option<Arc<ChamberWithDetectors>>, StoreError> {
        let generation = self.invalidations.load(Ordering::SeqCst);
        let cached = lock(&self.loaded).get(&id).cloned();
        let Some((at, value)) = cached else {
            let loaded = self.reads.load_for_poll(id).await?;
            let mut entries = lock(&self.loaded);
            if self.invalidations.load(Ordering::SeqCst) == generation {
                entries.insert(id, (Instant::now(), loaded.clone()));
            }
            return Ok(loaded);
        };
        // Each chamber's entry lives between one and two TTLs (fixed per chamber, from its id),
        // so a fleet loaded together is reloaded spread out, not in one burst.
        let spread = chamberlain_domain::schedule::stable_chamber_hash(id) % 1000;
        let base = Duration::from_millis(self.chamber_ttl_ms.load(Ordering::Relaxed));
        let ttl = base + base.mul_f64(spread as f64 / 1000.0);
        let resynced = lock(&self.stale_before).is_some_and(|before| at <= before);
        if (resynced || at.elapsed() >= ttl) && lock(&self.refreshing).insert(id) {
            let (reads, loaded, refreshing, invalidations) = (
                self.reads.clone(),
                self.loaded.clone(),
                self.refreshing.clone(),
                self.invalidations.clone(),
            );
            tokio::spawn(async move {
                match reads.load_for_poll(id).await {
                    Ok(fresh) => {
                        let mut entries = lock(&loaded);
                        if invalidations.load(Ordering::SeqCst) == generation {
                            entries.insert(id, (Instant::now(), fresh));
                        }
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
        self.invalidator().chamber(chamber);
    }
}
