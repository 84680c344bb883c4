//! The worker is the one owner of every job it leases: each delivery of a job reaches the
//! queue once: acknowledged after its results are stored (a write that fails is tried again,
//! the results kept meanwhile) or when its chamber is gone, or released for a retry. Runs the real
//! `Worker::run` on paused time against the memory adapters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::conformance::fixtures::{self, T0};
use chamberlain_domain::model::Page;
use chamberlain_domain::model::{
    Chamber, ChamberId, ChamberState, OrganizationId, PollId, PollJob, PollOutcome,
};
use chamberlain_domain::ports::{
    ChamberRepository, EnqueueReport, LatestReadings, LeaseReceipt, LeasedJob, LedgerQuery,
    OrganizationRepository, PollLedgerRepository, PollQueue, PollRecord, QueueDepth, QueueError,
    ReadingCursor, ReadingQuery, ReadingRepository, Repositories, SectionRepository, StoreError,
    WriteReport,
};
use chamberlain_domain::usecases::PollHandler;
use chamberlain_fakes::{MemoryStore, ScriptedAnswer, ScriptedChamberClient, TokioClock};
use chamberlain_memory::{MemoryEventBus, MemoryPollQueue};
use chamberlain_worker::{Worker, WorkerConfig};
use tokio::sync::Notify;

/// What the queue was told about one delivery (one receipt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Acked,
    Released,
}

/// One delivery: its receipt, its poll, its attempt, and what the queue was told (in order).
type Delivery = (LeaseReceipt, PollId, u32, Vec<Told>);

/// The memory queue, recording each delivery and what it was told about it.
struct RecordingQueue {
    inner: MemoryPollQueue,
    deliveries: Mutex<Vec<Delivery>>,
    /// Notified whenever a poll is acknowledged.
    acked: Notify,
}

impl RecordingQueue {
    fn tell(&self, receipt: &LeaseReceipt, told: Told) {
        let mut deliveries = self.deliveries.lock().unwrap();
        let delivery = deliveries
            .iter_mut()
            .find(|(r, ..)| r == receipt)
            .expect("only leased receipts are settled");
        delivery.3.push(told);
    }

    fn acked_polls(&self) -> Vec<PollId> {
        let deliveries = self.deliveries.lock().unwrap();
        deliveries
            .iter()
            .filter(|(.., told)| told.contains(&Told::Acked))
            .map(|(_, poll, ..)| *poll)
            .collect()
    }
}

#[async_trait]
impl PollQueue for RecordingQueue {
    async fn enqueue(&self, jobs: &[PollJob]) -> Result<EnqueueReport, QueueError> {
        self.inner.enqueue(jobs).await
    }
    async fn lease(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<LeasedJob>, QueueError> {
        let leased = self.inner.lease(max, visibility, wait).await?;
        self.deliveries
            .lock()
            .unwrap()
            .extend(leased.iter().map(|j| {
                (
                    j.receipt.clone(),
                    j.job.poll,
                    j.job.meta.attempt,
                    Vec::new(),
                )
            }));
        Ok(leased)
    }
    async fn ack(&self, receipts: &[LeaseReceipt]) -> Result<u64, QueueError> {
        for receipt in receipts {
            self.tell(receipt, Told::Acked);
        }
        let acked = self.inner.ack(receipts).await;
        self.acked.notify_one();
        acked
    }
    async fn extend(
        &self,
        receipts: &[LeaseReceipt],
        visibility: Duration,
    ) -> Result<u64, QueueError> {
        self.inner.extend(receipts, visibility).await
    }
    async fn release(&self, receipt: &LeaseReceipt, delay: Duration) -> Result<(), QueueError> {
        self.tell(receipt, Told::Released);
        self.inner.release(receipt, delay).await
    }
    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.inner.depth().await
    }
}

/// The memory store's readings, whose first write fails (a database that drops a connection).
struct FirstWriteFails {
    store: Arc<MemoryStore>,
    failed: AtomicBool,
}

#[async_trait]
impl ReadingRepository for FirstWriteFails {
    async fn store_polls(&self, polls: &[PollRecord]) -> Result<WriteReport, StoreError> {
        if !self.failed.swap(true, Ordering::SeqCst) {
            return Err(StoreError::unavailable("connection reset"));
        }
        self.store.store_polls(polls).await
    }
    async fn query(
        &self,
        org: OrganizationId,
        query: &ReadingQuery,
    ) -> Result<Page<chamberlain_domain::model::Reading, ReadingCursor>, StoreError> {
        self.store.query(org, query).await
    }
    async fn latest(
        &self,
        org: OrganizationId,
        chambers: &[ChamberId],
    ) -> Result<Vec<LatestReadings>, StoreError> {
        self.store.latest(org, chambers).await
    }
    async fn prune_before(&self, cutoff: chamberlain_domain::Timestamp) -> Result<(), StoreError> {
        self.store.prune_before(cutoff).await
    }
}

async fn chamber(
    store: &MemoryStore,
    org: OrganizationId,
    section: chamberlain_domain::model::SectionId,
    label: &str,
    interval_s: u64,
) -> Chamber {
    let chamber = fixtures::chamber(org, section, label, interval_s);
    let detectors = [fixtures::detector(&chamber, "t")];
    ChamberRepository::create(store, &chamber, &detectors)
        .await
        .unwrap();
    chamber
}

#[tokio::test(start_paused = true)]
async fn every_delivery_reaches_the_queue_once_and_every_poll_is_acknowledged_once() {
    let clock = TokioClock::at(T0);
    let store = Arc::new(MemoryStore::new());
    let org = fixtures::organization("outcomes");
    OrganizationRepository::create(&*store, &org).await.unwrap();
    let section = fixtures::section(org.id, "room");
    SectionRepository::create(&*store, &section).await.unwrap();
    // Answers well; answers 500 (a final failure); refuses connections until its poll expires
    // (retried while current); is paused (recorded cancelled, never sent); is deleted once its
    // job is queued (discarded).
    let ok = chamber(&store, org.id, section.id, "ok", 60).await;
    let broken = chamber(&store, org.id, section.id, "broken", 60).await;
    let down = chamber(&store, org.id, section.id, "down", 2).await;
    let mut paused = chamber(&store, org.id, section.id, "paused", 60).await;
    paused.state = ChamberState::Paused;
    ChamberRepository::update(&*store, &paused).await.unwrap();
    let gone = chamber(&store, org.id, section.id, "gone", 60).await;
    let client = Arc::new(ScriptedChamberClient::new());
    client.script(
        "http://chambers.test/ok",
        ScriptedAnswer::ok(r#"{"t": 21}"#),
    );
    client.script(
        "http://chambers.test/broken",
        ScriptedAnswer::Respond {
            status: 500,
            body: Vec::new(),
        },
    );

    let queue = Arc::new(RecordingQueue {
        inner: MemoryPollQueue::new(clock.clone()),
        deliveries: Mutex::default(),
        acked: Notify::new(),
    });
    let slot = T0 + Duration::from_secs(1);
    let jobs: Vec<PollJob> = [&ok, &broken, &down, &paused, &gone]
        .iter()
        .map(|c| fixtures::poll_job(org.id, c.id, slot, c.interval.as_millis() / 1000, T0))
        .collect();
    assert_eq!(queue.enqueue(&jobs).await.unwrap().new, 5);
    ChamberRepository::delete(&*store, org.id, gone.id)
        .await
        .unwrap();

    let repositories = Repositories::of(store.clone());
    let handler = PollHandler {
        readings: Arc::new(FirstWriteFails {
            store: store.clone(),
            failed: AtomicBool::new(false),
        }),
        ..PollHandler::new(
            &repositories,
            client.clone(),
            Arc::new(MemoryEventBus::new(64)),
            clock.clone(),
        )
    };
    let worker = Worker::new(
        handler,
        queue.clone(),
        WorkerConfig {
            visibility: Duration::from_secs(2),
            ..WorkerConfig::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let working = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(Duration::from_secs(120), async {
        while queue.acked_polls().len() < jobs.len() {
            queue.acked.notified().await;
        }
    })
    .await
    .expect("every poll acknowledged within two simulated minutes");
    stop.send(()).unwrap();
    let report = working.await.unwrap();

    let deliveries = queue.deliveries.lock().unwrap().clone();
    // Each delivery was told once at most...
    for (receipt, poll, attempt, told) in &deliveries {
        assert!(
            told.len() <= 1,
            "{receipt:?} ({poll:?}, attempt {attempt}) told {told:?}"
        );
    }
    // ...and none left untold: the failed write was tried again with the results it kept, so
    // its jobs were acknowledged on the delivery that fetched them, not fetched again.
    let untold: Vec<_> = deliveries.iter().filter(|d| d.3.is_empty()).collect();
    assert!(untold.is_empty(), "{untold:?}");
    // Every poll acknowledged exactly once; the retries were releases.
    let mut acks: HashMap<PollId, usize> = HashMap::new();
    for poll in queue.acked_polls() {
        *acks.entry(poll).or_default() += 1;
    }
    assert_eq!(acks.len(), jobs.len());
    assert!(acks.values().all(|n| *n == 1), "{acks:?}");
    let released = deliveries
        .iter()
        .filter(|d| d.3 == [Told::Released])
        .count();
    assert!(
        released >= 2,
        "the refusing chamber was retried ({released})"
    );
    assert_eq!(report.retries as usize, released);
    assert_eq!(report.failed_writes, 1);
    assert_eq!(queue.depth().await.unwrap().leased, 0);

    // What was stored: one entry per poll, none for the deleted chamber.
    let outcome = |chamber: ChamberId| {
        let store = store.clone();
        let org = org.id;
        async move {
            let entries = PollLedgerRepository::list(&*store, org, &LedgerQuery::all(chamber))
                .await
                .unwrap()
                .items;
            assert_eq!(entries.len(), 1, "{chamber}: {entries:?}");
            entries[0].outcome.clone()
        }
    };
    assert_eq!(outcome(ok.id).await, PollOutcome::Ok);
    assert_eq!(
        outcome(broken.id).await,
        PollOutcome::HttpStatus { status: 500 }
    );
    assert!(matches!(
        outcome(down.id).await,
        PollOutcome::ConnectionFailed { .. }
    ));
    assert_eq!(outcome(paused.id).await, PollOutcome::Cancelled);
    assert!(
        client
            .requests()
            .iter()
            .all(|r| !r.url.as_str().ends_with("/paused") && !r.url.as_str().ends_with("/gone")),
        "paused and deleted chambers are never sent"
    );
}
