//! The Redis poll queue under the conditions of issue 4: duplicates, a large backlog, idle
//! workers, a killed worker, a restarted worker. (Whole-server pauses and restarts are in
//! `server_restart.rs`.)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::poll_job;
use chamberlain_domain::model::{ChamberId, OrganizationId, PollJob};
use chamberlain_domain::ports::PollQueue;
use chamberlain_redis::RedisPollQueue;
use chamberlain_redis::testing::TestPrefix;

fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    Timestamp::from_unix_millis(ms as i64)
}

fn jobs(n: usize) -> Vec<PollJob> {
    let org = OrganizationId::random();
    let t = now();
    (0..n)
        .map(|i| {
            poll_job(
                org,
                ChamberId::random(),
                Timestamp::from_unix_millis(t.as_unix_millis() - i as i64),
                1,
                t,
            )
        })
        .collect()
}

#[tokio::test]
async fn the_same_poll_enqueued_three_times_is_one_job() {
    let prefix = TestPrefix::new();
    let q = RedisPollQueue::connect(&prefix.config).await.unwrap();
    let job = jobs(1).remove(0);
    let mut new = 0;
    for _ in 0..3 {
        new += q.enqueue(std::slice::from_ref(&job)).await.unwrap().new;
    }
    assert_eq!(new, 1);
    assert_eq!(
        q.lease(10, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        q.lease(10, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_due_polls_drain_without_any_worker_failing() {
    let prefix = TestPrefix::new();
    let q = RedisPollQueue::connect(&prefix.config).await.unwrap();
    let backlog = jobs(50_000);
    for chunk in backlog.chunks(5_000) {
        assert_eq!(q.enqueue(chunk).await.unwrap().new, chunk.len() as u64);
    }
    let mut workers = Vec::new();
    for _ in 0..2 {
        let q = RedisPollQueue::connect(&prefix.config).await.unwrap();
        workers.push(tokio::spawn(async move {
            let mut done = 0u64;
            loop {
                // Every call must succeed: an error here is a worker dying.
                let leased = q
                    .lease(500, Duration::from_secs(60), Duration::ZERO)
                    .await
                    .expect("lease");
                if leased.is_empty() {
                    return done;
                }
                let receipts: Vec<_> = leased.iter().map(|l| l.receipt.clone()).collect();
                done += q.ack(&receipts).await.expect("ack");
            }
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert_eq!(total, 50_000);
    let depth = q.depth().await.unwrap();
    assert_eq!((depth.ready, depth.leased), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_starts_a_new_poll_within_two_seconds() {
    let prefix = TestPrefix::new();
    let worker = RedisPollQueue::connect(&prefix.config).await.unwrap();
    let producer = RedisPollQueue::connect(&prefix.config).await.unwrap();
    let waiting = tokio::spawn(async move {
        let leased = worker
            .lease(1, Duration::from_secs(30), Duration::from_secs(20))
            .await
            .unwrap();
        (leased, Instant::now())
    });
    // Enqueue only once the worker is blocked in its read.
    let client = redis::Client::open(chamberlain_redis::testing::server_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query_async(&mut conn)
            .await
            .unwrap();
        if info
            .lines()
            .any(|l| l.starts_with("blocked_clients:") && l != "blocked_clients:0")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never blocked waiting for jobs"
        );
        tokio::task::yield_now().await;
    }
    let job = jobs(1).remove(0);
    let enqueued_at = Instant::now();
    producer.enqueue(std::slice::from_ref(&job)).await.unwrap();
    let (leased, picked_at) = waiting.await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job.poll, job.poll);
    let pickup = picked_at.duration_since(enqueued_at);
    assert!(
        pickup < Duration::from_secs(2),
        "picked up after {pickup:?}"
    );
}

/// Run as a child process by `a_killed_workers_jobs_are_taken_over_within_ten_seconds`: leases
/// jobs, says so, and waits to be killed.
#[tokio::test]
#[ignore = "a helper process, started by another test"]
async fn worker_process() {
    let Ok(prefix) = std::env::var("CHAMBERLAIN_TEST_WORKER_PREFIX") else {
        return;
    };
    let config =
        chamberlain_redis::RedisConfig::from_url(&chamberlain_redis::testing::server_url())
            .unwrap()
            .with_key_prefix(&prefix)
            .unwrap();
    let q = RedisPollQueue::connect(&config).await.unwrap();
    let leased = q
        .lease(10, Duration::from_secs(3), Duration::from_secs(10))
        .await
        .unwrap();
    #[allow(clippy::print_stdout, reason = "the parent test reads this line")]
    {
        println!("LEASED {}", leased.len());
    }
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_jobs_are_taken_over_within_ten_seconds() {
    let prefix = TestPrefix::new();
    let q = RedisPollQueue::connect(&prefix.config).await.unwrap();
    q.enqueue(&jobs(10)).await.unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["worker_process", "--exact", "--ignored", "--nocapture"])
        .env("CHAMBERLAIN_TEST_WORKER_PREFIX", &prefix.config.key_prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("LEASED"))
    })
    .await
    .unwrap();
    assert_eq!(line.as_deref(), Some("LEASED 10"));
    child.kill().unwrap(); // SIGKILL: no cleanup, its leases stay pending
    child.wait().unwrap();
    let killed_at = Instant::now();
    let survivor = RedisPollQueue::connect(&prefix.config).await.unwrap();
    let mut taken = Vec::new();
    while taken.len() < 10 {
        let left = Duration::from_secs(10).saturating_sub(killed_at.elapsed());
        assert!(
            !left.is_zero(),
            "only {} of 10 jobs taken over within 10 s",
            taken.len()
        );
        // Workers share one visibility setting (3 s here, as the killed one used).
        taken.extend(
            survivor
                .lease(10, Duration::from_secs(3), left)
                .await
                .unwrap(),
        );
    }
    assert!(
        taken.iter().all(|l| l.job.meta.attempt == 2),
        "a takeover is the second attempt"
    );
    let receipts: Vec<_> = taken.iter().map(|l| l.receipt.clone()).collect();
    assert_eq!(survivor.ack(&receipts).await.unwrap(), 10);
}

/// A dead worker's jobs are found however many older leases, held and extended by a live
/// worker, come before them in the pending list. (`XAUTOCLAIM` from the start of the list, as
/// the lease did before, looks at ten times the lease size at most, all of them held here, and
/// never reached the orphans while those leases were kept.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_jobs_behind_thousands_of_held_leases_are_taken_over() {
    let prefix = TestPrefix::new();
    let visibility = Duration::from_secs(1);
    let live = RedisPollQueue::connect(&prefix.config).await.unwrap();
    live.enqueue(&jobs(3000)).await.unwrap();
    let mut held = Vec::new();
    while held.len() < 3000 {
        let more = live
            .lease(3000 - held.len(), visibility, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(!more.is_empty(), "the 3,000 jobs enqueued are leased");
        held.extend(more);
    }
    let receipts: Vec<_> = held.iter().map(|l| l.receipt.clone()).collect();
    let dead = RedisPollQueue::connect(&prefix.config).await.unwrap();
    dead.enqueue(&jobs(5)).await.unwrap();
    let orphaned = dead
        .lease(5, visibility, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(orphaned.len(), 5);
    drop(dead); // it never acks: its leases expire
    let survivor = RedisPollQueue::connect(&prefix.config).await.unwrap();
    let started = Instant::now();
    let mut taken = Vec::new();
    while taken.len() < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "only {} of the 5 orphaned jobs taken over within 10 s",
            taken.len()
        );
        // The live worker keeps every one of its leases.
        assert_eq!(live.extend(&receipts, visibility).await.unwrap(), 3000);
        taken.extend(
            survivor
                .lease(100, visibility, Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    let polls = |leased: &[chamberlain_domain::ports::LeasedJob]| {
        let mut polls: Vec<_> = leased.iter().map(|l| l.job.poll).collect();
        polls.sort();
        polls
    };
    assert_eq!(
        polls(&taken),
        polls(&orphaned),
        "the orphans, and only them"
    );
    assert!(taken.iter().all(|l| l.job.meta.attempt == 2));
    assert_eq!(live.ack(&receipts).await.unwrap(), 3000);
}

#[tokio::test]
async fn a_worker_restarted_at_once_starts_cleanly() {
    let prefix = TestPrefix::new();
    let first = RedisPollQueue::connect(&prefix.config).await.unwrap();
    first.enqueue(&jobs(2)).await.unwrap();
    assert_eq!(
        first
            .lease(1, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
    let name = first.consumer().to_owned();
    drop(first);
    let again = RedisPollQueue::connect(&prefix.config).await.unwrap();
    assert_ne!(
        again.consumer(),
        name,
        "each start is a new consumer: no name clash"
    );
    let leased = again
        .lease(10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1, "the job the first worker did not lease");
    let _ = Arc::new(again);
}
