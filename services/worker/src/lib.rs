#![doc = include_str!("../README.md")]

mod cache;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::ports::PollQueue;
use chamberlain_domain::usecases::{Fetched, PollHandler, ProcessedPoll};
use tokio::sync::{Semaphore, mpsc};

pub use cache::CachedChambers;

/// Settings of a worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Polls in flight at once.
    pub concurrency: usize,
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
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 512,
            lease_batch: 256,
            visibility: Duration::from_secs(30),
            lease_wait: Duration::from_secs(1),
            flush_every: Duration::from_millis(50),
            flush_max_polls: 1_250,
            drain_timeout: Duration::from_secs(15),
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

/// A worker: the poll handler and the queue it takes jobs from.
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
    /// Runs until `shutdown` resolves, then drains and flushes. Infrastructure errors are logged
    /// and retried: a job that could not be completed is redelivered after its visibility
    /// timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> WorkerReport {
        let concurrency = self.config.concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        // Unbounded on purpose: a slow batch write must never hold up fetching (polls stay on
        // time; their acks wait). What waits is bounded by the polls leased, each a few KiB.
        let (results, inbox) = mpsc::unbounded_channel::<Fetched>();
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
            for (job, permit) in leased.into_iter().zip(pool) {
                let (handler, results) = (self.handler.clone(), results.clone());
                tokio::spawn(async move {
                    match handler.fetch(&job).await {
                        Ok(fetched) => {
                            let _ = results.send(fetched);
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
            permits.acquire_many(concurrency as u32),
        )
        .await;
        if drained.is_err() {
            tracing::warn!(
                "shutdown: polls still in flight after the drain timeout; they will be redelivered"
            );
        }
        drop(results);
        writer.await.unwrap_or_default()
    }
}

/// Buffers poll results and completes them in batches.
async fn write_results(
    handler: PollHandler,
    queue: Arc<dyn PollQueue>,
    config: WorkerConfig,
    mut inbox: mpsc::UnboundedReceiver<Fetched>,
) -> WorkerReport {
    let mut report = WorkerReport::default();
    let mut buffer: Vec<ProcessedPoll> = Vec::new();
    let mut tick = tokio::time::interval(config.flush_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let closed = tokio::select! {
            item = inbox.recv() => match item {
                Some(Fetched::Done(p)) => {
                    buffer.push(p);
                    false
                }
                Some(Fetched::Retry { receipt, delay, error }) => {
                    report.retries += 1;
                    tracing::debug!(error = %error, "transient failure; retrying while the poll is current");
                    if let Err(e) = queue.release(&receipt, delay).await {
                        tracing::warn!(error = %e, "release failed; the job returns after its visibility timeout");
                    }
                    false
                }
                Some(Fetched::Discard { receipt }) => {
                    if let Err(e) = queue.ack(std::slice::from_ref(&receipt)).await {
                        tracing::warn!(error = %e, "ack of a deleted chamber's job failed");
                    }
                    false
                }
                None => true,
            },
            _ = tick.tick() => {
                flush(&handler, &mut buffer, &mut report).await;
                false
            }
        };
        if buffer.len() >= config.flush_max_polls || (closed && !buffer.is_empty()) {
            flush(&handler, &mut buffer, &mut report).await;
        }
        if closed {
            return report;
        }
    }
}

async fn flush(handler: &PollHandler, buffer: &mut Vec<ProcessedPoll>, report: &mut WorkerReport) {
    if buffer.is_empty() {
        return;
    }
    let batch = std::mem::take(buffer);
    let n = batch.len() as u64;
    match handler.complete(batch).await {
        Ok(done) => {
            report.polls_completed += n;
            report.readings_written += done.write.readings_new;
        }
        Err(e) => {
            report.failed_writes += 1;
            tracing::warn!(error = %e, polls = n, "batch not completed; its jobs will be redelivered");
        }
    }
}
