//! Resyncs load in the background: polls keep being enqueued while the chamber list loads, and
//! a change that arrives during the load survives the snapshot replacing the schedule.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::conformance::fixtures;
use chamberlain_domain::model::{Chamber, ChamberId, Detector, OrganizationId, Page, PageRequest};
use chamberlain_domain::ports::{
    ChamberChange, ChamberChanges, ChamberFilter, ChamberRepository, ChamberWithDetectors, Clock,
    ItemError, OrganizationRepository, PollQueue, Repositories, SectionRepository, StoreError,
};
use chamberlain_fakes::MemoryStore;
use chamberlain_memory::{
    MemoryChamberChanges, MemoryLeaderLease, MemoryPollQueue, MemoryScheduleCheckpoint, SystemClock,
};
use chamberlain_scheduler::{Scheduler, SchedulerConfig};
use tokio::sync::{Notify, Semaphore};

/// The memory store, except that every `list_active` after the first holds its answer until
/// the gate opens.
struct GatedChambers {
    inner: Arc<MemoryStore>,
    calls: AtomicUsize,
    loading: Notify,
    gate: Semaphore,
}

#[async_trait]
impl ChamberRepository for GatedChambers {
    async fn create(&self, chamber: &Chamber, detectors: &[Detector]) -> Result<(), StoreError> {
        ChamberRepository::create(&*self.inner, chamber, detectors).await
    }
    async fn create_many(&self, chambers: &[ChamberWithDetectors]) -> Result<(), ItemError> {
        ChamberRepository::create_many(&*self.inner, chambers).await
    }
    async fn get(&self, org: OrganizationId, id: ChamberId) -> Result<Chamber, StoreError> {
        ChamberRepository::get(&*self.inner, org, id).await
    }
    async fn list(
        &self,
        org: OrganizationId,
        filter: ChamberFilter,
        page: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>, StoreError> {
        ChamberRepository::list(&*self.inner, org, filter, page).await
    }
    async fn update(&self, chamber: &Chamber) -> Result<(), StoreError> {
        ChamberRepository::update(&*self.inner, chamber).await
    }
    async fn delete(&self, org: OrganizationId, id: ChamberId) -> Result<(), StoreError> {
        ChamberRepository::delete(&*self.inner, org, id).await
    }
    async fn load_for_poll(
        &self,
        id: ChamberId,
    ) -> Result<Option<ChamberWithDetectors>, StoreError> {
        ChamberRepository::load_for_poll(&*self.inner, id).await
    }
    async fn list_active(
        &self,
        page: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>, StoreError> {
        let answer = ChamberRepository::list_active(&*self.inner, page).await;
        if self.calls.fetch_add(1, Ordering::SeqCst) >= 1 {
            self.loading.notify_one();
            let _open = self.gate.acquire().await;
        }
        answer
    }
}

/// Leases what is queued and returns the chambers it was for.
async fn enqueued_for(queue: &MemoryPollQueue) -> Vec<ChamberId> {
    queue
        .lease(1000, Duration::from_secs(60), Duration::from_millis(50))
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.job.poll.chamber_id)
        .collect()
}

/// Waits (with a deadline) until a poll of `chamber` is enqueued.
async fn until_enqueued(queue: &MemoryPollQueue, chamber: ChamberId, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !enqueued_for(queue).await.contains(&chamber) {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_continue_during_a_resync_and_changes_made_meanwhile_survive_it() {
    let store = Arc::new(MemoryStore::new());
    let org = fixtures::organization("o");
    OrganizationRepository::create(&*store, &org).await.unwrap();
    let section = fixtures::section(org.id, "s");
    SectionRepository::create(&*store, &section).await.unwrap();
    let a = fixtures::chamber(org.id, section.id, "a", 1);
    ChamberRepository::create(&*store, &a, &[fixtures::detector(&a, "t")])
        .await
        .unwrap();

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let chambers = Arc::new(GatedChambers {
        inner: store.clone(),
        calls: AtomicUsize::new(0),
        loading: Notify::new(),
        gate: Semaphore::new(0),
    });
    let changes = Arc::new(MemoryChamberChanges::default());
    let queue = Arc::new(MemoryPollQueue::new(clock.clone()));
    let mut config = SchedulerConfig::new("s1");
    // Only the Resync notice below starts a background load.
    config.resync_every = Duration::from_secs(3600);
    let scheduler = Scheduler::new(
        &Repositories {
            chambers: chambers.clone(),
            ..Repositories::of(store.clone())
        },
        queue.clone(),
        Arc::new(MemoryLeaderLease::new(clock.clone())),
        Arc::new(MemoryScheduleCheckpoint::new()),
        changes.clone(),
        clock,
        config,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(scheduler.run(async {
        let _ = stopped.await;
    }));
    until_enqueued(&queue, a.id, "chamber a is scheduled after the first load").await;

    // A resync starts and its load hangs...
    let loading = chambers.loading.notified();
    changes.publish(&ChamberChange::Resync).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), loading)
        .await
        .expect("the background load started");
    // ...while chamber a's polls keep coming,
    until_enqueued(&queue, a.id, "polls continue while the resync loads").await;
    // and a chamber announced now (not in the snapshot being loaded) is scheduled.
    let b = fixtures::chamber(org.id, section.id, "b", 1);
    changes
        .publish(&ChamberChange::Upserted { chamber: b.clone() })
        .await
        .unwrap();
    until_enqueued(&queue, b.id, "b is scheduled from the change").await;

    // The load finishes with a snapshot that lacks b: b stays scheduled.
    chambers.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    tokio::task::yield_now().await;
    for _ in 0..3 {
        until_enqueued(&queue, b.id, "b survives the snapshot").await;
    }
    let _ = stop.send(());
    running.await.unwrap();
}
