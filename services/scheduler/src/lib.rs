#![doc = include_str!("../README.md")]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::limits::{LEADER_LEASE_RENEW_EVERY, LEADER_LEASE_TTL};
use chamberlain_domain::model::{
    JobMetadata, LedgerEntry, PageRequest, PageSize, PollJob, PollOutcome,
};
use chamberlain_domain::ports::{
    ChamberChange, ChamberChanges, ChamberHealthRepository, ChamberRepository, ChangeSubscription,
    Clock, LeaderLease, LeaseGrant, PollLedgerRepository, PollQueue, Repositories,
    ScheduleCheckpoint,
};
use chamberlain_domain::schedule::{CatchUpPolicy, Decision, SchedulePlanner, ScheduledChamber};
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

/// Why a leader term ended.
enum TermEnd {
    LostLease,
    Shutdown,
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
        tokio::pin!(shutdown);
        loop {
            let grant = tokio::select! {
                () = &mut shutdown => return,
                grant = self.acquire() => grant,
            };
            tracing::info!(holder = %self.config.holder, token = grant.fencing_token, "leading the schedule");
            instruments().leader.record(1, &[]);
            let end = self.lead(grant.clone(), &mut shutdown).await;
            instruments().leader.record(0, &[]);
            match end {
                TermEnd::Shutdown => {
                    if let Err(e) = self.lease.release(&grant).await {
                        tracing::warn!(error = %e, "lease not released; it expires by itself");
                    }
                    return;
                }
                TermEnd::LostLease => {
                    tracing::warn!(holder = %self.config.holder, "lost the leader lease; following");
                }
            }
        }
    }

    /// Tries for the lease every renewal period until it is granted.
    async fn acquire(&self) -> LeaseGrant {
        instruments().leader.record(0, &[]);
        loop {
            match self
                .lease
                .acquire(&self.config.holder, self.config.lease_ttl)
                .await
            {
                Ok(Some(grant)) => return grant,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "lease store unavailable"),
            }
            tokio::time::sleep(self.config.renew_every).await;
        }
    }

    async fn lead<S: Future<Output = ()> + Unpin>(
        &self,
        mut grant: LeaseGrant,
        shutdown: &mut S,
    ) -> TermEnd {
        let now = self.clock.now();
        let watermark = match self.checkpoint.load().await {
            Ok(Some(w)) => w,
            // The first leader ever: nothing was owed before now.
            Ok(None) => Timestamp::from_unix_millis(now.as_unix_millis() - 1),
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint unavailable; starting from now");
                Timestamp::from_unix_millis(now.as_unix_millis() - 1)
            }
        };
        let mut planner = SchedulePlanner::new(self.config.catch_up, watermark);
        // Subscribe before loading, so no change falls between the two.
        let mut feed: Option<Box<dyn ChangeSubscription>> = match self.changes.subscribe().await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "change feed unavailable; relying on resyncs");
                None
            }
        };
        let mut next_resync = self.resync(&mut planner).await;
        // Later resyncs load in the background, so enqueuing never waits for them; changes that
        // arrive meanwhile are applied at once and again on top of the loaded snapshot.
        let mut loading: Option<tokio::task::JoinHandle<Option<Vec<ScheduledChamber>>>> = None;
        let mut changed_while_loading: Vec<ChamberChange> = Vec::new();
        // Polls whose enqueue failed (queue unavailable): retried at each wake while current.
        let mut unsent: Vec<PollJob> = Vec::new();
        let mut next_checkpoint = tokio::time::Instant::now();
        let mut next_renew = tokio::time::Instant::now() + self.config.renew_every;
        let mut next_sample = tokio::time::Instant::now();
        let ahead = self.config.enqueue_ahead;
        // Decisions are at least `decide_every` apart (and the first comes at once).
        let decide_every = self.config.decide_every.min(ahead / 4);
        let mut next_decision = tokio::time::Instant::now();
        loop {
            let now = self.clock.now();
            // Wake `ahead` before the earliest undecided slot.
            let until_due = planner.next_due().map_or(self.config.renew_every, |due| {
                due.saturating_since(now).saturating_sub(ahead)
            });
            let mut wake = (tokio::time::Instant::now() + until_due)
                .max(next_decision)
                .min(next_renew);
            if loading.is_none() {
                wake = wake.min(next_resync);
            }
            let change = async {
                match feed.as_mut() {
                    Some(f) => f.next().await,
                    None => std::future::pending().await,
                }
            };
            let loaded = async {
                match loading.as_mut() {
                    Some(task) => task.await.ok().flatten(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut *shutdown => {
                    if let Some(task) = loading.take() {
                        task.abort();
                    }
                    return TermEnd::Shutdown;
                }
                change = change => match change {
                    Some(ChamberChange::Resync) => next_resync = tokio::time::Instant::now(),
                    Some(change) => {
                        apply_change(&mut planner, &change);
                        if loading.is_some() {
                            changed_while_loading.push(change);
                        }
                    }
                    None => {
                        tracing::warn!("change feed closed; relying on resyncs");
                        feed = None;
                    }
                },
                snapshot = loaded => {
                    loading = None;
                    match snapshot {
                        Some(all) => {
                            tracing::debug!(chambers = all.len(), "resynced");
                            planner.replace_all(all);
                            for change in changed_while_loading.drain(..) {
                                apply_change(&mut planner, &change);
                            }
                            next_resync = tokio::time::Instant::now() + self.config.resync_every;
                        }
                        None => {
                            changed_while_loading.clear();
                            next_resync = tokio::time::Instant::now() + self.config.renew_every;
                        }
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
            let instant = tokio::time::Instant::now();
            if instant >= next_renew {
                match self.lease.renew(&grant, self.config.lease_ttl).await {
                    Ok(Some(g)) => grant = g,
                    Ok(None) => {
                        if let Some(task) = loading.take() {
                            task.abort();
                        }
                        return TermEnd::LostLease;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lease renewal failed");
                        if self.clock.now() >= grant.expires_at {
                            if let Some(task) = loading.take() {
                                task.abort();
                            }
                            return TermEnd::LostLease;
                        }
                    }
                }
                next_renew = instant + self.config.renew_every;
            }
            if instant >= next_sample {
                self.sample_queue().await;
                next_sample = instant + self.config.sample_queue_every;
            }
            if loading.is_none() && instant >= next_resync {
                loading = Some(tokio::spawn(load_active(self.chambers.clone())));
            }
            let now = self.clock.now();
            let decide = tokio::time::Instant::now() >= next_decision
                && (planner.next_due().is_some_and(|due| due <= now + ahead) || !unsent.is_empty());
            if decide {
                next_decision = tokio::time::Instant::now() + decide_every;
                let decision = planner.due_ahead(now, ahead);
                let checkpoint = tokio::time::Instant::now() >= next_checkpoint;
                if checkpoint {
                    next_checkpoint = tokio::time::Instant::now() + self.config.checkpoint_every;
                }
                let watermark = checkpoint.then(|| planner.watermark());
                unsent = self
                    .carry_out(
                        decision,
                        std::mem::take(&mut unsent),
                        now,
                        &grant,
                        watermark,
                    )
                    .await;
            }
        }
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

    /// Loads every active chamber into the planner; returns when to do it again.
    async fn resync(&self, planner: &mut SchedulePlanner) -> tokio::time::Instant {
        match load_active(self.chambers.clone()).await {
            Some(all) => {
                tracing::debug!(chambers = all.len(), "resynced");
                planner.replace_all(all);
                tokio::time::Instant::now() + self.config.resync_every
            }
            None => tokio::time::Instant::now() + self.config.renew_every,
        }
    }

    /// Records missed slots, enqueues due polls (and earlier ones that could not be sent), then
    /// saves the watermark. Returns the polls that could not be enqueued. A crash between the
    /// steps re-decides the same slots next time, and dedup makes that harmless.
    async fn carry_out(
        &self,
        decision: Decision,
        unsent: Vec<PollJob>,
        now: Timestamp,
        grant: &LeaseGrant,
        watermark: Option<Timestamp>,
    ) -> Vec<PollJob> {
        // Unsent polls whose next slot is already due will never be fetched: missed.
        let (retry, stale): (Vec<PollJob>, Vec<PollJob>) =
            unsent.into_iter().partition(|j| !j.is_expired_at(now));
        let missed: Vec<LedgerEntry> = decision
            .missed
            .iter()
            .flat_map(|m| m.slots().collect::<Vec<_>>())
            .chain(stale.iter().map(|j| j.poll))
            .map(|poll| LedgerEntry::unfetched(poll, PollOutcome::Missed, 0, now))
            .collect();
        let metrics = instruments();
        metrics.polls_missed.add(missed.len() as u64, &[]);
        metrics
            .polls_scheduled
            .add(decision.enqueue.len() as u64, &[]);
        for chunk in missed.chunks(10_000) {
            if let Err(e) = self.ledger.record(chunk).await {
                tracing::warn!(error = %e, slots = chunk.len(), "missed slots not recorded");
            }
        }
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
        if let Some(watermark) = watermark
            && let Err(e) = self.checkpoint.save(grant.fencing_token, watermark).await
        {
            tracing::warn!(error = %e, "watermark not saved");
        }
        failed
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
    let mut all = Vec::new();
    let mut page = PageRequest::first(PageSize::new(1000).unwrap_or_default());
    loop {
        match chambers.list_active(page.clone()).await {
            Ok(p) => {
                all.extend(p.items.iter().filter_map(ScheduledChamber::of));
                match p.next {
                    Some(next) => page.after = Some(next),
                    None => return Some(all),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "resync failed; retrying soon");
                return None;
            }
        }
    }
}
