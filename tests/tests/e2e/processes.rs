//! The pipeline when processes die or chambers misbehave: a worker killed with SIGKILL, the
//! leading scheduler killed, and chambers that hang, fail, answer garbage or too much.

use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{HealthPolicy, HealthState, PollOutcome};
use chamberlain_domain::ports::{ChamberHealthRepository, ChamberRepository};
use chamberlain_domain::usecases::ChamberPatch;
use chamberlain_redis::RedisPollQueue;
use chamberlain_redis::testing::TestPrefix;
use chamberlain_simulator::{ChamberBehaviour, CorruptKind, Format, Simulator, SimulatorConfig};
use tokio::sync::oneshot;

use crate::support::{self, check_every_slot_once, drained, now, spawn, terminate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_leaves_every_slot_with_one_ledger_entry() {
    let sim = Simulator::start(
        SimulatorConfig::builder()
            .chambers(50)
            .detectors(2)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let fleet = support::fleet(&sim, 50).await;
    let prefix = TestPrefix::new();
    let queue = Arc::new(RedisPollQueue::connect(&prefix.config).await.unwrap());
    let scheduler = support::scheduler(&fleet, &prefix, "scheduler-a").await;
    let (stop, stopped) = oneshot::channel::<()>();
    let started = now();
    let scheduler = tokio::spawn(scheduler.run(async {
        let _ = stopped.await;
    }));
    let visibility = [("CHAMBERLAIN_WORKER_VISIBILITY_SECS", "3")];
    let mut first = spawn("worker", &fleet, &prefix, &visibility);
    tokio::time::sleep(Duration::from_secs(6)).await; // the first worker's run
    first.kill().unwrap(); // SIGKILL: leases and buffered results are lost with it
    first.wait().unwrap();
    let mut second = spawn("worker", &fleet, &prefix, &visibility);
    tokio::time::sleep(Duration::from_secs(8)).await; // the second worker's run
    let _ = stop.send(());
    scheduler.await.unwrap();
    let ended = now();
    drained(&queue).await;
    terminate(&mut second);
    let outcomes = check_every_slot_once(
        &fleet,
        Timestamp::from_unix_millis(started.as_unix_millis() + 1000),
        Timestamp::from_unix_millis(ended.as_unix_millis() - 1000),
    )
    .await;
    assert!(
        outcomes.keys().all(|k| ["ok", "expired"].contains(k)),
        "{outcomes:?}"
    );
    assert!(outcomes["ok"] > 50 * 8, "{outcomes:?}");
    assert_eq!(sim.shutdown().await.duplicates.attempt_one, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_scheduler_takes_over_within_two_lease_periods() {
    let sim = Simulator::start(
        SimulatorConfig::builder()
            .chambers(50)
            .detectors(2)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let fleet = support::fleet(&sim, 50).await;
    let prefix = TestPrefix::new();
    let queue = RedisPollQueue::connect(&prefix.config).await.unwrap();
    let resync = [("CHAMBERLAIN_SCHEDULER_RESYNC_SECS", "5")];
    let mut schedulers = vec![
        spawn("scheduler", &fleet, &prefix, &resync),
        spawn("scheduler", &fleet, &prefix, &resync),
    ];
    let worker = support::worker(&fleet, &prefix).await;
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async {
        let _ = worker_stopped.await;
    }));
    // The first leader owes slots from its election on.
    let client = redis::Client::open(chamberlain_redis::testing::server_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let lease_key = format!("{}:scheduler:leader", prefix.config.key_prefix);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let holder: String = loop {
        let holder: Option<String> = redis::cmd("GET")
            .arg(&lease_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(h) = holder {
            break h;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no scheduler took the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // polling the condition
    };
    let started = now();
    tokio::time::sleep(Duration::from_secs(6)).await; // both schedulers running, one leading
    // Kill whichever holds the lease.
    let pid: u32 = holder
        .rsplit_once('|')
        .unwrap()
        .0
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let leader = schedulers
        .iter()
        .position(|c| c.id() == pid)
        .expect("the lease holder is one of ours");
    let mut killed = schedulers.remove(leader);
    killed.kill().unwrap();
    killed.wait().unwrap();
    let killed_at = now();
    tokio::time::sleep(Duration::from_secs(14)).await; // two lease periods (5 s each) and more
    terminate(&mut schedulers[0]);
    let ended = now();
    drained(&queue).await;
    let _ = stop_worker.send(());
    worker.await.unwrap();

    let outcomes = check_every_slot_once(
        &fleet,
        Timestamp::from_unix_millis(started.as_unix_millis() + 2000),
        Timestamp::from_unix_millis(ended.as_unix_millis() - 1000),
    )
    .await;
    assert!(
        outcomes.contains_key("missed"),
        "the slots between leaders follow the catch-up policy: {outcomes:?}"
    );
    // Polling resumed within two lease periods of the kill.
    let resumed_by = Timestamp::from_unix_millis(killed_at.as_unix_millis() + 10_000 + 1_000);
    for c in &fleet.chambers {
        let after = fleet.ledger(c, killed_at, resumed_by).await;
        assert!(
            after.iter().any(|e| e.outcome == PollOutcome::Ok),
            "chamber {} not polled again within two lease periods",
            c.name
        );
    }
    assert_eq!(
        sim.shutdown().await.duplicates.attempt_one,
        0,
        "no slot was polled twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_chambers_get_the_right_outcomes_and_health_while_others_stay_on_time() {
    let sim = Simulator::start(
        SimulatorConfig::builder()
            .chambers(12)
            .detectors(2)
            .behaviour(0, ChamberBehaviour::Hang)
            .behaviour(1, ChamberBehaviour::ServerError)
            .behaviour(2, ChamberBehaviour::Corrupt(CorruptKind::Garbage))
            .behaviour(
                3,
                ChamberBehaviour::Oversized {
                    bytes: 3 * 1024 * 1024,
                },
            )
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let fleet = support::fleet(&sim, 12).await;
    // A quick health policy for the failing chamber: degraded after 2 failures, down after 3.
    let mut failing = fleet.chambers[1].clone();
    failing.health_policy = HealthPolicy::new(2, 3, Duration::ZERO).unwrap();
    ChamberRepository::update(&*fleet.store, &failing)
        .await
        .unwrap();
    let prefix = TestPrefix::new();
    let queue = Arc::new(RedisPollQueue::connect(&prefix.config).await.unwrap());
    let scheduler = support::scheduler(&fleet, &prefix, "scheduler-h").await;
    let worker = support::worker(&fleet, &prefix).await;
    let (stop_s, s_stopped) = oneshot::channel::<()>();
    let (stop_w, w_stopped) = oneshot::channel::<()>();
    let started = now();
    let scheduler = tokio::spawn(scheduler.run(async {
        let _ = s_stopped.await;
    }));
    let worker = tokio::spawn(worker.run(async {
        let _ = w_stopped.await;
    }));

    let health = |id| {
        let store = fleet.store.clone();
        async move {
            ChamberHealthRepository::get(&*store, id)
                .await
                .unwrap()
                .map(|h| h.state)
        }
    };
    let wait_for = |state: HealthState| {
        let health = &health;
        let id = failing.id;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while health(id).await != Some(state) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "chamber 1 never became {state}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await; // polling the condition
            }
        }
    };
    wait_for(HealthState::Down).await;
    // The operator points it at a working chamber (through a gateway, whose change reaches the
    // worker on the change feed): it comes back up.
    let patch = ChamberPatch {
        url: Some(sim.chamber_url(11, Format::Json)),
        ..Default::default()
    };
    fleet
        .admin_on(&prefix)
        .await
        .update_chamber(&fleet.actor, failing.id, patch)
        .await
        .unwrap();
    wait_for(HealthState::Up).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a few more healthy slots of the run
    let _ = stop_s.send(());
    scheduler.await.unwrap();
    let ended = now();
    drained(&queue).await;
    let _ = stop_w.send(());
    worker.await.unwrap();

    let from = Timestamp::from_unix_millis(started.as_unix_millis() + 1000);
    let to = Timestamp::from_unix_millis(ended.as_unix_millis() - 1000);
    let codes = |i: usize| {
        let (fleet, c) = (&fleet, fleet.chambers[i].clone());
        async move {
            fleet
                .ledger(&c, from, to)
                .await
                .into_iter()
                .map(|e| e.outcome.code())
                .collect::<Vec<_>>()
        }
    };
    assert!(
        codes(0).await.iter().all(|c| *c == "timeout"),
        "a hanging chamber times out: {:?}",
        codes(0).await
    );
    let one = codes(1).await;
    assert!(
        one.contains(&"http_status") && one.last() == Some(&"ok"),
        "500s, then ok after the fix: {one:?}"
    );
    assert!(
        codes(2).await.iter().all(|c| *c == "malformed"),
        "garbage is malformed"
    );
    assert!(
        codes(3).await.iter().all(|c| *c == "too_large"),
        "3 MiB is over the 1 MiB cap"
    );
    // The healthy chambers: every poll ok and on time (requested before the next slot).
    for c in &fleet.chambers[4..] {
        let ledger = fleet.ledger(c, from, to).await;
        assert!(!ledger.is_empty());
        for e in &ledger {
            assert_eq!(e.outcome, PollOutcome::Ok, "chamber {}", c.name);
            assert!(
                e.lateness < Duration::from_secs(1),
                "chamber {} late by {:?}",
                c.name,
                e.lateness
            );
        }
    }
}
