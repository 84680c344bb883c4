//! The per-poll bound: a poll may run for as long as the worker's visibility timeout (the
//! chamber's own timeout ends its request; a chamber's timeout may be as long as its interval),
//! and a poll still running after it is abandoned, its job left to be delivered again. On paused
//! time against the memory adapters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::conformance::fixtures::{self, T0};
use chamberlain_domain::model::{Chamber, OrganizationId, PollOutcome};
use chamberlain_domain::ports::{
    ChamberClient, ChamberRepository, FetchError, FetchRequest, FetchedResponse, LedgerQuery,
    OrganizationRepository, PollLedgerRepository, PollQueue, Repositories, SectionRepository,
};
use chamberlain_domain::usecases::PollHandler;
use chamberlain_fakes::{MemoryStore, TokioClock};
use chamberlain_memory::{MemoryEventBus, MemoryPollQueue};
use chamberlain_worker::{Worker, WorkerConfig, WorkerReport};
use tokio::sync::Notify;

/// A slow chamber: every answer takes `answer_after`.
struct SlowChamber {
    answer_after: Duration,
    requests: AtomicU64,
    started: Notify,
}

#[async_trait]
impl ChamberClient for SlowChamber {
    async fn fetch(&self, _request: &FetchRequest) -> Result<FetchedResponse, FetchError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.started.notify_one();
        tokio::time::sleep(self.answer_after).await;
        Ok(FetchedResponse {
            status: 200,
            body: br#"{"t": 21}"#.to_vec(),
        })
    }
}

struct Lab {
    store: Arc<MemoryStore>,
    org: OrganizationId,
    chamber: Chamber,
    queue: Arc<MemoryPollQueue>,
    client: Arc<SlowChamber>,
    handler: PollHandler,
}

/// One chamber polled hourly, whose answer takes 45 s, and its poll due in a second.
async fn lab() -> Lab {
    let clock = TokioClock::at(T0);
    let store = Arc::new(MemoryStore::new());
    let org = fixtures::organization("slow");
    OrganizationRepository::create(&*store, &org).await.unwrap();
    let section = fixtures::section(org.id, "room");
    SectionRepository::create(&*store, &section).await.unwrap();
    let chamber = fixtures::chamber(org.id, section.id, "slow", 3600);
    ChamberRepository::create(&*store, &chamber, &[fixtures::detector(&chamber, "t")])
        .await
        .unwrap();
    let queue = Arc::new(MemoryPollQueue::new(clock.clone()));
    let job = fixtures::poll_job(org.id, chamber.id, T0 + Duration::from_secs(1), 3600, T0);
    queue.enqueue(&[job]).await.unwrap();
    let client = Arc::new(SlowChamber {
        answer_after: Duration::from_secs(45),
        requests: AtomicU64::new(0),
        started: Notify::new(),
    });
    let handler = PollHandler::new(
        &Repositories::of(store.clone()),
        client.clone(),
        Arc::new(MemoryEventBus::new(64)),
        clock,
    );
    Lab {
        store,
        org: org.id,
        chamber,
        queue,
        client,
        handler,
    }
}

/// Runs a worker until its first request has begun, then stops it; it may finish what is in
/// flight for up to two minutes.
async fn run_through_first_request(lab: &Lab, visibility: Duration) -> WorkerReport {
    let worker = Worker::new(
        lab.handler.clone(),
        lab.queue.clone(),
        WorkerConfig {
            visibility,
            drain_timeout: Duration::from_secs(120),
            ..WorkerConfig::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = lab.client.started.notified();
    let working = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    started.await;
    stop.send(()).unwrap();
    working.await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_poll_slower_than_30_s_completes_within_the_visibility_timeout() {
    let lab = lab().await;
    let report = run_through_first_request(&lab, Duration::from_secs(60)).await;

    assert_eq!(report.polls_completed, 1, "{report:?}");
    assert_eq!(lab.client.requests.load(Ordering::SeqCst), 1);
    let entries =
        PollLedgerRepository::list(&*lab.store, lab.org, &LedgerQuery::all(lab.chamber.id))
            .await
            .unwrap()
            .items;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].outcome, PollOutcome::Ok);
    let depth = lab.queue.depth().await.unwrap();
    assert_eq!(
        (depth.ready, depth.leased),
        (0, 0),
        "acknowledged: {depth:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_poll_still_running_at_the_visibility_timeout_is_abandoned_and_delivered_again() {
    let lab = lab().await;
    let report = run_through_first_request(&lab, Duration::from_secs(10)).await;

    assert_eq!(report.polls_completed, 0, "{report:?}");
    let entries =
        PollLedgerRepository::list(&*lab.store, lab.org, &LedgerQuery::all(lab.chamber.id))
            .await
            .unwrap()
            .items;
    assert!(entries.is_empty(), "nothing stored: {entries:?}");
    // Never acknowledged: once its lease runs out the job is another worker's.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let leased = lab
        .queue
        .lease(10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job.poll.chamber_id, lab.chamber.id);
}
