//! The scheduler decision over simulated time: no clock, no sleeps.

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use super::*;
use crate::model::{ChamberId, OrganizationId, PollInterval, PollKind};
use crate::time::Timestamp;

/// A small deterministic generator (SplitMix64), so every run simulates the same fleet.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const T0: Timestamp = Timestamp::from_unix_millis(1_767_225_600_000);
const DAY_MS: i64 = 86_400_000;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0.as_unix_millis() + ms)
}

fn chamber(id: ChamberId, interval_s: u64, since: Timestamp) -> ScheduledChamber {
    ScheduledChamber {
        id,
        organization_id: OrganizationId::from_uuid(Uuid::nil()),
        interval: PollInterval::from_secs(interval_s).unwrap(),
        schedule_since: since,
    }
}

/// 1,000 chambers: a tenth at 1, 2 or 5 s, the rest anywhere from 1 s to 1 h.
fn mixed_fleet(rng: &mut Rng) -> Vec<ScheduledChamber> {
    (0..1000)
        .map(|i| {
            let interval = if i % 10 == 0 {
                [1, 2, 5][rng.below(3) as usize]
            } else {
                1 + rng.below(3600)
            };
            chamber(
                ChamberId::from_uuid(Uuid::from_u128(u128::from(rng.next()) << 64 | i)),
                interval,
                T0,
            )
        })
        .collect()
}

/// Checks, poll by poll, that each chamber's polls are exactly its grid slots in order: the
/// first slot at or after `since`, then every interval, none skipped, none twice, none early.
struct GridAuditor {
    expected_next: HashMap<ChamberId, (Timestamp, SlotGrid)>,
    polls: u64,
}

impl GridAuditor {
    fn new(fleet: &[ScheduledChamber]) -> Self {
        let expected_next = fleet
            .iter()
            .map(|c| {
                let grid = SlotGrid::new(c.id, c.interval);
                (c.id, (grid.at_or_after(c.schedule_since), grid))
            })
            .collect();
        Self {
            expected_next,
            polls: 0,
        }
    }

    /// No slot after `horizon` (the wake-up time, plus how far ahead the planner decides).
    fn check(&mut self, decision: &Decision, horizon: Timestamp) {
        assert!(
            decision.missed.is_empty(),
            "nothing missed when waking on time: {:?}",
            decision.missed
        );
        for due in &decision.enqueue {
            assert_eq!(due.kind, PollKind::Scheduled);
            assert!(
                due.poll.slot <= horizon,
                "slot {} enqueued beyond {horizon}",
                due.poll.slot
            );
            let (next, grid) = self
                .expected_next
                .get_mut(&due.poll.chamber_id)
                .expect("known chamber");
            assert_eq!(
                due.poll.slot, *next,
                "chamber {} skipped or repeated a slot",
                due.poll.chamber_id
            );
            *next = grid.after(*next);
            self.polls += 1;
        }
    }

    /// Every slot due by `end` was emitted.
    fn assert_complete(&self, end: Timestamp) {
        for (id, (next, _)) in &self.expected_next {
            assert!(
                *next > end,
                "chamber {id} still owes slot {next} at the end"
            );
        }
    }
}

#[test]
fn a_simulated_day_emits_every_slot_exactly_once_and_never_early() {
    let mut rng = Rng(7);
    let fleet = mixed_fleet(&mut rng);
    let mut planner = SchedulePlanner::new(CatchUpPolicy::Skip, at(-1));
    for c in &fleet {
        planner.upsert(*c);
    }
    let mut audit = GridAuditor::new(&fleet);
    let end = at(DAY_MS);
    let mut wakeups = 0u64;
    while let Some(due) = planner.next_due() {
        if due > end {
            break;
        }
        // Wake exactly on time, or up to 900 ms late (a busy machine): neither may cause an
        // early, repeated or skipped slot.
        let now = if wakeups.is_multiple_of(2) {
            due
        } else {
            due + Duration::from_millis(rng.below(900))
        }
        .min(end);
        let decision = planner.due(now);
        audit.check(&decision, now);
        wakeups += 1;
    }
    let decision = planner.due(end);
    audit.check(&decision, end);
    audit.assert_complete(end);
    assert!(
        audit.polls > 1_000_000,
        "the fleet is busy enough to mean something: {}",
        audit.polls
    );
}

#[test]
fn deciding_ahead_emits_every_slot_once_up_to_the_horizon_and_misses_none() {
    let mut rng = Rng(19);
    let fleet = mixed_fleet(&mut rng);
    let mut planner = SchedulePlanner::new(CatchUpPolicy::Skip, at(-1));
    for c in &fleet {
        planner.upsert(*c);
    }
    let mut audit = GridAuditor::new(&fleet);
    let ahead = Duration::from_millis(200);
    let end = at(3_600_000);
    let mut now = T0;
    let mut wakeups = 0u64;
    while let Some(due) = planner.next_due() {
        // The scheduler's loop: wake `ahead` before the next slot, but at most every 20 ms,
        // sometimes up to 150 ms late; a wake-up later than the lead would miss slots.
        let planned = Timestamp::from_unix_millis(due.as_unix_millis() - 200)
            .max(now + Duration::from_millis(20));
        now = (planned + Duration::from_millis(rng.below(3) * rng.below(75))).min(end);
        let decision = planner.due_ahead(now, ahead);
        audit.check(&decision, now + ahead);
        assert_eq!(
            planner.watermark(),
            now,
            "the watermark stays at the wake-up time"
        );
        wakeups += 1;
        if now >= end {
            break;
        }
    }
    audit.assert_complete(end + ahead);
    assert!(
        wakeups < 3_600_000 / 20 + 1,
        "wake-ups are at least 20 ms apart: {wakeups}"
    );
    assert!(audit.polls > 50_000, "busy enough: {}", audit.polls);
}

#[test]
fn a_late_but_current_slot_is_polled_when_deciding_ahead_not_missed() {
    let id = ChamberId::from_uuid(Uuid::from_u128(77));
    let grid = SlotGrid::new(id, PollInterval::from_secs(1).unwrap());
    let mut planner = SchedulePlanner::new(CatchUpPolicy::Skip, at(-1));
    planner.upsert(chamber(id, 1, T0));
    let first = planner.next_due().unwrap();
    // Woken 900 ms after the slot, deciding 200 ms ahead: the late slot is still current
    // (its successor is not yet due) and the next one falls within the horizon.
    let decision = planner.due_ahead(
        first + Duration::from_millis(900),
        Duration::from_millis(200),
    );
    assert!(decision.missed.is_empty(), "{:?}", decision.missed);
    let slots: Vec<_> = decision
        .enqueue
        .iter()
        .map(|d| (d.poll.slot, d.kind))
        .collect();
    assert_eq!(
        slots,
        vec![
            (first, PollKind::Scheduled),
            (grid.after(first), PollKind::Scheduled)
        ]
    );
    assert_eq!(planner.next_due(), Some(grid.after(grid.after(first))));
}

#[test]
fn a_chamber_added_after_deciding_ahead_is_still_owed_its_next_slots() {
    let mut planner = SchedulePlanner::new(CatchUpPolicy::Skip, at(-1));
    let now = at(10_000);
    planner.due_ahead(now, Duration::from_millis(900));
    let id = ChamberId::from_uuid(Uuid::from_u128(78));
    let grid = SlotGrid::new(id, PollInterval::from_secs(1).unwrap());
    planner.upsert(chamber(id, 1, now));
    // Its first slot falls inside the window already decided for the others; it is owed.
    assert_eq!(
        planner.next_due(),
        Some(grid.at_or_after(now + Duration::from_millis(1)))
    );
    let decision = planner.due_ahead(now + Duration::from_millis(1), Duration::from_millis(1000));
    assert_eq!(decision.enqueue.len(), 1);
    assert!(decision.missed.is_empty());
}

#[test]
fn chambers_sharing_one_second_are_spread_across_it() {
    for (label, ids) in [
        (
            "sequential ids",
            (0..1000u128).map(Uuid::from_u128).collect::<Vec<_>>(),
        ),
        ("random ids", (0..1000).map(|_| Uuid::new_v4()).collect()),
    ] {
        let mut windows = [0u32; 100];
        for id in ids {
            let grid = SlotGrid::new(
                ChamberId::from_uuid(id),
                PollInterval::from_secs(1).unwrap(),
            );
            windows[(grid.phase_ms() / 10) as usize] += 1;
        }
        let busiest = *windows.iter().max().unwrap();
        // Mean: 10 per 10 ms window. Allow at most 4x.
        assert!(
            busiest <= 40,
            "{label}: a 10 ms window holds {busiest} of 1,000 chambers"
        );
    }
}

#[test]
fn the_grid_is_stable_across_restarts() {
    let mut rng = Rng(11);
    let fleet = mixed_fleet(&mut rng);
    // One planner runs for an hour; another is restarted at minute 17 from the persisted
    // watermark. Together they emit exactly what the first emits alone.
    let run =
        |planner: &mut SchedulePlanner, until: Timestamp, out: &mut Vec<(ChamberId, Timestamp)>| {
            while let Some(due) = planner.next_due() {
                if due > until {
                    break;
                }
                out.extend(
                    planner
                        .due(due)
                        .enqueue
                        .iter()
                        .map(|d| (d.poll.chamber_id, d.poll.slot)),
                );
            }
        };
    let hour = at(3_600_000);
    let mut continuous = SchedulePlanner::new(CatchUpPolicy::Skip, at(-1));
    fleet.iter().for_each(|c| continuous.upsert(*c));
    let mut expected = Vec::new();
    run(&mut continuous, hour, &mut expected);

    let mut first = SchedulePlanner::new(CatchUpPolicy::Skip, at(-1));
    fleet.iter().for_each(|c| first.upsert(*c));
    let mut got = Vec::new();
    run(&mut first, at(17 * 60_000), &mut got);
    let watermark = first.watermark();
    drop(first);
    let mut second = SchedulePlanner::new(CatchUpPolicy::Skip, watermark);
    fleet.iter().for_each(|c| second.upsert(*c));
    run(&mut second, hour, &mut got);

    expected.sort();
    got.sort();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
}

#[test]
fn an_interval_change_moves_to_the_new_grid_at_the_first_slot_after_the_change() {
    let id = ChamberId::from_uuid(Uuid::from_u128(42));
    let mut planner = SchedulePlanner::new(CatchUpPolicy::Skip, at(-1));
    planner.upsert(chamber(id, 10, T0));
    let old = SlotGrid::new(id, PollInterval::from_secs(10).unwrap());
    let new = SlotGrid::new(id, PollInterval::from_secs(3).unwrap());
    let mut slots = Vec::new();
    let change_at = at(95_500);
    while let Some(due) = planner.next_due() {
        if due > change_at {
            break;
        }
        slots.extend(planner.due(due).enqueue.iter().map(|d| d.poll.slot));
    }
    planner.due(change_at);
    planner.upsert(chamber(id, 3, change_at));
    let first_new = planner.next_due().unwrap();
    assert_eq!(
        first_new,
        new.at_or_after(change_at),
        "first slot of the new grid after the change"
    );
    assert!(first_new > change_at);
    while let Some(due) = planner.next_due() {
        if due > at(120_000) {
            break;
        }
        slots.extend(planner.due(due).enqueue.iter().map(|d| d.poll.slot));
    }
    let (before, after): (Vec<_>, Vec<_>) = slots.iter().partition(|s| **s <= change_at);
    assert!(before.iter().all(|s| old.is_slot(*s)) && before.len() >= 9);
    assert!(after.iter().all(|s| new.is_slot(*s)));
    assert!(
        after
            .windows(2)
            .all(|w| w[1].as_unix_millis() - w[0].as_unix_millis() == 3000)
    );
    assert_eq!(after.first().copied(), Some(first_new));
    // The new grid's phase is the same function of the id as any 3 s chamber's: a restart
    // with the changed chamber lands on the same slots.
    let mut restarted = SchedulePlanner::new(CatchUpPolicy::Skip, planner.watermark());
    restarted.upsert(chamber(id, 3, change_at));
    assert_eq!(restarted.next_due(), planner.next_due());
}

#[test]
fn an_outage_records_missed_slots_instead_of_stampeding() {
    let ids: Vec<ChamberId> = (0..50u128)
        .map(|i| ChamberId::from_uuid(Uuid::from_u128(i)))
        .collect();
    let mut planner = SchedulePlanner::new(CatchUpPolicy::Skip, at(-1));
    ids.iter()
        .for_each(|id| planner.upsert(chamber(*id, 1, T0)));
    planner.due(at(10_000));
    let watermark = planner.watermark();
    // The scheduler is down for five minutes; a new one resumes from the watermark.
    let mut resumed = SchedulePlanner::new(CatchUpPolicy::Skip, watermark);
    ids.iter()
        .for_each(|id| resumed.upsert(chamber(*id, 1, T0)));
    let now = at(310_000);
    let decision = resumed.due(now);
    assert_eq!(decision.enqueue.len(), 50, "one poll per chamber, not 300");
    for due in &decision.enqueue {
        let grid = SlotGrid::new(due.poll.chamber_id, PollInterval::from_secs(1).unwrap());
        assert_eq!(
            due.poll.slot,
            grid.at_or_before(now),
            "the latest due slot is polled"
        );
    }
    let missed: u64 = decision.missed.iter().map(|m| m.count).sum();
    assert_eq!(
        missed,
        50 * 299 + decision.missed.len() as u64 - 50,
        "the rest are recorded as missed"
    );
    for m in &decision.missed {
        let grid = SlotGrid::new(m.chamber_id, PollInterval::from_secs(1).unwrap());
        let slots: Vec<_> = m.slots().collect();
        assert!(slots.first().unwrap().slot > watermark);
        assert!(slots.iter().all(|p| grid.is_slot(p.slot) && p.slot < now));
        assert_eq!(slots.len() as u64, m.count);
    }
}

#[test]
fn backfill_replays_a_bounded_number_of_missed_slots() {
    let id = ChamberId::from_uuid(Uuid::from_u128(7));
    let mut planner = SchedulePlanner::new(CatchUpPolicy::backfill(5).unwrap(), at(0));
    planner.upsert(chamber(id, 1, T0));
    let decision = planner.due(at(60_000));
    let backfill: Vec<_> = decision
        .enqueue
        .iter()
        .filter(|d| d.kind == PollKind::Backfill)
        .collect();
    let scheduled: Vec<_> = decision
        .enqueue
        .iter()
        .filter(|d| d.kind == PollKind::Scheduled)
        .collect();
    assert_eq!((backfill.len(), scheduled.len()), (5, 1));
    let missed: u64 = decision.missed.iter().map(|m| m.count).sum();
    let grid = SlotGrid::new(id, PollInterval::from_secs(1).unwrap());
    let total = grid.count_between(grid.at_or_after(at(1)), grid.at_or_before(at(60_000)));
    assert_eq!(missed + 6, total, "every slot decided once");
    // Backfill takes the most recent missed slots, right before the current one.
    assert_eq!(
        backfill.last().unwrap().poll.slot.as_unix_millis() + 1000,
        scheduled[0].poll.slot.as_unix_millis()
    );
    assert!(CatchUpPolicy::backfill(0).is_err() && CatchUpPolicy::backfill(1001).is_err());
}

#[test]
fn pause_and_resume_owe_no_slots_for_the_paused_time() {
    let id = ChamberId::from_uuid(Uuid::from_u128(9));
    let mut planner = SchedulePlanner::new(CatchUpPolicy::Skip, at(-1));
    planner.upsert(chamber(id, 1, T0));
    planner.due(at(5_000));
    planner.remove(id);
    assert_eq!(planner.next_due(), None);
    assert!(planner.due(at(60_000)).enqueue.is_empty());
    planner.upsert(chamber(id, 1, at(60_000)));
    let decision = planner.due(at(61_000));
    assert!(decision.missed.is_empty(), "paused time is not missed time");
    assert_eq!(decision.enqueue.len(), 1);
    assert!(decision.enqueue[0].poll.slot > at(60_000));
}

#[test]
fn a_full_resync_adds_updates_and_removes() {
    let a = chamber(ChamberId::from_uuid(Uuid::from_u128(1)), 1, T0);
    let b = chamber(ChamberId::from_uuid(Uuid::from_u128(2)), 1, T0);
    let c = chamber(ChamberId::from_uuid(Uuid::from_u128(3)), 1, T0);
    let mut planner = SchedulePlanner::new(CatchUpPolicy::Skip, at(-1));
    planner.replace_all([a, b]);
    planner.replace_all([b, c]);
    assert!(!planner.contains(a.id) && planner.contains(b.id) && planner.contains(c.id));
    assert_eq!(planner.len(), 2);
    let decision = planner.due(at(1000));
    assert!(decision.enqueue.iter().all(|d| d.poll.chamber_id != a.id));
    // Many updates do not grow the heap without bound.
    for i in 0..10_000 {
        planner.upsert(chamber(b.id, 1 + (i % 5), at(2000)));
    }
    assert!(planner.heap_len() < 2 * planner.len() + 1030);
}
