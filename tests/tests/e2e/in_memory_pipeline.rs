//! The whole poll pipeline — the real `Scheduler::run`, the queue, poll handling, storage —
//! wired from the in-memory adapters and run on paused time: every expected slot ends with
//! exactly one ledger entry, across a scheduler outage, and every successful poll's readings are
//! stored once. (The worker's loop is a plain lease-fetch-complete loop here until the worker
//! runs on apalis.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::T0;
use chamberlain_domain::model::Role;
use chamberlain_domain::ports::{
    Clock, LedgerQuery, PollLedgerRepository, PollQueue, ReadingQuery, ReadingRepository,
    ReadingScope, Repositories,
};
use chamberlain_domain::schedule::SlotGrid;
use chamberlain_domain::usecases::{
    Actor, ChamberAdmin, JobOutcome, NewChamber, NewDetector, NewSection, NewUser, PollHandler,
    UserAdmin,
};
use chamberlain_fakes::{
    InsecureTestPasswordHasher, MemoryStore, ScriptedAnswer, ScriptedChamberClient, TokioClock,
};
use chamberlain_memory::{
    MemoryChamberChanges, MemoryEventBus, MemoryLeaderLease, MemoryPollQueue,
    MemoryScheduleCheckpoint,
};
use chamberlain_scheduler::{Scheduler, SchedulerConfig};

struct Stack {
    store: Arc<MemoryStore>,
    queue: Arc<MemoryPollQueue>,
    clock: Arc<TokioClock>,
    client: Arc<ScriptedChamberClient>,
    admin: ChamberAdmin,
    handler: PollHandler,
    changes: Arc<MemoryChamberChanges>,
    lease: Arc<MemoryLeaderLease>,
    checkpoint: Arc<MemoryScheduleCheckpoint>,
}

fn stack() -> Stack {
    let store = Arc::new(MemoryStore::new());
    let clock = TokioClock::at(T0);
    let changes = Arc::new(MemoryChamberChanges::new(16));
    let queue = Arc::new(MemoryPollQueue::new(clock.clone()));
    let client = Arc::new(ScriptedChamberClient::new());
    let events = Arc::new(MemoryEventBus::new(16));
    let repositories = Repositories::of(store.clone());
    let admin = ChamberAdmin::new(
        &repositories,
        changes.clone(),
        events.clone(),
        clock.clone(),
    );
    let handler = PollHandler::new(&repositories, client.clone(), events, clock.clone());
    Stack {
        lease: Arc::new(MemoryLeaderLease::new(clock.clone())),
        checkpoint: Arc::new(MemoryScheduleCheckpoint::new()),
        store,
        queue,
        clock,
        client,
        admin,
        handler,
        changes,
    }
}

/// Runs a scheduler replica named `holder` and a worker until the clock reads `to`; then the
/// scheduler shuts down (giving its lease up) and the worker finishes what it leased.
async fn run(s: &Stack, holder: &str, to: Timestamp) {
    let scheduler = Scheduler::new(
        &Repositories::of(s.store.clone()),
        s.queue.clone(),
        s.lease.clone(),
        s.checkpoint.clone(),
        s.changes.clone(),
        s.clock.clone(),
        SchedulerConfig::new(holder),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let scheduling = tokio::spawn(scheduler.run(async {
        let _ = stopped.await;
    }));
    // A worker: lease what is ready, fetch each, complete them in one batch, then acknowledge.
    while s.clock.now() < to {
        let leased = s
            .queue
            .lease(
                256,
                Duration::from_secs(30),
                to.saturating_since(s.clock.now()),
            )
            .await
            .unwrap();
        let mut done = Vec::new();
        for job in &leased {
            match s.handler.fetch(&job.job).await.unwrap() {
                JobOutcome::Done(p) => done.push(p),
                other => panic!("unexpected {other:?}"),
            }
        }
        s.handler.complete(done).await.unwrap();
        let receipts: Vec<_> = leased.into_iter().map(|j| j.receipt).collect();
        s.queue.ack(&receipts).await.unwrap();
    }
    stop.send(()).unwrap();
    scheduling.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn every_expected_slot_gets_exactly_one_ledger_entry_across_a_scheduler_outage() {
    let s = stack();
    let users = UserAdmin::new(
        &Repositories::of(s.store.clone()),
        Arc::new(InsecureTestPasswordHasher),
        Arc::new(chamberlain_memory::MemoryAccessEpoch::default()),
        s.clock.clone(),
    );
    let (org, admin) = users
        .create_organization(
            "Lab",
            NewUser {
                email: "a@lab.example".into(),
                display_name: "A".into(),
                role: "admin".into(),
                password: None,
            },
        )
        .await
        .unwrap();
    let actor = Actor {
        user_id: admin.id,
        organization_id: org.id,
        role: Role::Admin,
    };
    let section = s
        .admin
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
    for i in 0..20u64 {
        let url = format!("http://chamber.test/{i}");
        // Every fifth chamber answers garbage: still one ledger entry per slot.
        let body = if i % 5 == 4 {
            "not json".to_owned()
        } else {
            format!(r#"{{"t": {i}, "h": 50}}"#)
        };
        s.client.script(&url, ScriptedAnswer::ok(body));
        let c = s
            .admin
            .create_chamber(
                &actor,
                NewChamber {
                    section_id: section.id,
                    name: format!("c{i}"),
                    url,
                    format: "json".into(),
                    interval: Duration::from_secs(1 + i % 4 * 2),
                    timeout: None,
                    detectors: vec![
                        NewDetector {
                            name: "t".into(),
                            key: "/t".into(),
                            ..Default::default()
                        },
                        NewDetector {
                            name: "h".into(),
                            key: "/h".into(),
                            ..Default::default()
                        },
                    ],
                },
            )
            .await
            .unwrap();
        chambers.push(c.chamber);
    }
    // Two minutes of scheduling, a 30 s outage, then two more minutes from the watermark.
    let t = |s: u64| T0 + Duration::from_secs(s);
    run(&s, "first", t(120)).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    run(&s, "second", t(270)).await;
    // Slots enqueued ahead of the end and never fetched are not counted; every slot up to
    // then is.
    let end = t(269);

    let mut outcomes: HashMap<&str, usize> = HashMap::new();
    for c in &chambers {
        let grid = SlotGrid::new(c.id, c.interval);
        let expected: Vec<Timestamp> =
            std::iter::successors(Some(grid.at_or_after(t(0))), |x| Some(grid.after(*x)))
                .take_while(|x| *x <= end)
                .collect();
        let ledger: Vec<_> = PollLedgerRepository::list(&*s.store, org.id, &LedgerQuery::all(c.id))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.poll.slot <= end)
            .collect();
        let slots: Vec<Timestamp> = ledger.iter().map(|e| e.poll.slot).collect();
        assert_eq!(
            slots, expected,
            "chamber {}: one entry per expected slot, in order",
            c.name
        );
        for e in &ledger {
            *outcomes.entry(e.outcome.code()).or_default() += 1;
        }
        let readings = s
            .store
            .query(org.id, &ReadingQuery::all(ReadingScope::Chamber(c.id)))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|r| r.slot <= end)
            .collect::<Vec<_>>();
        let fetched = ledger.iter().filter(|e| e.requested_at.is_some()).count();
        assert_eq!(
            readings.len(),
            2 * fetched,
            "two readings per fetched poll, none twice"
        );
    }
    assert!(
        outcomes["missed"] > 0 && outcomes["ok"] > 0 && outcomes["malformed"] > 0,
        "{outcomes:?}"
    );
    assert_eq!(
        s.queue.depth().await.unwrap(),
        Default::default(),
        "every job acknowledged"
    );
}
