#![doc = include_str!("../README.md")]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::limits::{LEADER_LEASE_RENEW_EVERY, LEADER_LEASE_TTL};
use chamberlain_domain::model::{
    JobMetadata, LedgerEntry, PageSize, PollJob, PollOutcome, every_page,
};
use chamberlain_domain::ports::{
    ChamberChange, ChamberChanges, ChamberHealthRepository, ChamberRepository, ChangeSubscription,
    Clock, LeaderLease, LeaseGrant, PollLedgerRepository, PollQueue, Repositories,
    ScheduleCheckpoint, StoreError,
};
use chamberlain_domain::schedule::{CatchUpPolicy, Decision, SchedulePlanner, ScheduledChamber};
use chamberlain_leadership::{Leadership, sleep_until};
use chamberlain_telemetry::instruments;

/// How long before its slot a poll is enqueued, unless configured otherwise.
pub const DEFAULT_ENQUEUE_AHEAD: Duration = Duration::from_millis(200);

/// Settings of a scheduler replica.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// This replica's name in the lease (unique per process).
    pub holder: String,
    pub lease_ttl: Duration,
    pub renew_every: Duration,
    /// Full reload of the active chambers, repairing any change the feed lost.
    pub resync_every: Duration,
    pub catch_up: CatchUpPolicy,
    /// Jobs per enqueue call.
    pub enqueue_batch: usize,
    /// The watermark is saved at most this often (a new leader re-decides at most this much,
    /// and the queue's dedup absorbs it).
    pub checkpoint_every: Duration,
    /// One trace per poll, started here (`poll.schedule` → `poll.enqueue`) and carried in the
    /// job to the worker: on when traces are exported.
    pub trace_polls: bool,
    /// How often the leader samples the queue's depth for its metrics.
    pub sample_queue_every: Duration,
    /// Polls are enqueued this long before their slot, so a worker holds each job when its
    /// slot comes and sends the request on time whatever the queue's latency (the worker waits
    /// for the slot). Zero enqueues each poll when it falls due.
    pub enqueue_ahead: Duration,
    /// The leader decides at most this often, each time enqueuing every slot due within
    /// `enqueue_ahead`: fewer, larger enqueue calls. At most a quarter of `enqueue_ahead` is
    /// used (so polls are still enqueued well ahead), and zero when nothing is enqueued ahead.
    pub decide_every: Duration,
}

impl SchedulerConfig {
    pub fn new(holder: impl Into<String>) -> Self {
        Self {
            holder: holder.into(),
            lease_ttl: LEADER_LEASE_TTL,
            renew_every: LEADER_LEASE_RENEW_EVERY,
            resync_every: Duration::from_secs(60),
            catch_up: CatchUpPolicy::Skip,
            enqueue_batch: 1000,
            checkpoint_every: Duration::from_millis(250),
            trace_polls: false,
            sample_queue_every: Duration::from_secs(5),
            enqueue_ahead: DEFAULT_ENQUEUE_AHEAD,
            decide_every: Duration::from_millis(20),
        }
    }
}

/// The ports a scheduler uses.
#[derive(Clone)]
pub struct Scheduler {
    pub chambers: Arc<dyn ChamberRepository>,
    pub ledger: Arc<dyn PollLedgerRepository>,
    /// Read for the chambers-by-health metric only.
    pub health: Arc<dyn ChamberHealthRepository>,
    pub queue: Arc<dyn PollQueue>,
    pub lease: Arc<dyn LeaderLease>,
    pub checkpoint: Arc<dyn ScheduleCheckpoint>,
    pub changes: Arc<dyn ChamberChanges>,
    pub clock: Arc<dyn Clock>,
    pub config: SchedulerConfig,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A resync loading in the background, stopped if the term ends first.
struct Loading(tokio::task::JoinHandle<Option<Vec<ScheduledChamber>>>);

impl Drop for Loading {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A metrics sample in the background, stopped if the term ends first.
struct Sampling(tokio::task::JoinHandle<()>);

impl Drop for Sampling {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What woke a term up.
enum Wake {
    Change(Option<ChamberChange>),
    Loaded(Option<Vec<ScheduledChamber>>),
    Timer,
}

/// One term as the leader: the planner and what feeds it, and when each of its timers fires
/// next, all read on the `Clock` port. Lease renewal is the leadership helper's; the term is
/// dropped the moment the lease is lost.
/// Missed slots held for the ledger while it is unavailable, at most (about 20 MiB): an hour of
/// 50 chambers polled every second, or a minute of 3,000.
const MAX_UNRECORDED: usize = 200_000;

/// How long the schedule waits on the ledger for missed slots: a store that does not answer
/// (a stopped server) must not hold up the enqueuing of due polls.
const LEDGER_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a decision could not finish, carried to the next one.
#[derive(Debug, Default)]
struct Owed {
    /// Polls not enqueued.
    unsent: Vec<PollJob>,
    /// Missed slots not recorded.
    unrecorded: Vec<LedgerEntry>,
}

struct Term<'s> {
    scheduler: &'s Scheduler,
    fencing_token: u64,
    planner: SchedulePlanner,
    feed: Option<Box<dyn ChangeSubscription>>,
    /// A resync in the background: enqueuing never waits for it; changes that arrive
    /// meanwhile are applied at once and again on top of the loaded snapshot.
    loading: Option<Loading>,
    changed_while_loading: Vec<ChamberChange>,
    /// Polls whose enqueue failed (queue unavailable): retried while current.
    unsent: Vec<PollJob>,
    /// Missed slots whose ledger entries could not be written (store unavailable): written
    /// with the next decisions, oldest first, until they are.
    unrecorded: Vec<LedgerEntry>,
    next_resync: Timestamp,
    /// Decisions are at least `decide_every` apart (and the first comes at once).
    next_decision: Timestamp,
    next_checkpoint: Timestamp,
    next_sample: Timestamp,
    sampling: Option<Sampling>,
    /// The last watermark save, in the background: a store slow to answer (SQLite's one writer
    /// busy with a large write) never holds up the next decision. One at a time; a save that
    /// falls due while one is running is skipped (the next carries a later watermark).
    saving: Option<tokio::task::JoinHandle<()>>,
}

impl Scheduler {
    pub fn new(
        repositories: &Repositories,
        queue: Arc<dyn PollQueue>,
        lease: Arc<dyn LeaderLease>,
        checkpoint: Arc<dyn ScheduleCheckpoint>,
        changes: Arc<dyn ChamberChanges>,
        clock: Arc<dyn Clock>,
        config: SchedulerConfig,
    ) -> Self {
        Self {
            chambers: repositories.chambers.clone(),
            ledger: repositories.ledger.clone(),
            health: repositories.health.clone(),
            queue,
            lease,
            checkpoint,
            changes,
            clock,
            config,
        }
    }

    /// Runs until `shutdown` resolves: waits for the lease, leads while it holds it, and gives
    /// it up on shutdown. Infrastructure errors are logged and retried; they never end the loop.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let leadership = Leadership {
            lease: self.lease.clone(),
            clock: self.clock.clone(),
            holder: self.config.holder.clone(),
            ttl: self.config.lease_ttl,
            renew_every: self.config.renew_every,
            role: "the schedule",
        };
        instruments().leader.record(0, &[]);
        let scheduler = &self;
        leadership
            .run(
                shutdown,
                |grant| async move {
                    instruments().leader.record(1, &[]);
                    Term::start(scheduler, &grant).await.run().await;
                },
                |_end| instruments().leader.record(0, &[]),
            )
            .await;
    }

    /// Queue depth and the oldest ready job's age, for the metrics.
    async fn sample_queue(&self) {
        match self.queue.depth().await {
            Ok(depth) => {
                let m = instruments();
                m.queue_ready.record(depth.ready, &[]);
                m.queue_leased.record(depth.leased, &[]);
                m.queue_delayed.record(depth.delayed, &[]);
                let age = depth.oldest_ready_enqueued_at.map_or(0.0, |at| {
                    self.clock.now().saturating_since(at).as_secs_f64()
                });
                m.queue_oldest_age.record(age, &[]);
            }
            Err(e) => tracing::debug!(error = %e, "queue depth not sampled"),
        }
        match self.health.count_by_state().await {
            Ok(counts) => {
                for state in chamberlain_domain::model::HealthState::ALL {
                    let n = counts
                        .iter()
                        .find(|(s, _)| *s == state)
                        .map_or(0, |(_, n)| *n);
                    instruments()
                        .chambers
                        .record(n, &[opentelemetry::KeyValue::new("health", state.as_str())]);
                }
            }
            Err(e) => tracing::debug!(error = %e, "chambers by health not counted"),
        }
    }

    /// Records missed slots in the ledger, each write bounded by [`LEDGER_WRITE_TIMEOUT`],
    /// leaving out the entries it refuses for good (the slots of a chamber deleted since they
    /// were decided need none): a refused write is split in halves until the entries it
    /// refuses are alone. Fails only when the ledger is unavailable; the entries may then be
    /// recorded again (the ledger keeps what it has).
    async fn record_missed(&self, entries: &[LedgerEntry]) -> Result<(), StoreError> {
        let mut parts = vec![entries];
        while let Some(part) = parts.pop() {
            let recorded = tokio::time::timeout(LEDGER_WRITE_TIMEOUT, self.ledger.record(part))
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable {
                        message: format!(
                            "no answer within {} ms",
                            LEDGER_WRITE_TIMEOUT.as_millis()
                        ),
                    })
                });
            match recorded {
                Ok(_) => {}
                Err(e) if e.is_transient() => return Err(e),
                Err(_) if part.len() > 1 => {
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.push(second);
                    parts.push(first);
                }
                Err(e) => tracing::warn!(
                    error = %e, chamber = %part[0].poll.chamber_id, slot = %part[0].poll.slot,
                    "the ledger refused a missed slot (its chamber was deleted?); left out"
                ),
            }
        }
        Ok(())
    }

    /// Records missed slots (and earlier ones that could not be recorded), enqueues due polls
    /// (and earlier ones that could not be sent), then returns what is still owed and the
    /// watermark to save, unless missed slots are still unrecorded: a scheduler that dies then
    /// leaves them to the next leader, which decides them again. A crash between the steps
    /// re-decides the same slots next time, and dedup (queue and ledger) makes that harmless.
    async fn carry_out(
        &self,
        decision: Decision,
        owed: Owed,
        now: Timestamp,
        watermark: Option<Timestamp>,
    ) -> (Owed, Option<Timestamp>) {
        // Unsent polls whose next slot is already due will never be fetched: missed.
        let (retry, stale): (Vec<PollJob>, Vec<PollJob>) =
            owed.unsent.into_iter().partition(|j| !j.is_expired_at(now));
        let newly_missed: Vec<LedgerEntry> = decision
            .missed
            .iter()
            .flat_map(|m| m.slots().collect::<Vec<_>>())
            .chain(stale.iter().map(|j| j.poll))
            .map(|poll| LedgerEntry::unfetched(poll, PollOutcome::Missed, 0, now))
            .collect();
        let metrics = instruments();
        metrics.polls_missed.add(newly_missed.len() as u64, &[]);
        metrics
            .polls_scheduled
            .add(decision.enqueue.len() as u64, &[]);
        let mut missed = owed.unrecorded;
        missed.extend(newly_missed);
        let mut unrecorded = Vec::new();
        for chunk in missed.chunks(10_000) {
            if !unrecorded.is_empty() {
                unrecorded.extend_from_slice(chunk);
                continue;
            }
            let recorded = self.record_missed(chunk).await;
            if let Err(e) = recorded {
                tracing::warn!(error = %e, slots = missed.len(), "missed slots not recorded yet; trying again with the next decision");
                unrecorded.extend_from_slice(chunk);
            }
        }
        if unrecorded.len() > MAX_UNRECORDED {
            let dropped = unrecorded.len() - MAX_UNRECORDED;
            tracing::error!(
                dropped,
                "missed slots held for the ledger over the bound; the oldest are left to the \
                 next leader, which decides them again from the saved watermark"
            );
            unrecorded.drain(..dropped);
        }
        metrics
            .missed_unrecorded
            .record(unrecorded.len() as u64, &[]);
        let meta = JobMetadata {
            trace: None,
            attempt: 1,
            enqueued_at: now,
        };
        let mut jobs = retry;
        // With tracing on, each new poll starts its trace here: `poll.schedule`, and under it
        // `poll.enqueue`, whose context the job carries to the worker. The spans end once the
        // job is in the queue.
        let mut spans = Vec::new();
        let traced = self.config.trace_polls && chamberlain_telemetry::traces_wanted();
        if self.config.trace_polls && !traced {
            metrics
                .traces_skipped
                .add(decision.enqueue.len() as u64, &[]);
        }
        jobs.extend(decision.enqueue.into_iter().map(|d| {
            let mut job = d.into_job(meta.clone());
            if traced {
                let scheduled = tracing::info_span!(
                    "poll.schedule",
                    chamber.id = %job.poll.chamber_id,
                    slot = job.poll.slot.as_unix_millis(),
                );
                let enqueue = tracing::info_span!(parent: &scheduled, "poll.enqueue");
                job.meta.trace = chamberlain_telemetry::trace_context_of(&enqueue);
                spans.push((scheduled, enqueue));
            }
            job
        }));
        let mut failed = Vec::new();
        for chunk in jobs.chunks(self.config.enqueue_batch.max(1)) {
            match self.queue.enqueue(chunk).await {
                Ok(report) => {
                    metrics.polls_enqueued.add(report.new, &[]);
                    metrics.polls_deduplicated.add(report.duplicates, &[]);
                    if report.duplicates > 0 {
                        tracing::debug!(duplicates = report.duplicates, "polls already enqueued");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, polls = chunk.len(), "polls not enqueued; retrying while they are current");
                    failed.extend_from_slice(chunk);
                }
            }
        }
        drop(spans);
        let save = watermark.filter(|_| unrecorded.is_empty());
        (
            Owed {
                unsent: failed,
                unrecorded,
            },
            save,
        )
    }
}

impl<'s> Term<'s> {
    /// Takes over from the saved watermark: subscribes to changes, then loads every active
    /// chamber (in that order, so no change falls between the two).
    async fn start(scheduler: &'s Scheduler, grant: &LeaseGrant) -> Self {
        let clock = scheduler.clock.as_ref();
        let now = clock.now();
        // The first leader ever: nothing was owed before now.
        let fresh = || Timestamp::from_unix_millis(now.as_unix_millis() - 1);
        let watermark = match scheduler.checkpoint.load().await {
            Ok(Some(w)) => w,
            Ok(None) => fresh(),
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint unavailable; starting from now");
                fresh()
            }
        };
        let feed = match scheduler.changes.subscribe().await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "change feed unavailable; relying on resyncs");
                None
            }
        };
        let mut term = Self {
            scheduler,
            fencing_token: grant.fencing_token,
            planner: SchedulePlanner::new(scheduler.config.catch_up, watermark),
            feed,
            loading: None,
            changed_while_loading: Vec::new(),
            unsent: Vec::new(),
            unrecorded: Vec::new(),
            next_resync: now,
            next_decision: now,
            next_checkpoint: now,
            next_sample: now,
            sampling: None,
            saving: None,
        };
        let snapshot = load_active(scheduler.chambers.clone()).await;
        term.on_loaded(snapshot);
        term
    }

    /// Waits for a change, a loaded resync or the next timer, handles it, and carries out
    /// whatever timer is due; until the term is dropped.
    async fn run(mut self) {
        let clock = self.scheduler.clock.clone();
        loop {
            let wake = self.next_wake(clock.now());
            let change = async {
                match self.feed.as_mut() {
                    Some(f) => f.next().await,
                    None => std::future::pending().await,
                }
            };
            let loaded = async {
                match self.loading.as_mut() {
                    Some(Loading(task)) => task.await.ok().flatten(),
                    None => std::future::pending().await,
                }
            };
            let woke = tokio::select! {
                change = change => Wake::Change(change),
                snapshot = loaded => Wake::Loaded(snapshot),
                () = sleep_until(clock.as_ref(), wake) => Wake::Timer,
            };
            match woke {
                Wake::Change(change) => self.on_change(change),
                Wake::Loaded(snapshot) => {
                    self.loading = None;
                    self.on_loaded(snapshot);
                }
                Wake::Timer => {}
            }
            let now = clock.now();
            self.sample_when_due(now);
            self.resync_when_due(now);
            self.decide_when_due(now).await;
        }
    }

    /// The next time something is due: `enqueue_ahead` before the earliest undecided slot
    /// (not before the next decision may be taken), a sample, a resync, or a retry of polls
    /// that could not be enqueued.
    fn next_wake(&mut self, now: Timestamp) -> Timestamp {
        let config = &self.scheduler.config;
        let mut wake = self.next_sample;
        if let Some(due) = self.planner.next_due() {
            wake = wake.min((due - config.enqueue_ahead).max(self.next_decision));
        }
        if !self.unsent.is_empty() || !self.unrecorded.is_empty() {
            wake = wake.min((now + config.renew_every).max(self.next_decision));
        }
        if self.loading.is_none() {
            wake = wake.min(self.next_resync);
        }
        wake
    }

    fn on_change(&mut self, change: Option<ChamberChange>) {
        match change {
            Some(ChamberChange::Resync) => self.next_resync = self.scheduler.clock.now(),
            Some(change) => {
                apply_change(&mut self.planner, &change);
                if self.loading.is_some() {
                    self.changed_while_loading.push(change);
                }
            }
            None => {
                tracing::warn!("change feed closed; relying on resyncs");
                self.feed = None;
            }
        }
    }

    /// A resync's result: the planner takes the snapshot (and the changes that came while it
    /// loaded); a failed one is tried again after a renewal period.
    fn on_loaded(&mut self, snapshot: Option<Vec<ScheduledChamber>>) {
        let config = &self.scheduler.config;
        let now = self.scheduler.clock.now();
        match snapshot {
            Some(all) => {
                tracing::debug!(chambers = all.len(), "resynced");
                self.planner.replace_all(all);
                for change in self.changed_while_loading.drain(..) {
                    apply_change(&mut self.planner, &change);
                }
                self.next_resync = now + config.resync_every;
            }
            None => {
                self.changed_while_loading.clear();
                self.next_resync = now + config.renew_every;
            }
        }
    }

    /// Samples in the background (one sample at a time): a store or queue that does not
    /// answer never holds up the schedule.
    fn sample_when_due(&mut self, now: Timestamp) {
        if now >= self.next_sample {
            self.next_sample = now + self.scheduler.config.sample_queue_every;
            if self.sampling.as_ref().is_none_or(|s| s.0.is_finished()) {
                let scheduler = self.scheduler.clone();
                self.sampling = Some(Sampling(tokio::spawn(async move {
                    scheduler.sample_queue().await;
                })));
            }
        }
    }

    fn resync_when_due(&mut self, now: Timestamp) {
        if self.loading.is_none() && now >= self.next_resync {
            self.loading = Some(Loading(tokio::spawn(load_active(
                self.scheduler.chambers.clone(),
            ))));
        }
    }

    /// Enqueues every slot due within `enqueue_ahead` (and retries unsent polls) when a
    /// decision may be taken, saving the watermark at most every `checkpoint_every`.
    async fn decide_when_due(&mut self, now: Timestamp) {
        let config = &self.scheduler.config;
        let ahead = config.enqueue_ahead;
        let due = self
            .planner
            .next_due()
            .is_some_and(|due| due <= now + ahead);
        if now < self.next_decision
            || (!due && self.unsent.is_empty() && self.unrecorded.is_empty())
        {
            return;
        }
        self.next_decision = now + config.decide_every.min(ahead / 4);
        let decision = self.planner.due_ahead(now, ahead);
        let watermark = (now >= self.next_checkpoint).then(|| {
            self.next_checkpoint = now + config.checkpoint_every;
            self.planner.watermark()
        });
        let (left, save) = self
            .scheduler
            .carry_out(
                decision,
                Owed {
                    unsent: std::mem::take(&mut self.unsent),
                    unrecorded: std::mem::take(&mut self.unrecorded),
                },
                now,
                watermark,
            )
            .await;
        self.unsent = left.unsent;
        self.unrecorded = left.unrecorded;
        if let Some(watermark) = save {
            self.save_in_background(watermark);
        }
    }

    /// Saves `watermark` in a task of its own, unless the previous save is still running. A
    /// save that outlives the term is harmless: the fencing token refuses it once another
    /// leader saved, and the watermark never moves back.
    fn save_in_background(&mut self, watermark: Timestamp) {
        if self
            .saving
            .as_ref()
            .is_some_and(|running| !running.is_finished())
        {
            tracing::debug!("the previous watermark save is still running; this one is skipped");
            return;
        }
        let checkpoint = self.scheduler.checkpoint.clone();
        let fencing_token = self.fencing_token;
        self.saving = Some(tokio::spawn(async move {
            if let Err(e) = checkpoint.save(fencing_token, watermark).await {
                tracing::warn!(error = %e, "watermark not saved");
            }
        }));
    }
}

fn apply_change(planner: &mut SchedulePlanner, change: &ChamberChange) {
    match change {
        ChamberChange::Upserted { chamber } => match ScheduledChamber::of(chamber) {
            Some(c) => planner.upsert(c),
            None => planner.remove(chamber.id),
        },
        ChamberChange::Removed { chamber_id, .. } => planner.remove(*chamber_id),
        ChamberChange::Resync => {}
    }
}

/// Every active chamber, page by page; `None` (logged) if the store fails.
async fn load_active(chambers: Arc<dyn ChamberRepository>) -> Option<Vec<ScheduledChamber>> {
    let size = PageSize::new(1000).unwrap_or_default();
    match every_page(size, |page| chambers.list_active(page)).await {
        Ok(all) => Some(all.iter().filter_map(ScheduledChamber::of).collect()),
        Err(e) => {
            tracing::warn!(error = %e, "resync failed; retrying soon");
            None
        }
    }
}
