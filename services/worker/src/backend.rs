//! The domain's [`PollQueue`] as an apalis [`Backend`]: any queue adapter (Redis Streams, the
//! embedded mode's in-process queue) runs under an apalis worker unchanged.
//!
//! What the pipeline depends on, and where it is kept:
//! - **Jobs held until their slot.** The scheduler enqueues polls ahead of their slot; the
//!   backend leases them early, holds them (at most [`LeaseSettings::max_waiting`]), and hands
//!   a job to the worker only when its slot has come, so no request goes out early.
//! - **What is fetched is on time, even past capacity.** Due jobs go out oldest first while
//!   the worker keeps up; once the oldest due job has waited half its window (the time to its
//!   chamber's next slot), newest first: the polls fetched are those that can still be on
//!   time, and the oldest expire, recorded without a request, ahead of the rest. First in,
//!   first out past capacity would have every poll fetched nearly a window late, and a
//!   worker that fell a window behind would never fetch on time again. A lease that comes back
//!   full doubles the next one (up to 4,096 and `max_waiting`), so a queue that is behind is
//!   emptied into the worker, where the newest can be chosen; no lease is made for fewer than
//!   a quarter of `batch` places (not one call per job handed out while the held jobs are
//!   plenty).
//! - **Nothing fetched that could not be kept.** While the results waiting to be stored are
//!   at their bound (the [`Backlog`](crate::backlog)), the backend neither leases nor hands out
//!   jobs: due jobs wait here, the rest in the queue.
//! - **Fetches in flight bounded apart from jobs waiting.** The worker's concurrency layer
//!   bounds fetches; apalis asks the backend for a job only when a fetch may start, so a job
//!   waiting for its slot never takes a fetch's place.
//! - **Acknowledgement after the write is durable**: the backend's middleware
//!   ([`crate::settle`]) tells the queue how each job ended, once.
//! - **Never a failed worker.** A lease that fails is logged and tried again after a pause;
//!   the backend never yields an error, so a Redis outage pauses the worker instead of ending it.
//! - **Stale receipts refused, a dead worker's jobs taken over**: the queue port's contract
//!   (a lease expires after its visibility timeout; an expired receipt is ignored). A job held
//!   longer than a third of the visibility timeout (a slot far ahead, a store behind) has its
//!   lease extended, every third of it, so no other worker takes a job this one still holds.
//!
//! On shutdown, jobs still waiting for their slot are released at once, so another worker
//! takes them without waiting out their visibility timeout.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::{Backend, BackendConfig, finalize::Ephemeral};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::{RandomId, TaskId};
use apalis_core::worker::context::WorkerContext;
use chamberlain_domain::Timestamp;
use chamberlain_domain::model::PollJob;
use chamberlain_domain::ports::{Clock, LeaseReceipt, LeasedJob, PollQueue, QueueError};
use chamberlain_telemetry::instruments;
use futures_util::StreamExt as _;
use tokio::time::Sleep;

use crate::settle::{SettleLayer, Settler};

/// A pause after a failed lease before the next one.
const LEASE_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How much of its window (the time to the chamber's next slot) the oldest due job may have
/// waited before the worker serves the newest due jobs first.
const BEHIND_SHARE_OF_WINDOW: f64 = 0.5;

/// The most jobs a lease grows to: a reply of this many is a few MiB while it is read (a
/// lease of 32,768 took the worker's peak memory 50 MiB higher).
const LARGEST_LEASE: usize = 4096;

/// What the backend hands out next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// This held job, due now.
    Due(HeldKey),
    /// Nothing before this slot.
    At(Timestamp),
    /// Nothing held.
    Nothing,
}

/// Releases sent at once on shutdown.
const RELEASES_IN_FLIGHT: usize = 64;

/// How the backend leases jobs.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// Jobs asked for per lease call.
    pub batch: usize,
    /// Leased jobs held until their slot comes (beyond those being fetched).
    pub max_waiting: usize,
    /// How long a leased job stays invisible to other workers.
    pub visibility: Duration,
    /// How long an idle lease call waits for a job.
    pub wait: Duration,
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A leased job waiting for its slot.
#[derive(Debug)]
struct Held {
    job: LeasedJob,
    leased_at: tokio::time::Instant,
}

/// Held jobs in slot order, then lease order.
type HeldKey = (Timestamp, u64);

/// The poll queue as an apalis backend: yields each leased job as a `Task<PollJob>` when its
/// slot comes, with its [`LeaseReceipt`] as the task's id.
pub struct PollQueueBackend {
    queue: Arc<dyn PollQueue>,
    clock: Arc<dyn Clock>,
    settings: LeaseSettings,
    settler: Settler,
    waiting: BTreeMap<HeldKey, Held>,
    seq: u64,
    /// Jobs asked for by the next lease: [`LeaseSettings::batch`], doubled after each lease
    /// that came back full (a queue that is behind is emptied in fewer, larger calls), up to
    /// [`LeaseSettings::max_waiting`] and [`LARGEST_LEASE`]; back to `batch` after one that did
    /// not.
    lease_size: usize,
    /// Jobs asked for by the lease in flight.
    asked: usize,
    leasing: Option<Boxed<Result<Vec<LeasedJob>, QueueError>>>,
    pause: Option<Pin<Box<Sleep>>>,
    due: Option<Pin<Box<Sleep>>>,
    /// When the leases of jobs held long are next extended, and the extension in flight.
    extension_due: Option<Pin<Box<Sleep>>>,
    extending: Option<Boxed<()>>,
    closing: Option<Boxed<()>>,
}

impl std::fmt::Debug for PollQueueBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollQueueBackend")
            .field("settings", &self.settings)
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl PollQueueBackend {
    pub(crate) fn new(
        queue: Arc<dyn PollQueue>,
        clock: Arc<dyn Clock>,
        settings: LeaseSettings,
        settler: Settler,
    ) -> Self {
        Self {
            queue,
            clock,
            settings,
            settler,
            waiting: BTreeMap::new(),
            seq: 0,
            lease_size: settings.batch.max(1),
            asked: 0,
            leasing: None,
            pause: None,
            due: None,
            extension_due: None,
            extending: None,
            closing: None,
        }
    }

    fn hold(&mut self, jobs: Vec<LeasedJob>) {
        instruments().polls_started.add(jobs.len() as u64, &[]);
        let leased_at = tokio::time::Instant::now();
        for job in jobs {
            self.seq += 1;
            self.waiting
                .insert((job.job.poll.slot, self.seq), Held { job, leased_at });
        }
    }

    /// Every third of the visibility timeout, extends the leases of the jobs held at least that
    /// long. Registers `cx` with the next extension (or the one in flight).
    fn extend_held(&mut self, cx: &mut Context<'_>) {
        if let Some(extending) = &mut self.extending {
            if extending.as_mut().poll(cx).is_pending() {
                return;
            }
            self.extending = None;
        }
        let third = self.settings.visibility / 3;
        let now = tokio::time::Instant::now();
        let due = self
            .extension_due
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(now + third)));
        if due.as_mut().poll(cx).is_pending() {
            return;
        }
        due.as_mut().reset(now + third);
        // Registers `cx` with the next one.
        let _ = due.as_mut().poll(cx);
        let Some(cutoff) = now.checked_sub(third) else {
            return;
        };
        let receipts: Vec<LeaseReceipt> = self
            .waiting
            .values()
            .filter(|held| held.leased_at <= cutoff)
            .map(|held| held.job.receipt.clone())
            .collect();
        if receipts.is_empty() {
            return;
        }
        let (queue, visibility) = (self.queue.clone(), self.settings.visibility);
        let mut extending: Boxed<()> = Box::pin(async move {
            match queue.extend(&receipts, visibility).await {
                Ok(extended) => tracing::debug!(
                    held = receipts.len(),
                    extended,
                    "leases of jobs held for their slot extended"
                ),
                Err(e) => tracing::warn!(
                    error = %e, held = receipts.len(),
                    "leases of jobs held for their slot not extended; other workers may take them"
                ),
            }
        });
        if extending.as_mut().poll(cx).is_pending() {
            self.extending = Some(extending);
        }
    }

    /// Drives the lease in flight, and starts the next one while there is room to hold jobs.
    /// Registers `cx` with whatever it waits on.
    fn lease(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) {
        self.extend_held(cx);
        loop {
            if let Some(leasing) = &mut self.leasing {
                let Poll::Ready(result) = leasing.as_mut().poll(cx) else {
                    return;
                };
                self.leasing = None;
                match result {
                    Ok(jobs) => {
                        let batch = self.settings.batch.max(1);
                        self.lease_size = if jobs.len() >= self.asked {
                            (self.lease_size * 2)
                                .min(self.settings.max_waiting.max(batch))
                                .min(LARGEST_LEASE.max(batch))
                        } else {
                            batch
                        };
                        self.hold(jobs);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lease failed; retrying");
                        self.pause = Some(Box::pin(tokio::time::sleep(LEASE_RETRY_PAUSE)));
                    }
                }
            }
            if let Some(pause) = &mut self.pause {
                if pause.as_mut().poll(cx).is_pending() {
                    return;
                }
                self.pause = None;
            }
            let max_waiting = self.settings.max_waiting.max(1);
            let room = max_waiting - self.waiting.len().min(max_waiting);
            // A lease for a few places only once the held jobs run low (not one call per job
            // handed out while they are plenty).
            let worth_a_call = (self.settings.batch.min(max_waiting) / 4).max(1);
            if room < worth_a_call
                || worker.is_shutting_down()
                // While the backlog is full, `cx` is woken when it has room again.
                || !self.settler.backlog.has_room(cx)
            {
                return;
            }
            let (queue, n) = (self.queue.clone(), room.min(self.lease_size));
            self.asked = n;
            let (visibility, wait) = (self.settings.visibility, self.settings.wait);
            self.leasing = Some(Box::pin(
                async move { queue.lease(n, visibility, wait).await },
            ));
        }
    }

    /// The held job to hand out next, if one is due: an expired job first (it is recorded
    /// without a request, and frees its place at once); then, while the oldest due job has used
    /// less than [`BEHIND_SHARE_OF_WINDOW`] of its window, the oldest due (first in, first out);
    /// once it has used more (the worker is behind), the newest due, so the polls fetched are
    /// the ones that can still be on time, and the oldest expire.
    fn next_due(&self, now: Timestamp) -> Next {
        let Some((&(slot, seq), oldest)) = self.waiting.first_key_value() else {
            return Next::Nothing;
        };
        if slot > now {
            return Next::At(slot);
        }
        let job = &oldest.job.job;
        if job.is_expired_at(now) {
            return Next::Due((slot, seq));
        }
        let window = job.interval.as_duration();
        if now.saturating_since(slot) < window.mul_f64(BEHIND_SHARE_OF_WINDOW) {
            return Next::Due((slot, seq));
        }
        self.waiting
            .range(..=(now, u64::MAX))
            .next_back()
            .map_or(Next::Nothing, |(&key, _)| Next::Due(key))
    }

    fn task(held: Held) -> Task<PollJob> {
        let LeasedJob { job, receipt } = held.job;
        // The receipt is the task's id (no data map to allocate per job).
        TaskBuilder::new(job)
            .task_id(TaskId::String(receipt.0))
            .build()
    }
}

impl Backend for PollQueueBackend {
    type Task = Task<PollJob>;
    type Error = Infallible;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.lease(cx, worker);
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        loop {
            self.lease(cx, worker);
            let now = self.clock.now();
            let first = match self.next_due(now) {
                Next::Due(key) => {
                    if !self.settler.backlog.has_room(cx) {
                        return Poll::Pending;
                    }
                    let Some(held) = self.waiting.remove(&key) else {
                        return Poll::Pending;
                    };
                    return Poll::Ready(Some(Ok(Self::task(held))));
                }
                Next::At(first) => first,
                Next::Nothing => return Poll::Pending,
            };
            let deadline = tokio::time::Instant::now() + first.saturating_since(now);
            let due = self
                .due
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            due.as_mut().reset(deadline);
            if due.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        // A lease in flight finishes first, so the jobs it took are given back too.
        if let Some(leasing) = &mut self.leasing {
            let Poll::Ready(result) = leasing.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            self.leasing = None;
            if let Ok(jobs) = result {
                self.hold(jobs);
            }
        }
        if self.closing.is_none() {
            let receipts: Vec<LeaseReceipt> = std::mem::take(&mut self.waiting)
                .into_values()
                .map(|held| held.job.receipt)
                .collect();
            if receipts.is_empty() {
                return Poll::Ready(Ok(()));
            }
            tracing::info!(
                jobs = receipts.len(),
                "shutdown: giving back the jobs waiting for their slot"
            );
            let queue = self.queue.clone();
            self.closing = Some(Box::pin(
                futures_util::stream::iter(receipts).for_each_concurrent(RELEASES_IN_FLIGHT, move |r| {
                    let queue = queue.clone();
                    async move {
                        if let Err(e) = queue.release(&r, Duration::ZERO).await {
                            tracing::warn!(error = %e, "release on shutdown failed; the job returns after its visibility timeout");
                        }
                    }
                }),
            ));
        }
        match self.closing.as_mut().map(|c| c.as_mut().poll(cx)) {
            Some(Poll::Pending) => Poll::Pending,
            _ => {
                self.closing = None;
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl BackendConfig for PollQueueBackend {
    type Args = PollJob;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = LeaseSettings;
    type Layer = SettleLayer;

    fn config(&self) -> &Self::Config {
        &self.settings
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        SettleLayer::new(self.settler.clone())
    }
}
