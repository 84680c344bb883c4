#![doc = include_str!("../README.md")]

mod cache;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use chamberlain_domain::model::PollJob;
use chamberlain_domain::ports::{LeaseReceipt, PollQueue, StoreError};
use chamberlain_domain::usecases::{JobOutcome, PollHandler, Prepared, ProcessedPoll};
use chamberlain_telemetry::instruments;
use opentelemetry::KeyValue;
use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument as _;

pub use cache::CachedChambers;

/// Fetches in flight per worker unless configured otherwise.
pub const DEFAULT_CONCURRENCY: usize = 512;

/// Leased polls waiting for their slot per worker unless configured otherwise: 10,000 chambers
/// at 1 s with the scheduler's 200 ms lead hold about 2,000.
pub const DEFAULT_MAX_WAITING: usize = 4096;

/// Settings of a worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Fetches in flight at once. A bound on connections too: after a stall, late polls are
    /// fetched this many at a time, not all at once.
    pub concurrency: usize,
    /// Leased polls held until their slot comes, beyond those being fetched. Polls are leased up
    /// to the scheduler's lead (`enqueue_ahead`) before their slot, so this must cover the polls
    /// due within that lead.
    pub max_waiting: usize,
    /// Jobs asked for per lease call.
    pub lease_batch: usize,
    /// How long a leased job stays invisible to other workers.
    pub visibility: Duration,
    /// How long an idle lease call waits for a job.
    pub lease_wait: Duration,
    /// Results are written at least this often...
    pub flush_every: Duration,
    /// ...or as soon as this many polls are waiting.
    pub flush_max_polls: usize,
    /// On shutdown, how long polls in flight may take to finish.
    pub drain_timeout: Duration,
    /// One span per poll (fetch, parse, write, ack), continuing the scheduler's trace: on when
    /// traces are exported.
    pub trace_polls: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            max_waiting: DEFAULT_MAX_WAITING,
            lease_batch: 256,
            visibility: Duration::from_secs(30),
            lease_wait: Duration::from_secs(1),
            flush_every: Duration::from_millis(50),
            flush_max_polls: 1_250,
            drain_timeout: Duration::from_secs(15),
            trace_polls: false,
        }
    }
}

/// What a worker did, reported when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub polls_completed: u64,
    pub readings_written: u64,
    pub retries: u64,
    pub failed_writes: u64,
}

/// A worker: the poll handler and the queue it takes jobs from. The worker is the one owner of
/// every job it leases: it tells the queue once how each ended (acknowledged after its
/// results are stored, or when its chamber is gone; released for a retry), or leaves it to be
/// delivered again when it could not be handled.
#[derive(Clone)]
pub struct Worker {
    pub handler: PollHandler,
    pub queue: Arc<dyn PollQueue>,
    pub config: WorkerConfig,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub fn new(handler: PollHandler, queue: Arc<dyn PollQueue>, config: WorkerConfig) -> Self {
        Self {
            handler,
            queue,
            config,
        }
    }

    /// Runs until `shutdown` resolves, then drains and flushes. Infrastructure errors are logged
    /// and retried: a job that could not be completed is redelivered after its visibility
    /// timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> WorkerReport {
        // A lease permit per leased job (waiting for its slot or being fetched), and a fetch
        // permit per fetch.
        let leasable = self.config.concurrency.max(1) + self.config.max_waiting;
        let permits = Arc::new(Semaphore::new(leasable));
        let fetches = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        // Unbounded on purpose: a slow batch write must never hold up fetching (polls stay on
        // time; their acks wait). What waits is bounded by the polls leased, each a few KiB.
        let (results, inbox) = mpsc::unbounded_channel::<Fetched>();
        let retries = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn(write_results(
            self.handler.clone(),
            self.queue.clone(),
            self.config.clone(),
            inbox,
        ));
        tokio::pin!(shutdown);
        loop {
            // Wait for room, then ask for as many jobs as there is room for.
            let first = tokio::select! {
                () = &mut shutdown => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let room = (1 + permits.available_permits()).min(self.config.lease_batch.max(1));
            let more = if room > 1 {
                permits.clone().try_acquire_many_owned(room as u32 - 1).ok()
            } else {
                None
            };
            let leased = tokio::select! {
                () = &mut shutdown => break,
                leased = self.queue.lease(room, self.config.visibility, self.config.lease_wait) => leased,
            };
            let leased = match leased {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "lease failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // One permit per job; unused permits go back.
            let mut pool = vec![first];
            if let Some(mut more) = more {
                while pool.len() < leased.len() {
                    match more.split(1) {
                        Some(p) => pool.push(p),
                        None => break,
                    }
                }
            }
            let metrics = instruments();
            metrics.polls_started.add(leased.len() as u64, &[]);
            for (job, permit) in leased.into_iter().zip(pool) {
                let (handler, results, fetches) =
                    (self.handler.clone(), results.clone(), fetches.clone());
                let traced = self.config.trace_polls && chamberlain_telemetry::traces_wanted();
                if self.config.trace_polls && !traced {
                    metrics.traces_skipped.add(1, &[]);
                }
                let span = if traced {
                    let span = tracing::info_span!(
                        "poll",
                        chamber.id = %job.job.poll.chamber_id,
                        slot = job.job.poll.slot.as_unix_millis(),
                        attempt = job.job.meta.attempt,
                    );
                    if let Some(trace) = &job.job.meta.trace {
                        chamberlain_telemetry::continue_trace(&span, trace);
                    }
                    span
                } else {
                    tracing::Span::none()
                };
                let (queue, retries) = (self.queue.clone(), retries.clone());
                tokio::spawn(async move {
                    // The scheduler enqueues polls ahead of their slot: hold the job until the
                    // slot comes, so the request goes out on time and never early.
                    let wait = job.job.poll.slot.saturating_since(handler.clock.now());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    let Ok(fetching) = fetches.acquire_owned().await else {
                        return;
                    };
                    metrics.in_flight.add(1, &[]);
                    let outcome = run_stages(&handler, &job.job, &span).await;
                    drop(fetching);
                    metrics.in_flight.add(-1, &[]);
                    let receipt = job.receipt;
                    match outcome {
                        Ok(JobOutcome::Done(poll)) => {
                            let _ = results.send(Fetched {
                                receipt,
                                poll,
                                span,
                            });
                        }
                        Ok(JobOutcome::Retry { delay, error }) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            metrics.polls_retried.add(1, &[]);
                            tracing::debug!(error = %error, "transient failure; retrying while the poll is current");
                            if let Err(e) = queue.release(&receipt, delay).await {
                                tracing::warn!(error = %e, "release failed; the job returns after its visibility timeout");
                            }
                        }
                        Ok(JobOutcome::Discard) => {
                            if let Err(e) = queue.ack(std::slice::from_ref(&receipt)).await {
                                tracing::warn!(error = %e, "ack of a deleted chamber's job failed");
                            }
                        }
                        Err(e) => tracing::warn!(
                            error = %e, chamber.id = %job.job.poll.chamber_id,
                            "poll not handled; it will be redelivered"
                        ),
                    }
                    drop(permit);
                });
            }
        }
        // Drain: wait for the polls in flight, then let the writer flush and stop.
        let drained = tokio::time::timeout(
            self.config.drain_timeout,
            permits.acquire_many(leasable as u32),
        )
        .await;
        if drained.is_err() {
            tracing::warn!(
                "shutdown: polls still in flight after the drain timeout; they will be redelivered"
            );
        }
        drop(results);
        let mut report = writer.await.unwrap_or_default();
        report.retries = retries.load(Ordering::Relaxed);
        report
    }
}

/// A fetched poll waiting to be stored, with its job's receipt and its trace span.
struct Fetched {
    receipt: LeaseReceipt,
    poll: ProcessedPoll,
    span: tracing::Span,
}

/// A child of a traced poll's span (none when the poll is not traced).
fn stage(poll: &tracing::Span, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if poll.is_none() {
        tracing::Span::none()
    } else {
        make()
    }
}

/// The handler's stages for one job, each in a span of its own when the poll is traced.
async fn run_stages(
    handler: &PollHandler,
    job: &PollJob,
    span: &tracing::Span,
) -> Result<JobOutcome, StoreError> {
    let attempt = match handler.prepare(job).instrument(span.clone()).await? {
        Prepared::Decided(outcome) => return Ok(outcome),
        Prepared::Send(attempt) => attempt,
    };
    let answer = handler
        .send(&attempt)
        .instrument(stage(
            span,
            || tracing::info_span!(parent: span, "poll.fetch"),
        ))
        .await;
    let parse = stage(
        span,
        || tracing::info_span!(parent: span, "poll.parse", status = tracing::field::Empty),
    );
    if let Ok(response) = &answer.result {
        parse.record("status", response.status);
    }
    handler.interpret(attempt, answer).instrument(parse).await
}

/// Buffers fetched polls and completes them in batches, acknowledging each batch's jobs once
/// its write returned.
async fn write_results(
    handler: PollHandler,
    queue: Arc<dyn PollQueue>,
    config: WorkerConfig,
    mut inbox: mpsc::UnboundedReceiver<Fetched>,
) -> WorkerReport {
    let mut report = WorkerReport::default();
    let mut buffer: Vec<Fetched> = Vec::new();
    let mut tick = tokio::time::interval(config.flush_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let closed = tokio::select! {
            item = inbox.recv() => match item {
                Some(fetched) => {
                    buffer.push(fetched);
                    false
                }
                None => true,
            },
            _ = tick.tick() => {
                flush(&handler, &*queue, &mut buffer, &mut report).await;
                false
            }
        };
        if buffer.len() >= config.flush_max_polls || (closed && !buffer.is_empty()) {
            flush(&handler, &*queue, &mut buffer, &mut report).await;
        }
        if closed {
            return report;
        }
    }
}

/// Stores the buffered polls in one write, then acknowledges their jobs; a failed write
/// acknowledges nothing (the jobs are delivered again after their visibility timeout).
async fn flush(
    handler: &PollHandler,
    queue: &dyn PollQueue,
    buffer: &mut Vec<Fetched>,
    report: &mut WorkerReport,
) {
    if buffer.is_empty() {
        return;
    }
    let n = buffer.len() as u64;
    let mut receipts = Vec::with_capacity(buffer.len());
    let mut polls = Vec::with_capacity(buffer.len());
    let mut spans = Vec::new();
    for fetched in std::mem::take(buffer) {
        receipts.push(fetched.receipt);
        polls.push(fetched.poll);
        if !fetched.span.is_none() {
            spans.push(fetched.span);
        }
    }
    let metrics = instruments();
    let writing: Vec<_> = spans
        .iter()
        .map(|p| tracing::info_span!(parent: p, "poll.write"))
        .collect();
    let done = match handler.complete(polls).await {
        Ok(done) => done,
        Err(e) => {
            report.failed_writes += 1;
            metrics.write_failures.add(1, &[]);
            tracing::warn!(error = %e, polls = n, "batch not completed; its jobs will be redelivered");
            return;
        }
    };
    drop(writing);
    let acking: Vec<_> = spans
        .iter()
        .map(|p| tracing::info_span!(parent: p, "poll.ack"))
        .collect();
    if let Err(e) = queue.ack(&receipts).await {
        tracing::warn!(
            error = %e, polls = n,
            "acknowledgement failed; the stored polls will be redelivered and found stored"
        );
    }
    drop(acking);
    report.polls_completed += n;
    report.readings_written += done.write.readings_new;
    metrics.readings_written.add(done.write.readings_new, &[]);
    metrics.write_batch.record(n, &[]);
    for entry in &done.stored {
        metrics
            .polls_completed
            .add(1, &[KeyValue::new("outcome", entry.outcome.code())]);
        if entry.requested_at.is_some() {
            metrics.lateness.record(entry.lateness.as_secs_f64(), &[]);
        }
        if let Some(latency) = entry.latency {
            metrics.duration.record(latency.as_secs_f64(), &[]);
        }
    }
}
