//! The distributed poll pipeline on real services: the scheduler and a worker (in this process,
//! through their libraries), PostgreSQL, Redis, the HTTP client and simulated chambers.

use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_redis::RedisPollQueue;
use chamberlain_redis::testing::TestPrefix;
use chamberlain_simulator::{Simulator, SimulatorConfig};
use tokio::sync::oneshot;

use crate::support::{self, check_every_slot_once, now};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_chambers_at_one_second_for_twenty_seconds_every_slot_once() {
    let sim = Simulator::start(
        SimulatorConfig::builder()
            .chambers(200)
            .detectors(2)
            .interval(Duration::from_secs(1))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let fleet = support::fleet(&sim, 200).await;
    let prefix = TestPrefix::new();
    let queue = Arc::new(RedisPollQueue::connect(&prefix.config).await.unwrap());
    let scheduler = support::scheduler(&fleet, &prefix, "scheduler-test").await;
    let worker = support::worker(&fleet, &prefix).await;

    let started = now();
    let (stop_scheduler, scheduler_stopped) = oneshot::channel::<()>();
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let scheduler_task = tokio::spawn(scheduler.run(async {
        let _ = scheduler_stopped.await;
    }));
    let worker_task = tokio::spawn(worker.run(async {
        let _ = worker_stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(20)).await; // the run itself: twenty seconds of polling
    let _ = stop_scheduler.send(());
    scheduler_task.await.unwrap();
    let stopped = now();
    // Let the worker finish what was enqueued (the queue drains), then stop it.
    support::drained(&queue).await;
    let _ = stop_worker.send(());
    let report = worker_task.await.unwrap();
    assert_eq!(report.failed_writes, 0);

    // Every slot from the first full second after the start to the last before the stop has
    // exactly one ledger entry; every ok poll has its two readings, once.
    let from = Timestamp::from_unix_millis(started.as_unix_millis() + 1000);
    let to = Timestamp::from_unix_millis(stopped.as_unix_millis() - 1000);
    let outcomes = check_every_slot_once(&fleet, from, to).await;
    let total: usize = outcomes.values().sum();
    assert!(
        total >= 200 * 17,
        "about 18 slots per chamber were checked: {outcomes:?}"
    );
    assert_eq!(
        outcomes.get("ok"),
        Some(&total),
        "a healthy fleet: every poll ok ({outcomes:?})"
    );
    let seen = sim.shutdown().await;
    assert_eq!(
        seen.duplicates.attempt_one, 0,
        "the simulator saw no poll twice"
    );
    // Polls are enqueued ahead of their slot (`enqueue_ahead`, 200 ms); the worker holds each
    // until its slot, so none reaches the chamber early.
    assert!(
        seen.lateness_ms.samples >= 200 * 17,
        "{:?}",
        seen.lateness_ms
    );
    assert_eq!(
        seen.lateness_ms.early, 0,
        "no request before its slot: {:?}",
        seen.lateness_ms
    );
}
