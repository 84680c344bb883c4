//! The real `Scheduler::run` on paused time against the memory adapters: a simulated hour in
//! moments. Every slot is enqueued once and ahead of its time; a lost lease stops enqueuing at
//! once; after a pause, the catch-up policy decides what is polled and what is recorded missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::{self, T0};
use chamberlain_domain::model::Page;
use chamberlain_domain::model::{
    Chamber, ChamberId, LedgerEntry, OrganizationId, PollJob, PollKind, PollOutcome,
};
use chamberlain_domain::ports::{
    ChamberRepository, Clock, LeaderLease, LeaseError, LeaseGrant, LedgerQuery,
    OrganizationRepository, PollLedgerRepository, PollQueue, Repositories, ScheduleCheckpoint,
    SectionRepository, StoreError,
};
use chamberlain_domain::schedule::CatchUpPolicy;
use chamberlain_fakes::{MemoryStore, TokioClock};
use chamberlain_memory::{
    MemoryChamberChanges, MemoryLeaderLease, MemoryPollQueue, MemoryScheduleCheckpoint,
};
use chamberlain_scheduler::{Scheduler, SchedulerConfig};

/// A lease the test can take away: once revoked, renewals answer "lost" (and the moment is
/// kept) and acquisitions are refused.
struct Revocable {
    inner: MemoryLeaderLease,
    clock: Arc<dyn Clock>,
    revoked: AtomicBool,
    lost_at: Mutex<Option<Timestamp>>,
}

#[async_trait]
impl LeaderLease for Revocable {
    async fn acquire(&self, holder: &str, ttl: Duration) -> Result<Option<LeaseGrant>, LeaseError> {
        if self.revoked.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.inner.acquire(holder, ttl).await
    }
    async fn renew(
        &self,
        grant: &LeaseGrant,
        ttl: Duration,
    ) -> Result<Option<LeaseGrant>, LeaseError> {
        if self.revoked.load(Ordering::SeqCst) {
            self.lost_at.lock().unwrap().get_or_insert(self.clock.now());
            return Ok(None);
        }
        self.inner.renew(grant, ttl).await
    }
    async fn release(&self, grant: &LeaseGrant) -> Result<(), LeaseError> {
        self.inner.release(grant).await
    }
}

/// The memory store's ledger, refusing every write until `back` is set.
struct LedgerAway {
    inner: Arc<MemoryStore>,
    back: AtomicBool,
    refused: std::sync::atomic::AtomicU64,
    /// A chamber deleted behind the scheduler's back: a write with its entries is refused.
    gone: Option<ChamberId>,
}

#[async_trait]
impl PollLedgerRepository for LedgerAway {
    async fn record(&self, entries: &[LedgerEntry]) -> Result<u64, StoreError> {
        if !self.back.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable {
                message: "connection refused".into(),
            });
        }
        if let Some(gone) = self.gone
            && entries.iter().any(|e| e.poll.chamber_id == gone)
        {
            return Err(StoreError::MissingParent {
                entity: "poll",
                parent: "chamber",
            });
        }
        self.inner.record(entries).await
    }
    async fn list(
        &self,
        org: OrganizationId,
        query: &LedgerQuery,
    ) -> Result<Page<LedgerEntry, Timestamp>, StoreError> {
        PollLedgerRepository::list(&*self.inner, org, query).await
    }
}

struct Lab {
    store: Arc<MemoryStore>,
    org: OrganizationId,
    chambers: Vec<Chamber>,
    clock: Arc<dyn Clock>,
    queue: Arc<MemoryPollQueue>,
    checkpoint: Arc<MemoryScheduleCheckpoint>,
    changes: Arc<MemoryChamberChanges>,
}

/// `n` chambers, chamber `i` polled every `interval(i)` seconds, scheduled since T0; the clock
/// reads T0 now.
async fn lab(n: usize, interval: impl Fn(usize) -> u64) -> Lab {
    let store = Arc::new(MemoryStore::new());
    let org = fixtures::organization("paused");
    OrganizationRepository::create(&*store, &org).await.unwrap();
    let section = fixtures::section(org.id, "room");
    SectionRepository::create(&*store, &section).await.unwrap();
    let mut chambers = Vec::with_capacity(n);
    for i in 0..n {
        let chamber = fixtures::chamber(org.id, section.id, &format!("c{i:03}"), interval(i));
        ChamberRepository::create(&*store, &chamber, &[fixtures::detector(&chamber, "t")])
            .await
            .unwrap();
        chambers.push(chamber);
    }
    let clock: Arc<dyn Clock> = TokioClock::at(T0);
    Lab {
        queue: Arc::new(MemoryPollQueue::new(clock.clone())),
        checkpoint: Arc::new(MemoryScheduleCheckpoint::new()),
        changes: Arc::new(MemoryChamberChanges::default()),
        store,
        org: org.id,
        chambers,
        clock,
    }
}

impl Lab {
    /// A scheduler replica named `holder` on `lease`, running until the returned sender fires.
    fn start(
        &self,
        holder: &str,
        lease: Arc<dyn LeaderLease>,
        catch_up: CatchUpPolicy,
    ) -> (
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        self.start_with_ledger(holder, lease, catch_up, None)
    }

    /// As [`Lab::start`], writing missed slots to `ledger` instead of the store's.
    fn start_with_ledger(
        &self,
        holder: &str,
        lease: Arc<dyn LeaderLease>,
        catch_up: CatchUpPolicy,
        ledger: Option<Arc<dyn PollLedgerRepository>>,
    ) -> (
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let mut config = SchedulerConfig::new(holder);
        config.catch_up = catch_up;
        let mut scheduler = Scheduler::new(
            &Repositories::of(self.store.clone()),
            self.queue.clone(),
            lease,
            self.checkpoint.clone(),
            self.changes.clone(),
            self.clock.clone(),
            config,
        );
        if let Some(ledger) = ledger {
            scheduler.ledger = ledger;
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(scheduler.run(async {
            let _ = stopped.await;
        }));
        (task, stop)
    }

    /// Acts as the workers until the clock reads `until`: leases every job as it becomes
    /// ready, keeps it, records it in the ledger as polled, and acknowledges it.
    async fn consume_until(&self, until: Timestamp, jobs: &mut Vec<PollJob>) {
        while self.clock.now() < until {
            let wait = until.saturating_since(self.clock.now());
            let leased = self
                .queue
                .lease(10_000, Duration::from_secs(60), wait)
                .await
                .unwrap();
            let now = self.clock.now();
            let polled: Vec<LedgerEntry> = leased
                .iter()
                .map(|l| LedgerEntry {
                    poll: l.job.poll,
                    outcome: PollOutcome::Ok,
                    attempt: 1,
                    requested_at: Some(now),
                    recorded_at: now,
                    latency: Some(Duration::ZERO),
                    lateness: now.saturating_since(l.job.poll.slot),
                })
                .collect();
            self.store.record(&polled).await.unwrap();
            let receipts: Vec<_> = leased.iter().map(|l| l.receipt.clone()).collect();
            jobs.extend(leased.into_iter().map(|l| l.job));
            self.queue.ack(&receipts).await.unwrap();
        }
    }

    async fn ledger(&self, chamber: ChamberId) -> Vec<(Timestamp, PollOutcome)> {
        PollLedgerRepository::list(&*self.store, self.org, &LedgerQuery::all(chamber))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| (e.poll.slot, e.outcome))
            .collect()
    }
}

fn slots_by_chamber(jobs: &[PollJob]) -> HashMap<ChamberId, Vec<Timestamp>> {
    let mut by: HashMap<ChamberId, Vec<Timestamp>> = HashMap::new();
    for job in jobs {
        by.entry(job.poll.chamber_id)
            .or_default()
            .push(job.poll.slot);
    }
    by
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test(start_paused = true)]
async fn an_hour_of_a_hundred_chambers_enqueues_every_slot_once_and_ahead_of_it() {
    // Intervals of 5 to 14 s: about 38,000 polls.
    let lab = lab(100, |i| 5 + (i % 10) as u64).await;
    let lease = Arc::new(MemoryLeaderLease::new(lab.clock.clone()));
    let (task, stop) = lab.start("s1", lease, CatchUpPolicy::Skip);
    let end = T0 + secs(3600);
    let mut jobs = Vec::new();
    lab.consume_until(end, &mut jobs).await;
    stop.send(()).unwrap();
    task.await.unwrap();

    let config = SchedulerConfig::new("s1");
    let by = slots_by_chamber(&jobs);
    for chamber in &lab.chambers {
        let interval = chamber.interval.as_duration();
        let mut slots = by.get(&chamber.id).cloned().unwrap_or_default();
        let polled = slots.len();
        slots.sort();
        slots.dedup();
        assert_eq!(
            polled,
            slots.len(),
            "{}: a slot enqueued twice",
            chamber.name.as_str()
        );
        // Each chamber has its own phase within its interval (slots are spread so that not all
        // chambers fall due at once): every slot of the hour from its first on, in order; one
        // past the hour at most (enqueued ahead of its time).
        let first = *slots.first().expect("the chamber was polled");
        assert!(
            first < T0 + interval,
            "{}: first slot {first}",
            chamber.name.as_str()
        );
        let expected: Vec<Timestamp> = (0..)
            .map(|k: u32| first + interval * k)
            .take_while(|slot| *slot <= end + config.enqueue_ahead)
            .collect();
        let within_hour = expected.iter().filter(|s| **s < end).count();
        assert!(
            slots.len() <= expected.len() && slots[..] == expected[..slots.len()],
            "{}: slots {:?}…",
            chamber.name.as_str(),
            &slots[..slots.len().min(5)]
        );
        assert!(
            slots.len() >= within_hour,
            "{}: {} of {within_hour} slots",
            chamber.name.as_str(),
            slots.len()
        );
        let ledger = lab.ledger(chamber.id).await;
        assert!(
            ledger
                .iter()
                .all(|(_, outcome)| *outcome == PollOutcome::Ok),
            "{}: nothing missed",
            chamber.name.as_str()
        );
    }
    for job in &jobs {
        assert_eq!(job.kind, PollKind::Scheduled);
        let ahead = job.poll.slot.saturating_since(job.meta.enqueued_at);
        assert!(
            job.meta.enqueued_at <= job.poll.slot && ahead <= config.enqueue_ahead,
            "slot {} enqueued at {} ({ahead:?} ahead)",
            job.poll.slot,
            job.meta.enqueued_at
        );
    }
    assert!(jobs.len() > 35_000, "{} polls", jobs.len());
}

/// A checkpoint whose every save takes `takes` (a store whose one writer is busy): saves are
/// counted, and stored.
struct SlowCheckpoint {
    inner: MemoryScheduleCheckpoint,
    takes: Duration,
    saves: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl ScheduleCheckpoint for SlowCheckpoint {
    async fn load(&self) -> Result<Option<Timestamp>, LeaseError> {
        self.inner.load().await
    }

    async fn save(&self, fencing_token: u64, watermark: Timestamp) -> Result<bool, LeaseError> {
        tokio::time::sleep(self.takes).await;
        self.saves.fetch_add(1, Ordering::SeqCst);
        self.inner.save(fencing_token, watermark).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_watermark_save_never_holds_up_the_next_polls() {
    let lab = lab(20, |_| 1).await;
    let checkpoint = Arc::new(SlowCheckpoint {
        inner: MemoryScheduleCheckpoint::new(),
        takes: secs(3),
        saves: std::sync::atomic::AtomicU64::new(0),
    });
    let config = SchedulerConfig::new("s1");
    let scheduler = Scheduler::new(
        &Repositories::of(lab.store.clone()),
        lab.queue.clone(),
        Arc::new(MemoryLeaderLease::new(lab.clock.clone())),
        checkpoint.clone(),
        lab.changes.clone(),
        lab.clock.clone(),
        config.clone(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(scheduler.run(async {
        let _ = stopped.await;
    }));
    let mut jobs = Vec::new();
    lab.consume_until(T0 + secs(30), &mut jobs).await;
    stop.send(()).unwrap();
    task.await.unwrap();

    // Every poll enqueued ahead of its slot, as with a quick store: none waited for a save.
    assert!(jobs.len() >= 20 * 29, "{} polls", jobs.len());
    for job in &jobs {
        assert!(
            job.meta.enqueued_at <= job.poll.slot,
            "slot {} enqueued at {}",
            job.poll.slot,
            job.meta.enqueued_at
        );
    }
    // Saves went on, one at a time: about one each 3 s.
    let saves = checkpoint.saves.load(Ordering::SeqCst);
    assert!((8..=11).contains(&saves), "{saves} saves in 30 s");
    let watermark = checkpoint.inner.load().await.unwrap().expect("saved");
    assert!(watermark >= T0 + secs(20), "watermark {watermark}");
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_stops_enqueuing_at_once() {
    let lab = lab(10, |_| 1).await;
    let lease = Arc::new(Revocable {
        inner: MemoryLeaderLease::new(lab.clock.clone()),
        clock: lab.clock.clone(),
        revoked: AtomicBool::new(false),
        lost_at: Mutex::new(None),
    });
    let (task, stop) = lab.start("s1", lease.clone(), CatchUpPolicy::Skip);
    let mut jobs = Vec::new();
    lab.consume_until(T0 + secs(30), &mut jobs).await;
    lease.revoked.store(true, Ordering::SeqCst);
    lab.consume_until(T0 + secs(60), &mut jobs).await;
    let lost_at = lease
        .lost_at
        .lock()
        .unwrap()
        .expect("a renewal was refused");
    let renew_every = SchedulerConfig::new("s1").renew_every;
    assert!(
        lost_at <= T0 + secs(30) + renew_every,
        "the loss is noticed at the next renewal: {lost_at}"
    );
    let last = jobs.iter().map(|j| j.meta.enqueued_at).max().unwrap();
    assert!(
        last <= lost_at,
        "a job was enqueued at {last}, after the lease was lost at {lost_at}"
    );
    assert!(
        last + Duration::from_secs(1) >= lost_at,
        "it led until the loss: the last job at {last}, the loss at {lost_at}"
    );
    // Still following, and still not enqueuing, when shut down.
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// What a second replica did after a pause, for one chamber polled every second.
struct Resumed {
    chamber: ChamberId,
    /// The latest slot due when the second replica started (the chamber's phase within the
    /// second is its own).
    latest_due: Timestamp,
    /// The last slot the first replica enqueued.
    last_polled: Timestamp,
    /// What the second replica enqueued in its first seconds.
    enqueued: Vec<(Timestamp, PollKind)>,
    /// The slots recorded missed.
    missed: Vec<Timestamp>,
    /// Slots recorded polled (by this test's stand-in workers).
    polled: Vec<Timestamp>,
    /// When the second replica started, and the watermark saved at the end.
    restart: Timestamp,
    watermark: Option<Timestamp>,
}

/// What is wrong with the second replica's ledger.
#[derive(Debug, Clone, Copy)]
enum LedgerTrouble {
    /// It refuses every write for this long (unavailable), then is back.
    AwayFor(Duration),
    /// It refuses, for good, every write with an entry of the first chamber (deleted).
    TheFirstChamberGone,
}

/// Stops a first replica after a minute, waits five minutes, starts a second one with
/// `policy` and lets it run three seconds.
async fn after_a_pause(policy: CatchUpPolicy) -> Vec<Resumed> {
    after_a_pause_with(policy, None).await
}

/// As [`after_a_pause`], with the second replica's ledger in `trouble` (when away, it runs
/// that long more).
async fn after_a_pause_with(policy: CatchUpPolicy, trouble: Option<LedgerTrouble>) -> Vec<Resumed> {
    let lab = lab(5, |_| 1).await;
    let lease = Arc::new(MemoryLeaderLease::new(lab.clock.clone()));
    let (first, stop) = lab.start("s1", lease.clone(), CatchUpPolicy::Skip);
    let mut jobs = Vec::new();
    lab.consume_until(T0 + secs(60), &mut jobs).await;
    stop.send(()).unwrap();
    first.await.unwrap();

    tokio::time::sleep(secs(300)).await;
    let restart = lab.clock.now();
    let away = match trouble {
        Some(LedgerTrouble::AwayFor(away)) => Some(away),
        _ => None,
    };
    let ledger = trouble.map(|trouble| {
        Arc::new(LedgerAway {
            inner: lab.store.clone(),
            back: AtomicBool::new(away.is_none()),
            refused: std::sync::atomic::AtomicU64::new(0),
            gone: matches!(trouble, LedgerTrouble::TheFirstChamberGone).then(|| lab.chambers[0].id),
        })
    });
    let (second, stop) = lab.start_with_ledger(
        "s2",
        lease,
        policy,
        ledger.clone().map(|l| l as Arc<dyn PollLedgerRepository>),
    );
    if let (Some(away), Some(ledger)) = (away, &ledger) {
        lab.consume_until(restart + away, &mut jobs).await;
        assert!(
            ledger.refused.load(Ordering::SeqCst) >= 2,
            "the scheduler tried the ledger, and again"
        );
        ledger.back.store(true, Ordering::SeqCst);
    }
    lab.consume_until(lab.clock.now() + secs(3), &mut jobs)
        .await;
    stop.send(()).unwrap();
    second.await.unwrap();
    let watermark = ScheduleCheckpoint::load(&*lab.checkpoint).await.unwrap();

    // The first scheduler's jobs: a job it enqueued ahead of its slot just before it stopped
    // is only taken from the queue after the restart, so they are told apart by slot, not by
    // when they were taken. Every chamber polls each second and the second scheduler enqueues
    // scheduled slots from the latest due one on (within a second of the restart) and
    // backfills older ones.
    let by_first = |j: &&PollJob| j.kind == PollKind::Scheduled && j.poll.slot + secs(1) <= restart;
    let mut resumed = Vec::new();
    for chamber in &lab.chambers {
        let polled = jobs
            .iter()
            .filter(by_first)
            .filter(|j| j.poll.chamber_id == chamber.id);
        let last_polled = polled
            .map(|j| j.poll.slot)
            .max()
            .expect("polled before the pause");
        let whole_seconds = restart.saturating_since(last_polled).as_secs();
        let ledger = lab.ledger(chamber.id).await;
        resumed.push(Resumed {
            chamber: chamber.id,
            latest_due: last_polled + secs(whole_seconds),
            last_polled,
            enqueued: jobs
                .iter()
                .filter(|j| !by_first(j) && j.poll.chamber_id == chamber.id)
                .map(|j| (j.poll.slot, j.kind))
                .collect(),
            missed: ledger
                .iter()
                .filter(|(_, o)| *o == PollOutcome::Missed)
                .map(|(slot, _)| *slot)
                .collect(),
            polled: ledger
                .iter()
                .filter(|(_, o)| *o == PollOutcome::Ok)
                .map(|(slot, _)| *slot)
                .collect(),
            restart,
            watermark,
        });
    }
    resumed
}

impl Resumed {
    /// Every slot from the first one polled to the end of the run has one ledger entry:
    /// polled or missed, never both (the ledger keeps the first), none left out.
    fn every_slot_accounted_for_once(&self) {
        let mut all: Vec<Timestamp> = self.polled.iter().chain(&self.missed).copied().collect();
        all.sort();
        let first = all[0];
        let expected: Vec<Timestamp> = (0..all.len() as u64).map(|k| first + secs(k)).collect();
        assert_eq!(all, expected, "{}: a slot twice or none", self.chamber);
    }
}

/// The slots strictly between `after` and `before`, a second apart.
fn seconds_between(after: Timestamp, before: Timestamp) -> Vec<Timestamp> {
    (1..)
        .map(|k| after + secs(k))
        .take_while(|slot| *slot < before)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn after_a_pause_skip_polls_the_latest_slot_and_records_the_others_missed() {
    for r in after_a_pause(CatchUpPolicy::Skip).await {
        let chamber = r.chamber;
        r.every_slot_accounted_for_once();
        assert_eq!(
            r.missed,
            seconds_between(r.last_polled, r.latest_due),
            "{chamber}: every owed slot but the latest, once"
        );
        assert!(
            r.missed.len() >= 298,
            "{chamber}: {} missed",
            r.missed.len()
        );
        assert_eq!(
            r.enqueued.first(),
            Some(&(r.latest_due, PollKind::Scheduled)),
            "{chamber}"
        );
        assert!(
            r.enqueued
                .iter()
                .all(|(slot, kind)| *kind == PollKind::Scheduled && *slot >= r.latest_due),
            "{chamber}: {:?}",
            r.enqueued
        );
    }
}

#[tokio::test(start_paused = true)]
async fn missed_slots_the_ledger_refused_are_recorded_once_it_is_back() {
    for r in after_a_pause_with(CatchUpPolicy::Skip, Some(LedgerTrouble::AwayFor(secs(10)))).await {
        let chamber = r.chamber;
        r.every_slot_accounted_for_once();
        assert_eq!(
            r.missed,
            seconds_between(r.last_polled, r.latest_due),
            "{chamber}: every owed slot but the latest recorded missed, once, after the ledger came back"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn missed_slots_of_a_chamber_the_ledger_refuses_for_good_do_not_hold_up_the_others() {
    let resumed = after_a_pause_with(
        CatchUpPolicy::Skip,
        Some(LedgerTrouble::TheFirstChamberGone),
    )
    .await;
    let (gone, others) = resumed.split_first().unwrap();
    assert!(
        gone.missed.is_empty(),
        "the deleted chamber's slots are left out: {:?}",
        gone.missed
    );
    for r in others {
        let chamber = r.chamber;
        r.every_slot_accounted_for_once();
        assert_eq!(
            r.missed,
            seconds_between(r.last_polled, r.latest_due),
            "{chamber}: every owed slot but the latest recorded missed, once"
        );
    }
    let watermark = gone.watermark.expect("a watermark saved");
    assert!(
        watermark > gone.restart,
        "the schedule moved on: watermark {watermark}, restart {}",
        gone.restart
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_pause_backfill_replays_the_latest_missed_slots_and_records_the_rest() {
    for r in after_a_pause(CatchUpPolicy::backfill(3).unwrap()).await {
        let chamber = r.chamber;
        r.every_slot_accounted_for_once();
        let mut backfilled: Vec<Timestamp> = r
            .enqueued
            .iter()
            .filter(|(_, kind)| *kind == PollKind::Backfill)
            .map(|(slot, _)| *slot)
            .collect();
        backfilled.sort();
        let owed = seconds_between(r.last_polled, r.latest_due);
        let (missed, replayed) = owed.split_at(owed.len() - 3);
        assert_eq!(
            backfilled, replayed,
            "{chamber}: the three most recent missed slots are replayed"
        );
        assert_eq!(
            r.missed, missed,
            "{chamber}: the rest are recorded missed, once"
        );
        assert!(
            r.enqueued.contains(&(r.latest_due, PollKind::Scheduled)),
            "{chamber}"
        );
    }
}
