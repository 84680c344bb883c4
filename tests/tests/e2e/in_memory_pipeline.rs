//! The whole poll pipeline — schedule decision, queue, poll handling, storage — wired from the
//! in-memory adapters and run over simulated time: every expected slot ends with exactly one
//! ledger entry, across a scheduler outage, and every successful poll's readings are stored
//! once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::T0;
use chamberlain_domain::model::{JobMetadata, LedgerEntry, PollOutcome, Role};
use chamberlain_domain::ports::{
    LedgerQuery, PollLedgerRepository, PollQueue, ReadingQuery, ReadingRepository, ReadingScope,
    Repositories,
};
use chamberlain_domain::schedule::{CatchUpPolicy, SchedulePlanner, ScheduledChamber, SlotGrid};
use chamberlain_domain::usecases::{
    Actor, ChamberAdmin, Fetched, NewChamber, NewDetector, NewSection, NewUser, PollHandler,
    UserAdmin,
};
use chamberlain_fakes::{
    InsecureTestPasswordHasher, ManualClock, MemoryStore, ScriptedAnswer, ScriptedChamberClient,
};
use chamberlain_memory::{MemoryChamberChanges, MemoryEventBus, MemoryPollQueue};

struct Stack {
    store: Arc<MemoryStore>,
    queue: Arc<MemoryPollQueue>,
    clock: Arc<ManualClock>,
    client: Arc<ScriptedChamberClient>,
    admin: ChamberAdmin,
    handler: PollHandler,
}

fn stack() -> Stack {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::at(T0);
    let queue = Arc::new(MemoryPollQueue::new(clock.clone()));
    let client = Arc::new(ScriptedChamberClient::new());
    let events = Arc::new(MemoryEventBus::new(16));
    let repositories = Repositories::of(store.clone());
    let admin = ChamberAdmin::new(
        &repositories,
        Arc::new(MemoryChamberChanges::new(16)),
        events.clone(),
        clock.clone(),
    );
    let handler = PollHandler::new(
        &repositories,
        queue.clone(),
        client.clone(),
        events,
        clock.clone(),
    );
    Stack {
        store,
        queue,
        clock,
        client,
        admin,
        handler,
    }
}

/// Runs the scheduler until `to`, waking first no earlier than `start` (a scheduler that
/// comes back late): wake at each due time, record missed slots, enqueue, then let a worker
/// drain the queue in one batch.
async fn run(s: &Stack, planner: &mut SchedulePlanner, start: Timestamp, to: Timestamp) {
    while let Some(due) = planner.next_due() {
        if due > to {
            break;
        }
        let due = due.max(start);
        s.clock.set(due);
        let decision = planner.due(due);
        let missed: Vec<LedgerEntry> = decision
            .missed
            .iter()
            .flat_map(|m| m.slots().collect::<Vec<_>>())
            .map(|poll| LedgerEntry::unfetched(poll, PollOutcome::Missed, 0, due))
            .collect();
        if !missed.is_empty() {
            s.store.record(&missed).await.unwrap();
        }
        let jobs: Vec<_> = decision
            .enqueue
            .into_iter()
            .map(|d| {
                d.into_job(JobMetadata {
                    trace: None,
                    attempt: 1,
                    enqueued_at: due,
                })
            })
            .collect();
        s.queue.enqueue(&jobs).await.unwrap();
        // A worker: lease what is ready, fetch each, complete them in one batch.
        s.clock.set(due + Duration::from_millis(7));
        let leased = s
            .queue
            .lease(256, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap();
        let mut done = Vec::new();
        for job in &leased {
            match s.handler.fetch(job).await.unwrap() {
                Fetched::Done(p) => done.push(p),
                other => panic!("unexpected {other:?}"),
            }
        }
        s.handler.complete(done).await.unwrap();
    }
}

#[tokio::test]
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
    let scheduled: Vec<ScheduledChamber> =
        chambers.iter().filter_map(ScheduledChamber::of).collect();

    // Two minutes of scheduling, a 30 s outage, then two more minutes from the watermark.
    let mut planner = SchedulePlanner::new(CatchUpPolicy::Skip, T0);
    planner.replace_all(scheduled.clone());
    let t = |s: u64| T0 + Duration::from_secs(s);
    run(&s, &mut planner, t(0), t(120)).await;
    let watermark = planner.watermark();
    drop(planner);
    let mut resumed = SchedulePlanner::new(CatchUpPolicy::Skip, watermark);
    resumed.replace_all(scheduled);
    run(&s, &mut resumed, t(150), t(270)).await;
    let end = resumed.watermark();

    let mut outcomes: HashMap<&str, usize> = HashMap::new();
    for c in &chambers {
        let grid = SlotGrid::new(c.id, c.interval);
        let expected: Vec<Timestamp> = std::iter::successors(
            Some(grid.at_or_after(t(0) + Duration::from_millis(1))),
            |x| Some(grid.after(*x)),
        )
        .take_while(|x| *x <= end)
        .collect();
        let ledger = s
            .store
            .list(org.id, &LedgerQuery::all(c.id))
            .await
            .unwrap()
            .items;
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
            .items;
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
