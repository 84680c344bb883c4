//! The scheduler's decision: which polls are due at a given time.
//!
//! A pure state machine over simulated time. It keeps each chamber's next slot in a min-heap,
//! so a wake-up costs O(due × log n) and never scans all chambers; the caller sleeps until
//! [`SchedulePlanner::next_due`]. The *watermark* is the instant up to which every slot has been
//! decided (enqueued, backfilled or recorded as missed). Persisting it lets a new leader (or a
//! restarted scheduler) resume exactly where the last one stopped: slots at or before the
//! watermark are never decided twice, slots after it are decided exactly once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use crate::error::{Rule, ValidationError};
use crate::limits::MAX_BACKFILL_SLOTS;
use crate::model::{
    Chamber, ChamberId, JobMetadata, OrganizationId, PollId, PollInterval, PollJob, PollKind,
};
use crate::schedule::SlotGrid;
use crate::time::Timestamp;

/// What to do with slots that fell due while no scheduler was deciding (an outage, or a wake-up
/// later than a whole interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUpPolicy {
    /// Poll only the latest due slot; record the earlier ones as missed (the default: no
    /// stampede).
    #[default]
    Skip,
    /// Also replay up to `max_slots` of the most recent missed slots per chamber as backfill
    /// polls (for chambers that can answer for a past slot); record the rest as missed.
    Backfill { max_slots: u32 },
}

impl CatchUpPolicy {
    /// # Errors
    /// `catch_up.max_slots`: [`Rule::OutOfRange`] outside 1..=1000.
    pub fn backfill(max_slots: u32) -> Result<Self, ValidationError> {
        if max_slots == 0 || max_slots > MAX_BACKFILL_SLOTS {
            return Err(ValidationError::new(
                "catch_up.max_slots",
                Rule::OutOfRange {
                    min: "1".into(),
                    max: MAX_BACKFILL_SLOTS.to_string(),
                    actual: max_slots.to_string(),
                },
            ));
        }
        Ok(Self::Backfill { max_slots })
    }
}

/// What the planner needs to know of a chamber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledChamber {
    pub id: ChamberId,
    pub organization_id: OrganizationId,
    pub interval: PollInterval,
    /// Slots before this instant are not owed (creation, resume, interval change).
    pub schedule_since: Timestamp,
}

impl ScheduledChamber {
    /// The chamber as the planner sees it, or `None` if it is paused (not scheduled).
    pub fn of(chamber: &Chamber) -> Option<Self> {
        chamber.is_active().then_some(Self {
            id: chamber.id,
            organization_id: chamber.organization_id,
            interval: chamber.interval,
            schedule_since: chamber.schedule_since,
        })
    }
}

/// A poll the planner decided to enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuePoll {
    pub poll: PollId,
    pub organization_id: OrganizationId,
    pub interval: PollInterval,
    pub kind: PollKind,
}

impl DuePoll {
    pub fn into_job(self, meta: JobMetadata) -> PollJob {
        PollJob {
            poll: self.poll,
            organization_id: self.organization_id,
            interval: self.interval,
            kind: self.kind,
            meta,
        }
    }
}

/// A run of consecutive slots of one chamber that will not be polled. Kept as a range: an outage
/// of a day at 1 s is 86,400 slots per chamber, and the caller decides how to record them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissedSlots {
    pub chamber_id: ChamberId,
    pub organization_id: OrganizationId,
    pub first: Timestamp,
    pub interval: PollInterval,
    pub count: u64,
}

impl MissedSlots {
    pub fn slots(&self) -> impl Iterator<Item = PollId> + '_ {
        let step = self.interval.as_millis() as i64;
        (0..self.count).map(move |k| PollId {
            chamber_id: self.chamber_id,
            slot: Timestamp::from_unix_millis(self.first.as_unix_millis() + k as i64 * step),
        })
    }
}

/// The result of one wake-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Polls to enqueue, in slot order per chamber.
    pub enqueue: Vec<DuePoll>,
    /// Slots to record as missed.
    pub missed: Vec<MissedSlots>,
}

#[derive(Debug, Clone)]
struct Entry {
    chamber: ScheduledChamber,
    grid: SlotGrid,
    next_slot: Timestamp,
    generation: u64,
}

/// Due times of all active chambers, in memory. See the module docs.
///
/// ```
/// use chamberlain_domain::model::{ChamberId, OrganizationId, PollInterval};
/// use chamberlain_domain::schedule::{CatchUpPolicy, SchedulePlanner, ScheduledChamber};
/// use chamberlain_domain::Timestamp;
///
/// let start = Timestamp::from_unix_millis(1_767_225_600_000);
/// let mut planner = SchedulePlanner::new(CatchUpPolicy::Skip, start);
/// planner.upsert(ScheduledChamber {
///     id: ChamberId::random(),
///     organization_id: OrganizationId::random(),
///     interval: PollInterval::from_secs(10)?,
///     schedule_since: start,
/// });
/// // Sleep until the first slot, then decide it.
/// let due = planner.next_due().expect("one chamber is scheduled");
/// let decision = planner.due(due);
/// assert_eq!(decision.enqueue.len(), 1);
/// assert_eq!(decision.enqueue[0].poll.slot, due);
/// assert!(decision.missed.is_empty());
/// # Ok::<(), chamberlain_domain::ValidationError>(())
/// ```
#[derive(Debug)]
pub struct SchedulePlanner {
    policy: CatchUpPolicy,
    entries: HashMap<ChamberId, Entry>,
    heap: BinaryHeap<Reverse<(Timestamp, u64, ChamberId)>>,
    generation: u64,
    watermark: Timestamp,
}

impl SchedulePlanner {
    /// A planner that has decided every slot at or before `watermark`. A scheduler resuming
    /// after an outage passes the persisted watermark; the very first start passes "just
    /// before now".
    pub fn new(policy: CatchUpPolicy, watermark: Timestamp) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
            heap: BinaryHeap::new(),
            generation: 0,
            watermark,
        }
    }

    /// Every slot at or before this instant has been decided.
    pub fn watermark(&self) -> Timestamp {
        self.watermark
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, id: ChamberId) -> bool {
        self.entries.contains_key(&id)
    }

    /// Adds a chamber or applies a change to it. Its next slot is the first slot of its
    /// (possibly new) grid that is at or after `schedule_since` and after the watermark, so no
    /// slot is ever decided twice, and an interval change takes effect at the first slot of the
    /// new grid after the change. An unchanged chamber keeps its next slot.
    pub fn upsert(&mut self, chamber: ScheduledChamber) {
        if let Some(e) = self.entries.get(&chamber.id)
            && e.chamber == chamber
        {
            return;
        }
        let grid = SlotGrid::new(chamber.id, chamber.interval);
        let after_watermark = Timestamp::from_unix_millis(self.watermark.as_unix_millis() + 1);
        let next_slot = grid.at_or_after(chamber.schedule_since.max(after_watermark));
        self.generation += 1;
        let entry = Entry {
            chamber,
            grid,
            next_slot,
            generation: self.generation,
        };
        self.heap
            .push(Reverse((next_slot, entry.generation, chamber.id)));
        self.entries.insert(chamber.id, entry);
        self.compact_if_stale();
    }

    /// Stops scheduling a chamber (deleted or paused). Its undecided slots are not owed.
    pub fn remove(&mut self, id: ChamberId) {
        self.entries.remove(&id);
        self.compact_if_stale();
    }

    /// Keeps exactly the given chambers (a full resync): adds and updates them, removes the rest.
    pub fn replace_all(&mut self, chambers: impl IntoIterator<Item = ScheduledChamber>) {
        let mut keep = HashMap::new();
        for c in chambers {
            keep.insert(c.id, ());
            self.upsert(c);
        }
        let gone: Vec<ChamberId> = self
            .entries
            .keys()
            .filter(|id| !keep.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.remove(id);
        }
    }

    /// When the earliest undecided slot is due: the caller sleeps until then (or until a
    /// chamber changes).
    pub fn next_due(&mut self) -> Option<Timestamp> {
        while let Some(Reverse((slot, generation, id))) = self.heap.peek().copied() {
            if self.is_current(id, generation) {
                return Some(slot);
            }
            self.heap.pop();
        }
        None
    }

    /// Decides every slot due at or before `now`: the latest due slot of each chamber is
    /// enqueued; earlier ones (the scheduler was down or woke late) follow the catch-up policy.
    /// Never returns a slot after `now`, nor one at or before the previous watermark.
    pub fn due(&mut self, now: Timestamp) -> Decision {
        self.due_ahead(now, Duration::ZERO)
    }

    /// Like [`Self::due`], and also decides the slots that fall due within `ahead` after `now`,
    /// each as a scheduled poll of its own slot: enqueued early, so that a worker holds the job
    /// when the slot comes and sends the request on time, whatever the queue's latency. Catch-up
    /// is judged at `now` only: a slot that is late but still current is polled, not missed.
    ///
    /// The watermark advances to `now`, not to `now + ahead`: a chamber added or changed after
    /// this call is still owed its slots after `now`, and a new leader resuming from the
    /// watermark re-decides at most the slots decided ahead (the queue's dedup refuses them).
    pub fn due_ahead(&mut self, now: Timestamp, ahead: Duration) -> Decision {
        let horizon = now + ahead;
        let mut decision = Decision::default();
        while let Some(Reverse((slot, generation, id))) = self.heap.peek().copied() {
            if slot > horizon {
                break;
            }
            self.heap.pop();
            if !self.is_current(id, generation) {
                continue;
            }
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            let c = entry.chamber;
            let poll = |slot, kind| DuePoll {
                poll: PollId {
                    chamber_id: c.id,
                    slot,
                },
                organization_id: c.organization_id,
                interval: c.interval,
                kind,
            };
            if slot > now {
                // Not yet due: decided ahead, exactly this slot.
                decision.enqueue.push(poll(slot, PollKind::Scheduled));
                entry.next_slot = entry.grid.after(slot);
            } else {
                let latest = entry.grid.at_or_before(now);
                let count = entry.grid.count_between(slot, latest);
                if count > 1 {
                    let earlier = count - 1;
                    let backfill = match self.policy {
                        CatchUpPolicy::Skip => 0,
                        CatchUpPolicy::Backfill { max_slots } => earlier.min(u64::from(max_slots)),
                    };
                    let missed = earlier - backfill;
                    if missed > 0 {
                        decision.missed.push(MissedSlots {
                            chamber_id: c.id,
                            organization_id: c.organization_id,
                            first: slot,
                            interval: c.interval,
                            count: missed,
                        });
                    }
                    let step = entry.grid.interval_ms();
                    for k in missed..earlier {
                        let s =
                            Timestamp::from_unix_millis(slot.as_unix_millis() + k as i64 * step);
                        decision.enqueue.push(poll(s, PollKind::Backfill));
                    }
                }
                decision.enqueue.push(poll(latest, PollKind::Scheduled));
                entry.next_slot = entry.grid.after(latest);
            }
            self.heap
                .push(Reverse((entry.next_slot, entry.generation, id)));
        }
        self.watermark = self.watermark.max(now);
        decision
    }

    /// Entries in the due-time heap, stale ones included (for tests of its compaction).
    #[cfg(test)]
    pub(crate) fn heap_len(&self) -> usize {
        self.heap.len()
    }

    fn is_current(&self, id: ChamberId, generation: u64) -> bool {
        self.entries
            .get(&id)
            .is_some_and(|e| e.generation == generation)
    }

    /// Upserts and removals leave stale heap entries behind; rebuild when they dominate.
    fn compact_if_stale(&mut self) {
        if self.heap.len() > 2 * self.entries.len() + 1024 {
            self.heap = self
                .entries
                .iter()
                .map(|(id, e)| Reverse((e.next_slot, e.generation, *id)))
                .collect();
        }
    }
}
