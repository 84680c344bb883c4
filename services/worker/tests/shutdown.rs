//! The worker's graceful shutdown (apalis's: the worker stops taking jobs and waits for those
//! in flight), on paused time against the memory adapters: a poll in flight is finished,
//! stored and acknowledged; a job still waiting for its slot is given back to the queue at once
//! and never sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::conformance::fixtures::{self, T0};
use chamberlain_domain::model::PollOutcome;
use chamberlain_domain::ports::{
    ChamberClient, ChamberRepository, FetchError, FetchRequest, FetchedResponse, LedgerQuery,
    OrganizationRepository, PollLedgerRepository, PollQueue, Repositories, SectionRepository,
};
use chamberlain_domain::usecases::PollHandler;
use chamberlain_fakes::{MemoryStore, TokioClock};
use chamberlain_memory::{MemoryEventBus, MemoryPollQueue};
use chamberlain_worker::{Worker, WorkerConfig};
use tokio::sync::{Notify, Semaphore};

/// Every request waits until `answer` has a permit for it.
struct HeldAnswers {
    requests: AtomicU64,
    started: Notify,
    answer: Semaphore,
}

#[async_trait]
impl ChamberClient for HeldAnswers {
    async fn fetch(&self, _request: &FetchRequest) -> Result<FetchedResponse, FetchError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.started.notify_one();
        let _permit = self.answer.acquire().await;
        Ok(FetchedResponse {
            status: 200,
            body: br#"{"t": 21}"#.to_vec(),
        })
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_polls_in_flight_and_gives_back_the_jobs_still_waiting() {
    let clock = TokioClock::at(T0);
    let store = Arc::new(MemoryStore::new());
    let org = fixtures::organization("shutdown");
    OrganizationRepository::create(&*store, &org).await.unwrap();
    let section = fixtures::section(org.id, "room");
    SectionRepository::create(&*store, &section).await.unwrap();
    let mut chambers = Vec::new();
    for label in ["now", "later"] {
        let chamber = fixtures::chamber(org.id, section.id, label, 3600);
        ChamberRepository::create(&*store, &chamber, &[fixtures::detector(&chamber, "t")])
            .await
            .unwrap();
        chambers.push(chamber);
    }
    let queue = Arc::new(MemoryPollQueue::new(clock.clone()));
    // One poll due in a second, one in ten minutes (enqueued far ahead of its slot).
    let now = fixtures::poll_job(
        org.id,
        chambers[0].id,
        T0 + Duration::from_secs(1),
        3600,
        T0,
    );
    let later = fixtures::poll_job(
        org.id,
        chambers[1].id,
        T0 + Duration::from_secs(600),
        3600,
        T0,
    );
    queue.enqueue(&[now, later]).await.unwrap();

    let client = Arc::new(HeldAnswers {
        requests: AtomicU64::new(0),
        started: Notify::new(),
        answer: Semaphore::new(0),
    });
    let handler = PollHandler::new(
        &Repositories::of(store.clone()),
        client.clone(),
        Arc::new(MemoryEventBus::new(64)),
        clock.clone(),
    );
    let worker = Worker::new(handler, queue.clone(), WorkerConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = client.started.notified();
    let working = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    started.await;
    // Both jobs are leased: one being fetched, one held for its slot.
    assert_eq!(queue.depth().await.unwrap().leased, 2);

    stop.send(()).unwrap();
    client.answer.add_permits(1);
    let report = working.await.unwrap();

    assert_eq!(report.polls_completed, 1, "{report:?}");
    assert_eq!(
        client.requests.load(Ordering::SeqCst),
        1,
        "the later poll was never sent"
    );
    let entries = PollLedgerRepository::list(&*store, org.id, &LedgerQuery::all(chambers[0].id))
        .await
        .unwrap()
        .items;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].outcome, PollOutcome::Ok);
    // The poll in flight was acknowledged; the waiting one is back in the queue, ready for
    // another worker now rather than after its visibility timeout.
    let depth = queue.depth().await.unwrap();
    assert_eq!((depth.ready, depth.leased), (1, 0), "{depth:?}");
    let leased = queue
        .lease(10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job.poll.chamber_id, chambers[1].id);
}
