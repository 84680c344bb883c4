//! The Redis poll queue under the apalis worker (`Worker::run` builds one over
//! `PollQueueBackend`), against the shared test Redis under a key prefix of its own and the
//! memory store: a backlog far beyond what apalis-redis 1.0 survives drains with the worker
//! alive; a worker killed mid-job loses nothing; a stale receipt is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures;
use chamberlain_domain::model::{Chamber, OrganizationId, PollJob, PollOutcome};
use chamberlain_domain::ports::{
    ChamberClient, ChamberRepository, Clock, EnqueueReport, FetchError, FetchRequest,
    FetchedResponse, LeaseReceipt, LeasedJob, LedgerQuery, OrganizationRepository,
    PollLedgerRepository, PollQueue, QueueDepth, QueueError, Repositories, SectionRepository,
};
use chamberlain_domain::usecases::PollHandler;
use chamberlain_fakes::MemoryStore;
use chamberlain_memory::{MemoryEventBus, SystemClock};
use chamberlain_redis::RedisPollQueue;
use chamberlain_redis::testing::TestPrefix;
use chamberlain_worker::{Worker, WorkerConfig, WorkerReport};
use tokio::sync::{Notify, Semaphore};

/// Answers every chamber at once, counting requests.
#[derive(Default)]
struct AnswersAll {
    requests: AtomicU64,
}

#[async_trait]
impl ChamberClient for AnswersAll {
    async fn fetch(&self, _request: &FetchRequest) -> Result<FetchedResponse, FetchError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(FetchedResponse {
            status: 200,
            body: br#"{"t": 21}"#.to_vec(),
        })
    }
}

/// The first request takes until `answer_first` is released; every later one is answered at
/// once.
struct FirstRequestWaits {
    requests: AtomicU64,
    started: Notify,
    answer_first: Semaphore,
}

#[async_trait]
impl ChamberClient for FirstRequestWaits {
    async fn fetch(&self, _request: &FetchRequest) -> Result<FetchedResponse, FetchError> {
        if self.requests.fetch_add(1, Ordering::SeqCst) == 0 {
            self.started.notify_one();
            let _ = self.answer_first.acquire().await;
        }
        Ok(FetchedResponse {
            status: 200,
            body: br#"{"t": 21}"#.to_vec(),
        })
    }
}

/// A queue that counts what each ack removed: a stale receipt removes nothing.
struct CountingAcks {
    inner: Arc<dyn PollQueue>,
    acks: std::sync::Mutex<Vec<(usize, u64)>>,
    acked: Notify,
}

#[async_trait]
impl PollQueue for CountingAcks {
    async fn enqueue(&self, jobs: &[PollJob]) -> Result<EnqueueReport, QueueError> {
        self.inner.enqueue(jobs).await
    }
    async fn lease(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<LeasedJob>, QueueError> {
        self.inner.lease(max, visibility, wait).await
    }
    async fn ack(&self, receipts: &[LeaseReceipt]) -> Result<u64, QueueError> {
        let removed = self.inner.ack(receipts).await?;
        self.acks.lock().unwrap().push((receipts.len(), removed));
        self.acked.notify_waiters();
        Ok(removed)
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

struct Lab {
    store: Arc<MemoryStore>,
    org: OrganizationId,
    chambers: Vec<Chamber>,
}

/// `n` chambers of one detector polled hourly, so every slot of the last hour is still current.
async fn lab(n: usize) -> Lab {
    let store = Arc::new(MemoryStore::new());
    let org = fixtures::organization("backend");
    OrganizationRepository::create(&*store, &org).await.unwrap();
    let section = fixtures::section(org.id, "room");
    SectionRepository::create(&*store, &section).await.unwrap();
    let mut chambers = Vec::with_capacity(n);
    for i in 0..n {
        let chamber = fixtures::chamber(org.id, section.id, &format!("c{i}"), 3600);
        let detectors = [fixtures::detector(&chamber, "t")];
        ChamberRepository::create(&*store, &chamber, &detectors)
            .await
            .unwrap();
        chambers.push(chamber);
    }
    Lab {
        store,
        org: org.id,
        chambers,
    }
}

fn handler(lab: &Lab, client: Arc<dyn ChamberClient>) -> PollHandler {
    PollHandler::new(
        &Repositories::of(lab.store.clone()),
        client,
        Arc::new(MemoryEventBus::new(64)),
        Arc::new(SystemClock),
    )
}

/// Every chamber's slots `1..=per_chamber` seconds ago: all due at once.
fn due_jobs(lab: &Lab, per_chamber: u64) -> Vec<PollJob> {
    let now = SystemClock.now();
    let whole = Timestamp::from_unix_millis(now.as_unix_millis() / 1000 * 1000);
    lab.chambers
        .iter()
        .flat_map(|c| {
            (1..=per_chamber).map(move |k| {
                fixtures::poll_job(lab.org, c.id, whole - Duration::from_secs(k), 3600, now)
            })
        })
        .collect()
}

async fn wait_until_drained(queue: &dyn PollQueue, within: Duration) {
    tokio::time::timeout(within, async {
        loop {
            let depth = queue.depth().await.unwrap();
            if depth.ready + depth.leased + depth.delayed == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the queue drained within {within:?}"));
}

async fn stop(
    stop: tokio::sync::oneshot::Sender<()>,
    working: tokio::task::JoinHandle<WorkerReport>,
) -> WorkerReport {
    assert!(
        !working.is_finished(),
        "the worker was still running when told to stop"
    );
    stop.send(()).unwrap();
    working.await.unwrap()
}

fn run(
    worker: Worker,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<WorkerReport>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let working = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    (stop, working)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_due_jobs_drain_with_the_worker_alive() {
    let prefix = TestPrefix::new();
    let queue: Arc<dyn PollQueue> =
        Arc::new(RedisPollQueue::connect(&prefix.config).await.unwrap());
    let lab = lab(500).await;
    let jobs = due_jobs(&lab, 100);
    assert_eq!(jobs.len(), 50_000);
    for chunk in jobs.chunks(5_000) {
        assert_eq!(queue.enqueue(chunk).await.unwrap().new, chunk.len() as u64);
    }
    let client = Arc::new(AnswersAll::default());
    let (stop_worker, working) = run(Worker::new(
        handler(&lab, client.clone()),
        queue.clone(),
        WorkerConfig::default(),
    ));
    wait_until_drained(&*queue, Duration::from_secs(300)).await;
    let report = stop(stop_worker, working).await;

    assert_eq!(report.polls_completed, 50_000, "{report:?}");
    assert_eq!(report.failed_writes, 0);
    assert_eq!(
        client.requests.load(Ordering::Relaxed),
        50_000,
        "each poll fetched once"
    );
    for chamber in lab.chambers.iter().step_by(50) {
        let entries =
            PollLedgerRepository::list(&*lab.store, lab.org, &LedgerQuery::all(chamber.id))
                .await
                .unwrap()
                .items;
        assert_eq!(entries.len(), 100, "{}", chamber.id);
        assert!(entries.iter().all(|e| e.outcome == PollOutcome::Ok));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_nothing() {
    let prefix = TestPrefix::new();
    let queue: Arc<dyn PollQueue> =
        Arc::new(RedisPollQueue::connect(&prefix.config).await.unwrap());
    let lab = lab(20).await;
    let jobs = due_jobs(&lab, 5);
    queue.enqueue(&jobs).await.unwrap();
    let config = WorkerConfig {
        visibility: Duration::from_secs(1),
        ..WorkerConfig::default()
    };

    // The first worker takes jobs and is killed while its first request is out: nothing it
    // leased is acknowledged.
    let stuck = Arc::new(FirstRequestWaits {
        requests: AtomicU64::new(0),
        started: Notify::new(),
        answer_first: Semaphore::new(0),
    });
    let started = stuck.started.notified();
    let (_never, killed) = run(Worker::new(
        handler(&lab, stuck.clone()),
        queue.clone(),
        WorkerConfig {
            concurrency: 1,
            ..config.clone()
        },
    ));
    started.await;
    killed.abort();
    assert!(killed.await.unwrap_err().is_cancelled());

    // A second worker takes over every job once the first one's leases expire.
    let client = Arc::new(AnswersAll::default());
    let (stop_worker, working) = run(Worker::new(
        handler(&lab, client.clone()),
        queue.clone(),
        config,
    ));
    wait_until_drained(&*queue, Duration::from_secs(60)).await;
    let report = stop(stop_worker, working).await;
    let mut stored = 0;
    for chamber in &lab.chambers {
        let entries =
            PollLedgerRepository::list(&*lab.store, lab.org, &LedgerQuery::all(chamber.id))
                .await
                .unwrap()
                .items;
        assert_eq!(entries.len(), 5, "every slot of {} stored once", chamber.id);
        stored += entries.len() as u64;
    }
    assert_eq!(stored, jobs.len() as u64);
    assert!(report.polls_completed >= 1, "{report:?}");
    assert!(
        stuck.requests.load(Ordering::SeqCst) >= 1,
        "the killed worker had a request out"
    );
    stuck.answer_first.add_permits(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_receipt_is_refused() {
    let prefix = TestPrefix::new();
    let queue = Arc::new(CountingAcks {
        inner: Arc::new(RedisPollQueue::connect(&prefix.config).await.unwrap()),
        acks: std::sync::Mutex::default(),
        acked: Notify::new(),
    });
    let lab = lab(1).await;
    let jobs = due_jobs(&lab, 1);
    queue.enqueue(&jobs).await.unwrap();
    // The first delivery's request outlives its lease: the job is delivered again (to the
    // same worker), stored and acknowledged; then the first delivery ends and its ack, with a
    // receipt gone stale, removes nothing.
    let client = Arc::new(FirstRequestWaits {
        requests: AtomicU64::new(0),
        started: Notify::new(),
        answer_first: Semaphore::new(0),
    });
    let started = client.started.notified();
    let (stop_worker, working) = run(Worker::new(
        handler(&lab, client.clone()),
        queue.clone(),
        WorkerConfig {
            visibility: Duration::from_millis(500),
            lease_wait: Duration::from_millis(100),
            poll_timeout: Some(Duration::from_secs(60)),
            ..WorkerConfig::default()
        },
    ));
    started.await;
    let first_ack = queue.acked.notified();
    tokio::time::timeout(Duration::from_secs(30), first_ack)
        .await
        .expect("the second delivery was acknowledged");
    assert_eq!(*queue.acks.lock().unwrap(), vec![(1, 1)]);
    let stale_ack = queue.acked.notified();
    client.answer_first.add_permits(1);
    tokio::time::timeout(Duration::from_secs(30), stale_ack)
        .await
        .expect("the first delivery ended");
    let report = stop(stop_worker, working).await;

    assert_eq!(
        *queue.acks.lock().unwrap(),
        vec![(1, 1), (1, 0)],
        "the stale receipt removed nothing"
    );
    assert_eq!(client.requests.load(Ordering::SeqCst), 2);
    assert_eq!(report.polls_completed, 2, "{report:?}");
    let entries =
        PollLedgerRepository::list(&*lab.store, lab.org, &LedgerQuery::all(lab.chambers[0].id))
            .await
            .unwrap()
            .items;
    assert_eq!(entries.len(), 1, "one ledger entry: {entries:?}");
    let depth = queue.depth().await.unwrap();
    assert_eq!(depth.ready + depth.leased + depth.delayed, 0);
}
