//! The distributed poll pipeline on real services: the scheduler and a worker (in this process,
//! through their libraries), PostgreSQL, Redis, the HTTP client and simulated chambers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{Chamber, PollOutcome, Role};
use chamberlain_domain::ports::{
    Clock, LedgerQuery, PollLedgerRepository, PollQueue, ReadingQuery, ReadingRepository,
    ReadingScope,
};
use chamberlain_domain::schedule::SlotGrid;
use chamberlain_domain::usecases::{
    Actor, AdminSettings, ChamberAdmin, NewChamber, NewDetector, NewSection, NewUser, PollHandler,
    PollSettings, UserAdmin,
};
use chamberlain_memory::{MemoryChamberChanges, MemoryEventBus, SystemClock};
use chamberlain_postgres::PgStore;
use chamberlain_redis::testing::TestPrefix;
use chamberlain_redis::{RedisLeaderLease, RedisPollQueue, RedisScheduleCheckpoint};
use chamberlain_simulator::{Format, Simulator, SimulatorConfig};
use tokio::sync::oneshot;

/// Registers `n` JSON chambers of the simulator at 1 s, through the domain's use cases.
async fn register(
    store: &Arc<PgStore>,
    sim: &chamberlain_simulator::SimulatorHandle,
    n: u32,
) -> (Actor, Vec<Chamber>) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let users = UserAdmin {
        organizations: store.clone(),
        users: store.clone(),
        clock: clock.clone(),
    };
    let (org, admin) = users
        .create_organization(
            "Lab",
            NewUser {
                email: "a@lab.example".into(),
                display_name: "A".into(),
                role: "admin".into(),
                password_hash: None,
            },
        )
        .await
        .unwrap();
    let actor = Actor {
        user_id: admin.id,
        organization_id: org.id,
        role: Role::Admin,
    };
    let admin = ChamberAdmin {
        sections: store.clone(),
        chambers: store.clone(),
        detectors: store.clone(),
        batches: store.clone(),
        changes: Arc::new(MemoryChamberChanges::default()),
        events: Arc::new(MemoryEventBus::default()),
        clock,
        settings: AdminSettings::default(),
    };
    let section = admin
        .create_section(
            &actor,
            NewSection {
                name: "room".into(),
                description: String::new(),
            },
        )
        .await
        .unwrap();
    let mut chambers = Vec::new();
    for i in 0..n {
        let created = admin
            .create_chamber(
                &actor,
                NewChamber {
                    section_id: section.id,
                    name: format!("c{i:04}"),
                    url: sim.chamber_url(i, Format::Json),
                    format: "json".into(),
                    interval: Duration::from_secs(1),
                    timeout: None,
                    detectors: (0..2)
                        .map(|j| NewDetector {
                            name: format!("d{j}"),
                            key: format!("/detectors/{j}/value"),
                            ..Default::default()
                        })
                        .collect(),
                },
            )
            .await
            .unwrap();
        chambers.push(created.chamber);
    }
    (actor, chambers)
}

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
    let (store, _db) = chamberlain_postgres::testing::fresh_store().await;
    let store = Arc::new(store);
    let prefix = TestPrefix::new();
    let (actor, chambers) = register(&store, &sim, 200).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    let queue = Arc::new(RedisPollQueue::connect(&prefix.config).await.unwrap());
    let mut config = chamberlain_scheduler::SchedulerConfig::new("scheduler-test");
    config.resync_every = Duration::from_secs(5);
    let scheduler = chamberlain_scheduler::Scheduler {
        chambers: store.clone(),
        ledger: store.clone(),
        queue: queue.clone(),
        lease: Arc::new(
            RedisLeaderLease::connect(&prefix.config, clock.clone())
                .await
                .unwrap(),
        ),
        checkpoint: Arc::new(
            RedisScheduleCheckpoint::connect(&prefix.config)
                .await
                .unwrap(),
        ),
        changes: Arc::new(MemoryChamberChanges::default()),
        clock: clock.clone(),
        config,
    };
    let http = chamberlain_http::HttpClientConfig::default()
        .with_egress_allow("127.0.0.2/32")
        .unwrap();
    let worker_queue = Arc::new(RedisPollQueue::connect(&prefix.config).await.unwrap());
    let worker = chamberlain_worker::Worker {
        handler: PollHandler {
            chambers: store.clone(),
            batches: store.clone(),
            readings: store.clone(),
            health: store.clone(),
            queue: worker_queue.clone(),
            client: Arc::new(chamberlain_http::HttpChamberClient::new(&http)),
            events: Arc::new(MemoryEventBus::default()),
            clock: clock.clone(),
            settings: PollSettings::default(),
        },
        queue: worker_queue,
        config: chamberlain_worker::WorkerConfig::default(),
    };

    let started = clock.now();
    let (stop_scheduler, scheduler_stopped) = oneshot::channel::<()>();
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let scheduler_task = tokio::spawn(scheduler.run(async {
        let _ = scheduler_stopped.await;
    }));
    let worker_task = tokio::spawn(worker.run(async {
        let _ = worker_stopped.await;
    }));
    // The run itself: twenty seconds of polling.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let _ = stop_scheduler.send(());
    scheduler_task.await.unwrap();
    let stopped = clock.now();
    // Let the worker finish what was enqueued (the queue drains), then stop it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let depth = queue.depth().await.unwrap();
        if depth.ready == 0 && depth.leased == 0 && depth.delayed == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue did not drain: {depth:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // polling the condition, with a deadline
    }
    let _ = stop_worker.send(());
    let report = worker_task.await.unwrap();
    assert_eq!(report.failed_writes, 0);

    // Every slot from the first full second after the start to the last before the stop has
    // exactly one ledger entry; every ok poll has its two readings, once.
    let from = Timestamp::from_unix_millis(started.as_unix_millis() + 1000);
    let to = Timestamp::from_unix_millis(stopped.as_unix_millis() - 1000);
    let mut outcomes: HashMap<&'static str, usize> = HashMap::new();
    for c in &chambers {
        let grid = SlotGrid::new(c.id, c.interval);
        let expected: Vec<Timestamp> =
            std::iter::successors(Some(grid.at_or_after(from)), |s| Some(grid.after(*s)))
                .take_while(|s| *s <= to)
                .collect();
        let ledger = store
            .list(
                actor.organization_id,
                &LedgerQuery {
                    from,
                    to: Timestamp::from_unix_millis(to.as_unix_millis() + 1),
                    ..LedgerQuery::all(c.id)
                },
            )
            .await
            .unwrap()
            .items;
        let slots: Vec<Timestamp> = ledger.iter().map(|e| e.poll.slot).collect();
        assert_eq!(
            slots, expected,
            "chamber {}: one ledger entry per slot",
            c.name
        );
        for e in &ledger {
            *outcomes.entry(e.outcome.code()).or_default() += 1;
        }
        let ok_slots: Vec<Timestamp> = ledger
            .iter()
            .filter(|e| e.outcome == PollOutcome::Ok)
            .map(|e| e.poll.slot)
            .collect();
        let readings = store
            .query(
                actor.organization_id,
                &ReadingQuery {
                    from,
                    to: Timestamp::from_unix_millis(to.as_unix_millis() + 1),
                    ..ReadingQuery::all(ReadingScope::Chamber(c.id))
                },
            )
            .await
            .unwrap()
            .items;
        assert_eq!(
            readings.len(),
            2 * ok_slots.len(),
            "chamber {}: two readings per ok poll, none twice",
            c.name
        );
    }
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
}
