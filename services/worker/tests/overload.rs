//! A worker with more polls due than it can fetch, on paused time against the memory adapters:
//! it fetches the newest due polls, so what it fetches is on time, and lets the oldest expire
//! (first in, first out would have every poll it fetches nearly a window late); a queue that is
//! behind is leased in growing batches, and a full worker does not lease one job at a time; and
//! a stored batch is acknowledged while the next one is being stored.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::{self, T0};
use chamberlain_domain::model::{
    Chamber, ChamberId, LedgerEntry, OrganizationId, Page, PollJob, PollOutcome, Reading,
};
use chamberlain_domain::ports::{
    ChamberClient, ChamberRepository, EnqueueReport, FetchError, FetchRequest, FetchedResponse,
    LatestReadings, LeaseReceipt, LeasedJob, LedgerQuery, OrganizationRepository,
    PollLedgerRepository, PollQueue, PollRecord, QueueDepth, QueueError, ReadingCursor,
    ReadingQuery, ReadingRepository, Repositories, SectionRepository, StoreError, WriteReport,
};
use chamberlain_domain::usecases::PollHandler;
use chamberlain_fakes::{MemoryStore, TokioClock};
use chamberlain_memory::{MemoryEventBus, MemoryPollQueue};
use chamberlain_worker::{Worker, WorkerConfig, WorkerReport};
use tokio::sync::Semaphore;

/// Answers after `takes`, counting requests.
struct Chambers {
    takes: Duration,
    requests: AtomicU64,
}

#[async_trait]
impl ChamberClient for Chambers {
    async fn fetch(&self, _request: &FetchRequest) -> Result<FetchedResponse, FetchError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.takes).await;
        Ok(FetchedResponse {
            status: 200,
            body: br#"{"t": 21}"#.to_vec(),
        })
    }
}

/// The memory queue, noting how many jobs each lease asked for; acknowledgements wait for a
/// permit of `acks` when it is set.
struct ObservedQueue {
    inner: MemoryPollQueue,
    asked: Mutex<Vec<usize>>,
    acks: Option<Semaphore>,
    acks_started: AtomicU64,
}

#[async_trait]
impl PollQueue for ObservedQueue {
    async fn enqueue(&self, jobs: &[PollJob]) -> Result<EnqueueReport, QueueError> {
        self.inner.enqueue(jobs).await
    }
    async fn lease(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<LeasedJob>, QueueError> {
        self.asked.lock().unwrap().push(max);
        self.inner.lease(max, visibility, wait).await
    }
    async fn ack(&self, receipts: &[LeaseReceipt]) -> Result<u64, QueueError> {
        self.acks_started.fetch_add(1, Ordering::SeqCst);
        if let Some(acks) = &self.acks {
            acks.acquire().await.unwrap().forget();
        }
        self.inner.ack(receipts).await
    }
    async fn extend(
        &self,
        receipts: &[LeaseReceipt],
        visibility: Duration,
    ) -> Result<u64, QueueError> {
        self.inner.extend(receipts, visibility).await
    }
    async fn release(&self, receipt: &LeaseReceipt, delay: Duration) -> Result<(), QueueError> {
        self.inner.release(receipt, delay).await
    }
    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.inner.depth().await
    }
}

/// The memory store's readings, counting writes.
struct CountedReadings {
    inner: Arc<MemoryStore>,
    writes: AtomicU64,
}

#[async_trait]
impl ReadingRepository for CountedReadings {
    async fn store_polls(&self, polls: &[PollRecord]) -> Result<WriteReport, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.store_polls(polls).await
    }
    async fn query(
        &self,
        org: OrganizationId,
        query: &ReadingQuery,
    ) -> Result<Page<Reading, ReadingCursor>, StoreError> {
        self.inner.query(org, query).await
    }
    async fn latest(
        &self,
        org: OrganizationId,
        chambers: &[ChamberId],
    ) -> Result<Vec<LatestReadings>, StoreError> {
        self.inner.latest(org, chambers).await
    }
    async fn prune_before(&self, cutoff: Timestamp) -> Result<(), StoreError> {
        self.inner.prune_before(cutoff).await
    }
}

struct Lab {
    store: Arc<MemoryStore>,
    org: OrganizationId,
    chambers: Vec<Chamber>,
    queue: Arc<ObservedQueue>,
    client: Arc<Chambers>,
    readings: Arc<CountedReadings>,
    handler: PollHandler,
}

/// `chambers` chambers polled every `interval_s`, each answering after `takes`; acknowledgements
/// wait for permits when `gated_acks`.
async fn lab(chambers: usize, interval_s: u64, takes: Duration, gated_acks: bool) -> Lab {
    let clock = TokioClock::at(T0);
    let store = Arc::new(MemoryStore::new());
    let org = fixtures::organization("overload");
    OrganizationRepository::create(&*store, &org).await.unwrap();
    let section = fixtures::section(org.id, "room");
    SectionRepository::create(&*store, &section).await.unwrap();
    let mut made = Vec::new();
    for i in 0..chambers {
        let chamber = fixtures::chamber(org.id, section.id, &format!("c{i}"), interval_s);
        ChamberRepository::create(&*store, &chamber, &[fixtures::detector(&chamber, "t")])
            .await
            .unwrap();
        made.push(chamber);
    }
    let queue = Arc::new(ObservedQueue {
        inner: MemoryPollQueue::new(clock.clone()),
        asked: Mutex::default(),
        acks: gated_acks.then(|| Semaphore::new(0)),
        acks_started: AtomicU64::new(0),
    });
    let client = Arc::new(Chambers {
        takes,
        requests: AtomicU64::new(0),
    });
    let readings = Arc::new(CountedReadings {
        inner: store.clone(),
        writes: AtomicU64::new(0),
    });
    let mut handler = PollHandler::new(
        &Repositories::of(store.clone()),
        client.clone(),
        Arc::new(MemoryEventBus::new(1024)),
        clock,
    );
    handler.readings = readings.clone();
    Lab {
        store,
        org: org.id,
        chambers: made,
        queue,
        client,
        readings,
        handler,
    }
}

impl Lab {
    async fn entries(&self) -> Vec<LedgerEntry> {
        let mut all = Vec::new();
        for chamber in &self.chambers {
            all.extend(
                PollLedgerRepository::list(&*self.store, self.org, &LedgerQuery::all(chamber.id))
                    .await
                    .unwrap()
                    .items,
            );
        }
        all
    }

    /// Waits (on paused time) until `n` ledger entries are stored.
    async fn until_recorded(&self, n: usize) {
        for _ in 0..1200 {
            if self.entries().await.len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{} of {n} ledger entries after two minutes",
            self.entries().await.len()
        );
    }

    /// A poll of each chamber (every 60 s), due at T0.
    async fn enqueue_one_poll_each_due_at_t0(&self) {
        let jobs: Vec<PollJob> = self
            .chambers
            .iter()
            .map(|c| fixtures::poll_job(self.org, c.id, T0, 60, T0))
            .collect();
        self.queue.enqueue(&jobs).await.unwrap();
    }

    /// Runs a worker with `config` while `during` runs, then stops it and reports.
    async fn run_while<F: Future<Output = ()>>(
        &self,
        config: WorkerConfig,
        during: F,
    ) -> WorkerReport {
        let worker = Worker::new(self.handler.clone(), self.queue.clone(), config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let working = tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        during.await;
        stop.send(()).unwrap();
        working.await.unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_behind_fetches_the_newest_due_polls_and_lets_the_oldest_expire() {
    // 40 chambers every second, their slots 25 ms apart; each answers after 100 ms and two are
    // fetched at once: 20 polls a second can be fetched of the 40 due.
    const CHAMBERS: usize = 40;
    const SLOTS: usize = 12;
    let lab = lab(CHAMBERS, 1, Duration::from_millis(100), false).await;
    let mut jobs = Vec::new();
    for s in 1..=SLOTS as u64 {
        for (i, chamber) in lab.chambers.iter().enumerate() {
            let slot = T0 + Duration::from_secs(s) + Duration::from_millis(25 * i as u64);
            jobs.push(fixtures::poll_job(lab.org, chamber.id, slot, 1, T0));
        }
    }
    jobs.sort_by_key(|j| j.poll.slot);
    lab.queue.enqueue(&jobs).await.unwrap();
    let config = WorkerConfig {
        concurrency: 2,
        ..WorkerConfig::default()
    };
    lab.run_while(config, lab.until_recorded(CHAMBERS * SLOTS))
        .await;

    let entries = lab.entries().await;
    let mut slots: Vec<_> = entries.iter().map(|e| e.poll).collect();
    slots.sort_by_key(|p| (p.chamber_id, p.slot));
    slots.dedup();
    assert_eq!(slots.len(), CHAMBERS * SLOTS, "one entry per slot");
    assert_eq!(entries.len(), CHAMBERS * SLOTS, "one entry per slot");
    // Past the first three seconds (the worker falling behind).
    let settled = T0 + Duration::from_secs(4);
    let later: Vec<&LedgerEntry> = entries.iter().filter(|e| e.poll.slot >= settled).collect();
    let mut lateness: Vec<Duration> = later
        .iter()
        .filter(|e| e.outcome == PollOutcome::Ok)
        .map(|e| e.lateness)
        .collect();
    lateness.sort();
    let expired = later
        .iter()
        .filter(|e| matches!(e.outcome, PollOutcome::Expired { .. }))
        .count();
    assert_eq!(
        lateness.len() + expired,
        later.len(),
        "every later slot fetched or expired"
    );
    assert!(
        lateness.len() * 3 >= later.len(),
        "at least a third of the later slots fetched (the chambers allow half): {} of {}",
        lateness.len(),
        later.len()
    );
    let p90 = lateness[lateness.len() * 9 / 10];
    assert!(
        p90 <= Duration::from_millis(250),
        "the polls fetched are the newest due, fetched on time: p90 lateness {p90:?}, {lateness:?}"
    );
    assert_eq!(
        lab.client.requests.load(Ordering::SeqCst),
        entries
            .iter()
            .filter(|e| e.outcome == PollOutcome::Ok)
            .count() as u64,
        "every poll fetched was stored"
    );
}

#[tokio::test(start_paused = true)]
async fn a_queue_that_is_behind_is_leased_in_growing_batches() {
    // 5,000 polls due at once (a worker that was away), leased 64 at a time at first.
    const CHAMBERS: usize = 5_000;
    let lab = lab(CHAMBERS, 60, Duration::ZERO, false).await;
    lab.enqueue_one_poll_each_due_at_t0().await;
    let config = WorkerConfig {
        lease_batch: 64,
        ..WorkerConfig::default()
    };
    lab.run_while(config, lab.until_recorded(CHAMBERS)).await;

    let asked = lab.queue.asked.lock().unwrap().clone();
    assert!(
        asked.iter().any(|n| *n >= 1024),
        "leases grew while each came back full: {asked:?}"
    );
    assert!(
        asked.iter().take_while(|n| **n >= 64).count() <= 12,
        "the 5,000 jobs leased in a dozen calls at most: {asked:?}"
    );
    assert_eq!(lab.entries().await.len(), CHAMBERS);
}

#[tokio::test(start_paused = true)]
async fn a_full_worker_leases_again_only_for_a_quarter_batch_of_places() {
    // 2,000 polls due at once and room to hold 256: as the held jobs are handed out one by one,
    // the worker waits for 16 free places (a quarter of its batch of 64) before it leases again.
    const CHAMBERS: usize = 2_000;
    let lab = lab(CHAMBERS, 60, Duration::ZERO, false).await;
    lab.enqueue_one_poll_each_due_at_t0().await;
    let config = WorkerConfig {
        lease_batch: 64,
        max_waiting: 256,
        ..WorkerConfig::default()
    };
    lab.run_while(config, lab.until_recorded(CHAMBERS)).await;

    let asked = lab.queue.asked.lock().unwrap().clone();
    assert!(
        asked.iter().all(|n| *n >= 16),
        "no lease for fewer than 16 places: {asked:?}"
    );
    assert!(
        asked.len() <= CHAMBERS / 16 + 8,
        "{} leases for {CHAMBERS} jobs",
        asked.len()
    );
    assert_eq!(lab.entries().await.len(), CHAMBERS);
}

#[tokio::test(start_paused = true)]
async fn a_stored_batch_is_acknowledged_while_the_next_is_stored() {
    // 100 polls due at once, written 10 (up to 40 when more wait) at a time; the first
    // acknowledgement does not return until the test lets it.
    const CHAMBERS: usize = 100;
    let lab = lab(CHAMBERS, 60, Duration::ZERO, true).await;
    lab.enqueue_one_poll_each_due_at_t0().await;
    let config = WorkerConfig {
        flush_max_polls: 10,
        ..WorkerConfig::default()
    };
    let acks = lab.queue.acks.as_ref().unwrap();
    lab.run_while(config, async {
        let mut waited = Duration::ZERO;
        while lab.readings.writes.load(Ordering::SeqCst) < 2 {
            assert!(
                waited < Duration::from_secs(30),
                "no second write while the first batch's acknowledgement is pending: {} writes, {} acks started",
                lab.readings.writes.load(Ordering::SeqCst),
                lab.queue.acks_started.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
        }
        assert_eq!(
            lab.queue.acks_started.load(Ordering::SeqCst),
            1,
            "one acknowledgement at a time, in order"
        );
        acks.add_permits(1_000);
        lab.until_recorded(CHAMBERS).await;
    })
    .await;

    assert_eq!(lab.entries().await.len(), CHAMBERS);
    let depth = lab.queue.depth().await.unwrap();
    assert_eq!(
        (depth.ready, depth.leased),
        (0, 0),
        "every job acknowledged once stored"
    );
}
