#![doc = include_str!("../README.md")]

mod backend;
mod backlog;
mod cache;
mod polling;
mod settle;
mod writer;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use apalis::layers::WorkerBuilderExt as _;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::context::WorkerContext;
use chamberlain_domain::ports::PollQueue;
use chamberlain_domain::usecases::PollHandler;
use tokio::sync::mpsc;

pub use backend::{LeaseSettings, PollQueueBackend};
pub use backlog::BacklogBounds;
pub use cache::CachedChambers;
pub use polling::{PollService, PollSpanLayer};
pub use settle::{Polled, SettleLayer, Settled};

/// Fetches in flight per worker unless configured otherwise.
pub const DEFAULT_CONCURRENCY: usize = 512;

/// Leased polls held per worker (waiting for their slot, or due and not fetched yet) unless
/// configured otherwise: 10,000 chambers at 1 s with the scheduler's 200 ms lead hold about
/// 2,000; a worker that is behind holds up to this many to fetch the newest first, so this
/// covers a second of 30,000 chambers at 1 s (a few MiB).
pub const DEFAULT_MAX_WAITING: usize = 32_768;

/// Results waiting to be stored per worker, at most, unless configured otherwise: five seconds
/// of 10,000 chambers polled every second, ten of 5,000 (a store's usual stalls: a checkpoint,
/// a fresh table's first seconds; 20,000 was reached by a tuned server's first seconds at 5,000
/// chambers). With 8 detectors a poll's results take about 1 KiB, so the byte bound comes first
/// past ~64,000.
pub const DEFAULT_MAX_RESULTS_WAITING: usize = 50_000;

/// Their memory, at most (roughly), unless configured otherwise.
pub const DEFAULT_MAX_RESULTS_BYTES: usize = 64 * 1024 * 1024;

/// Settings of a worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Fetches in flight at once. A bound on connections too: after a stall, late polls are
    /// fetched this many at a time, not all at once.
    pub concurrency: usize,
    /// Leased polls held until their slot comes, beyond those being fetched. Polls are leased up
    /// to the scheduler's lead (`enqueue_ahead`) before their slot, so this must cover the polls
    /// due within that lead; a worker that is behind holds up to this many due polls, to fetch
    /// the newest first.
    pub max_waiting: usize,
    /// Jobs asked for per lease call.
    pub lease_batch: usize,
    /// How long a leased job stays invisible to other workers.
    pub visibility: Duration,
    /// A poll (reads, request, parsing) still running after this long is abandoned and its job
    /// left to be delivered again. `None`, the default: the visibility timeout, after which the
    /// job is another worker's anyway. The chamber's own timeout ends a request sooner, so a
    /// chamber whose timeout is longer than the visibility needs a longer visibility.
    pub poll_timeout: Option<Duration>,
    /// How long an idle lease call waits for a job.
    pub lease_wait: Duration,
    /// Results are written at least this often...
    pub flush_every: Duration,
    /// ...or as soon as this many polls are waiting. A write takes up to four times as many
    /// when more are waiting (a store that fell behind catches up in larger transactions).
    pub flush_max_polls: usize,
    /// Results fetched (or being fetched) and not stored yet, at most: while they are at this
    /// bound, or at `max_results_bytes`, the worker takes no new polls (backpressure).
    pub max_results_waiting: usize,
    /// The approximate memory of those results, at most.
    pub max_results_bytes: usize,
    /// A write not done by then (a stopped server) is abandoned and tried again; the results
    /// wait meanwhile.
    pub write_timeout: Duration,
    /// On shutdown, how long polls in flight may take to finish.
    pub drain_timeout: Duration,
    /// On shutdown, once they finished, how long the writer may take to store what it holds;
    /// what it could not store is not acknowledged (its jobs come back). With `drain_timeout`,
    /// the bound on a stop: 4 s + 4 s by default, within Docker's 10 s.
    pub shutdown_flush: Duration,
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
            poll_timeout: None,
            lease_wait: Duration::from_secs(1),
            flush_every: Duration::from_millis(50),
            flush_max_polls: 1_250,
            max_results_waiting: DEFAULT_MAX_RESULTS_WAITING,
            max_results_bytes: DEFAULT_MAX_RESULTS_BYTES,
            write_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(4),
            shutdown_flush: Duration::from_secs(4),
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

/// A worker: the poll handler and the queue it takes jobs from, run as an apalis worker.
///
/// The worker is the one owner of every job it leases: it tells the queue once how each ended
/// (acknowledged after its results are stored, or when there is nothing to store; released for
/// a retry), or leaves it to be delivered again when it could not be handled.
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

    /// Runs until `shutdown` resolves, then stops as apalis stops a worker (no new jobs; the
    /// polls in flight finish, for at most `drain_timeout`), gives back the jobs still waiting
    /// for their slot, flushes what was fetched, and reports. Infrastructure errors are logged
    /// and retried: a job that could not be completed is redelivered after its visibility
    /// timeout.
    ///
    /// The apalis worker, outside in: the backend's settle layer (tells the queue how each job
    /// ended), the poll span (the job's W3C trace context), the concurrency limit (fetches in
    /// flight), the per-poll timeout, and the poll handler (each poll on a task of its own).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> WorkerReport {
        let config = self.config;
        let (writes, inbox) = mpsc::unbounded_channel();
        let retries = Arc::new(AtomicU64::new(0));
        let backlog = Arc::new(backlog::Backlog::new(
            BacklogBounds {
                max_polls: config.max_results_waiting,
                max_bytes: config.max_results_bytes,
            },
            self.handler.clock.clone(),
        ));
        // The backlog's gauges, every second, whatever the writer is waiting on.
        let gauges = tokio::spawn({
            let backlog = backlog.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every.tick().await;
                    backlog.record_gauges();
                }
            }
        });
        let writer = tokio::spawn(writer::write_results(
            self.handler.clone(),
            self.queue.clone(),
            writer::WriterSettings {
                every: config.flush_every,
                max_polls: config.flush_max_polls,
                write_timeout: config.write_timeout,
                visibility: config.visibility,
                shutdown_flush: config.shutdown_flush,
            },
            backlog.clone(),
            inbox,
        ));
        let settler = settle::Settler {
            queue: self.queue.clone(),
            writes,
            retries: retries.clone(),
            backlog,
        };
        let backend = PollQueueBackend::new(
            self.queue.clone(),
            self.handler.clock.clone(),
            LeaseSettings {
                batch: config.lease_batch,
                max_waiting: config.max_waiting,
                visibility: config.visibility,
                wait: config.lease_wait,
            },
            settler,
        );
        let context = WorkerContext::new(&worker_name());
        let worker = WorkerBuilder::new(&context)
            .backend(backend)
            .layer(PollSpanLayer {
                trace_polls: config.trace_polls,
            })
            .concurrency(config.concurrency.max(1))
            .timeout(config.poll_timeout.unwrap_or(config.visibility))
            .build(PollService::new(self.handler));
        let mut running = Box::pin(worker.run());
        tokio::pin!(shutdown);
        let stopped = tokio::select! {
            ended = &mut running => Some(ended),
            () = &mut shutdown => None,
        };
        let ended = match stopped {
            Some(ended) => Some(ended),
            None => {
                if let Err(e) = context.stop() {
                    tracing::debug!(error = %e, "stopping a worker that had not started");
                }
                tokio::time::timeout(config.drain_timeout, &mut running)
                    .await
                    .ok()
            }
        };
        match ended {
            None => tracing::warn!(
                "shutdown: polls still in flight after the drain timeout; they will be redelivered"
            ),
            Some(Err(e)) => tracing::error!(error = %e, "the worker stopped"),
            Some(Ok(())) => {}
        }
        // The worker's service stack holds the writer's inbox: once it is gone, the writer
        // flushes what it has and stops.
        drop(running);
        let mut report = writer.await.unwrap_or_default();
        gauges.abort();
        report.retries = retries.load(Ordering::Relaxed);
        report
    }
}

/// A worker name unique to this process start.
fn worker_name() -> String {
    static STARTED: AtomicU64 = AtomicU64::new(0);
    format!(
        "chamberlain-worker-{}-{}",
        std::process::id(),
        STARTED.fetch_add(1, Ordering::Relaxed)
    )
}
