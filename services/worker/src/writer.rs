//! The batched writer: stores fetched polls many at a time, then acknowledges their jobs in one
//! call (coalesced acks). Two stages, overlapping: one stores batch after batch; the other
//! moves health, publishes events and acknowledges each stored batch, in order, while the next
//! is being stored (a batch's jobs are acknowledged only once it is stored).
//!
//! A write that fails (the store restarting) or does not finish within `write_timeout` (a
//! stopped server) keeps its polls waiting, in order, and is tried again after a pause that
//! grows to [`MAX_RETRY_PAUSE`]; nothing fetched is dropped. A write the store refuses for
//! good (a reading of a detector removed since the poll was fetched: the port refuses the whole
//! batch for one bad row) is split in halves until the polls it refuses are alone; those are
//! given back to the queue, to be fetched again with the chamber as it is now, and the others
//! are stored: one bad poll never holds up the rest. Results waiting longer than a
//! third of the visibility timeout have their leases extended, so no other worker fetches them
//! again. How many may wait is the [`Backlog`](crate::backlog::Backlog)'s bound: the backend
//! hands out no job while it is reached.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::ports::{LeaseReceipt, PollQueue, StoreError, WriteReport};
use chamberlain_domain::usecases::{PollHandler, ProcessedPoll};
use chamberlain_telemetry::instruments;
use opentelemetry::KeyValue;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::WorkerReport;
use crate::backlog::{Backlog, Place};

/// How long a poll the store refused waits in the queue before it is fetched again (its
/// chamber is read again from the store first: `PollReads::outdated`).
pub(crate) const REFUSED_POLL_DELAY: Duration = Duration::from_secs(1);
/// When more results wait than `max_polls` (the store fell behind), one write takes up to this
/// many times `max_polls`: fewer, larger transactions (one commit, one acknowledgement, one
/// health pass per write) let a store that is behind catch up instead of falling further behind.
pub(crate) const CATCH_UP_FACTOR: usize = 4;
/// The longest pause between two attempts at a write that keeps failing.
pub(crate) const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A fetched poll waiting to be stored, with its job's receipt, its trace span, and its place
/// in the backlog (given back when it is dropped).
pub(crate) struct Fetched {
    pub(crate) receipt: LeaseReceipt,
    pub(crate) poll: ProcessedPoll,
    pub(crate) span: tracing::Span,
    pub(crate) place: Place,
    pub(crate) fetched_at: Instant,
}

/// How the writer writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterSettings {
    /// Flush at least this often...
    pub(crate) every: Duration,
    /// ...or as soon as this many polls are waiting; a write takes up to
    /// [`CATCH_UP_FACTOR`] times as many when more are waiting.
    pub(crate) max_polls: usize,
    /// A write not done by then is abandoned (it stores all or nothing) and tried again.
    pub(crate) write_timeout: Duration,
    /// The jobs' lease: results waiting a third of it have their leases extended.
    pub(crate) visibility: Duration,
    /// Once the worker stopped, how long the writer may take to store what it holds.
    pub(crate) shutdown_flush: Duration,
}

/// When the next attempt at a failing write may start.
#[derive(Debug, Default)]
struct Retry {
    not_before: Option<Instant>,
    pause: Duration,
}

impl Retry {
    fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    fn failed(&mut self, now: Instant) {
        self.pause = (self.pause * 2).clamp(FIRST_RETRY_PAUSE, MAX_RETRY_PAUSE);
        self.not_before = Some(now + self.pause);
    }

    fn succeeded(&mut self) {
        *self = Self::default();
    }
}

/// The writer's state: what it holds and how its writes go.
struct Writer {
    handler: PollHandler,
    queue: Arc<dyn PollQueue>,
    settings: WriterSettings,
    backlog: Arc<Backlog>,
    buffer: VecDeque<Fetched>,
    retry: Retry,
    /// The most polls the next write takes: `max_polls` × [`CATCH_UP_FACTOR`], halved after a
    /// write the store refused for good (to find the polls it refuses), doubled back after each
    /// stored write.
    batch_limit: usize,
    next_extension: Instant,
    report: WorkerReport,
    /// The second stage's inbox ([`Stored`]), and the stage itself.
    finishing: Option<mpsc::Sender<Stored>>,
    finisher: Option<tokio::task::JoinHandle<()>>,
}

/// Buffers fetched polls and stores them in batches until every sender is gone, then stores
/// what is left (within `shutdown_flush`) and reports.
pub(crate) async fn write_results(
    handler: PollHandler,
    queue: Arc<dyn PollQueue>,
    settings: WriterSettings,
    backlog: Arc<Backlog>,
    mut inbox: mpsc::UnboundedReceiver<Fetched>,
) -> WorkerReport {
    // One batch waits for the second stage while it finishes another.
    let (finishing, stored) = mpsc::channel(1);
    let finisher = tokio::spawn(finish_stored(handler.clone(), queue.clone(), stored));
    let mut writer = Writer {
        handler,
        queue,
        settings: WriterSettings {
            max_polls: settings.max_polls.max(1),
            ..settings
        },
        backlog,
        buffer: VecDeque::new(),
        retry: Retry::default(),
        batch_limit: settings.max_polls.max(1) * CATCH_UP_FACTOR,
        next_extension: Instant::now() + settings.visibility / 3,
        report: WorkerReport::default(),
        finishing: Some(finishing),
        finisher: Some(finisher),
    };
    let mut tick = tokio::time::interval(settings.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            item = inbox.recv() => match item {
                Some(fetched) => {
                    writer.take(fetched);
                    if writer.buffer.len() >= writer.settings.max_polls {
                        writer.take_waiting(&mut inbox);
                        writer.write_full_batches().await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                writer.take_waiting(&mut inbox);
                writer.write_all().await;
                writer.extend_leases().await;
            }
        }
    }
    writer.flush_on_shutdown().await;
    writer.backlog.record_gauges();
    writer.report
}

/// A batch stored, on its way through the writer's second stage: health and events derived
/// from it, then its jobs acknowledged. The stage takes one batch at a time, in order, while the
/// writer stores the next: a write's time is the longer of the two stages, not their sum.
struct Stored {
    polls: Vec<ProcessedPoll>,
    write: WriteReport,
    /// Each poll's receipt, trace span, place in the backlog (given back once acknowledged) and
    /// when it was fetched.
    rest: Vec<(LeaseReceipt, tracing::Span, Place, Instant)>,
    timeout: Duration,
}

impl Stored {
    /// Moves health, publishes events, then acknowledges the batch's jobs and gives back their
    /// places.
    async fn finish(self, handler: &PollHandler, queue: &dyn PollQueue) {
        let Self {
            polls,
            write,
            rest,
            timeout,
        } = self;
        let n = rest.len();
        let metrics = instruments();
        // Health and events are derived: a store that stops answering here costs them for this
        // batch (logged), never the stored results.
        let deriving = Instant::now();
        let derived = tokio::time::timeout(timeout, handler.after_store(polls, write)).await;
        metrics.write_duration.record(
            deriving.elapsed().as_secs_f64(),
            &[KeyValue::new("stage", "derive")],
        );
        let done = match derived {
            Ok(done) => Some(done),
            Err(_) => {
                tracing::warn!(
                    polls = n,
                    "stored, but health and events not done in time; skipped for this batch"
                );
                None
            }
        };
        let receipts: Vec<LeaseReceipt> = rest.iter().map(|(r, ..)| r.clone()).collect();
        let acking: Vec<_> = rest
            .iter()
            .filter(|(_, span, ..)| !span.is_none())
            .map(|(_, span, ..)| tracing::info_span!(parent: span, "poll.ack"))
            .collect();
        let acked = Instant::now();
        if let Err(e) = queue.ack(&receipts).await {
            tracing::warn!(
                error = %e, polls = n,
                "acknowledgement failed; the stored polls will be redelivered and found stored"
            );
        }
        drop(acking);
        metrics.write_duration.record(
            acked.elapsed().as_secs_f64(),
            &[KeyValue::new("stage", "ack")],
        );
        // The batch's places go back to the backlog here.
        drop(rest);
        for entry in done.iter().flat_map(|d| &d.stored) {
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
}

/// The writer's second stage: finishes stored batches one at a time, in order, until the
/// writer drops its sender.
async fn finish_stored(
    handler: PollHandler,
    queue: Arc<dyn PollQueue>,
    mut stored: mpsc::Receiver<Stored>,
) {
    while let Some(batch) = stored.recv().await {
        batch.finish(&handler, queue.as_ref()).await;
    }
}

impl Writer {
    fn take(&mut self, fetched: Fetched) {
        if self.buffer.is_empty() {
            self.backlog.set_oldest(Some(fetched.fetched_at));
        }
        self.buffer.push_back(fetched);
    }

    /// Moves results that arrived during the last write from the inbox into the buffer, up to
    /// the largest write, so the next write takes them together.
    fn take_waiting(&mut self, inbox: &mut mpsc::UnboundedReceiver<Fetched>) {
        while self.buffer.len() < self.batch_limit {
            match inbox.try_recv() {
                Ok(fetched) => self.take(fetched),
                Err(_) => break,
            }
        }
    }

    /// Writes while a whole batch is waiting (and writes succeed).
    async fn write_full_batches(&mut self) {
        while self.buffer.len() >= self.settings.max_polls && self.retry.ready(Instant::now()) {
            let timeout = self.settings.write_timeout;
            if !self.write_batch(timeout).await {
                return;
            }
        }
    }

    /// Writes everything waiting, batch by batch, unless a failed write is pausing.
    async fn write_all(&mut self) {
        while !self.buffer.is_empty() && self.retry.ready(Instant::now()) {
            let timeout = self.settings.write_timeout;
            if !self.write_batch(timeout).await {
                return;
            }
        }
    }

    /// Once the worker stopped: writes what is left, for at most `shutdown_flush`. What could
    /// not be written is dropped without acknowledging its jobs, which come back to a worker
    /// after their visibility timeout.
    async fn flush_on_shutdown(&mut self) {
        let deadline = Instant::now() + self.settings.shutdown_flush;
        while !self.buffer.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if let Some(at) = self.retry.not_before.filter(|at| *at > now) {
                tokio::time::sleep_until(at.min(deadline)).await;
                continue;
            }
            let timeout = self.settings.write_timeout.min(deadline - now);
            self.write_batch(timeout).await;
        }
        if !self.buffer.is_empty() {
            tracing::warn!(
                polls = self.buffer.len(),
                "shutdown: results not stored in time; their jobs were not acknowledged and will be delivered again"
            );
            self.buffer.clear();
            self.backlog.set_oldest(None);
        }
        // The batches stored last are acknowledged by the second stage, within the same bound.
        self.finishing = None;
        if let Some(mut finisher) = self.finisher.take()
            && tokio::time::timeout_at(deadline, &mut finisher)
                .await
                .is_err()
        {
            finisher.abort();
            tracing::warn!(
                "shutdown: stored results not acknowledged in time; their jobs will be delivered again and found stored"
            );
        }
    }

    /// Stores the oldest batch in one write, and hands it to the second stage ([`Stored`]),
    /// which moves health, publishes events and acknowledges its jobs. A write that fails or
    /// takes longer than `timeout` puts the batch back in front, to be written again after a
    /// pause; one the store refuses for good is put back to be written in halves at once, and a
    /// single poll it refuses is given back to the queue ([`Writer::refused`]). Returns whether
    /// the buffer moved on (stored or refused).
    async fn write_batch(&mut self, timeout: Duration) -> bool {
        let n = self.buffer.len().min(self.batch_limit);
        let mut polls = Vec::with_capacity(n);
        let mut rest = Vec::with_capacity(n);
        for fetched in self.buffer.drain(..n) {
            polls.push(fetched.poll);
            rest.push((
                fetched.receipt,
                fetched.span,
                fetched.place,
                fetched.fetched_at,
            ));
        }
        let metrics = instruments();
        let writing: Vec<_> = rest
            .iter()
            .filter(|(_, span, ..)| !span.is_none())
            .map(|(_, span, ..)| tracing::info_span!(parent: span, "poll.write"))
            .collect();
        let started = Instant::now();
        let stored = tokio::time::timeout(timeout, self.handler.store(&polls)).await;
        drop(writing);
        metrics.write_duration.record(
            started.elapsed().as_secs_f64(),
            &[KeyValue::new("stage", "store")],
        );
        let write = match stored {
            Ok(Ok(write)) => write,
            Ok(Err(e)) if !e.is_transient() && n == 1 => {
                self.report.failed_writes += 1;
                metrics
                    .write_failures
                    .add(1, &[KeyValue::new("kind", "refused")]);
                self.refused(&polls[0], &rest[0].0, &e).await;
                self.backlog
                    .set_oldest(self.buffer.front().map(|f| f.fetched_at));
                self.backlog.record_gauges();
                // Dropping `rest` gives the poll's place back.
                return true;
            }
            failed => {
                let refused = matches!(&failed, Ok(Err(e)) if !e.is_transient());
                let reason = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {} ms", timeout.as_millis()),
                };
                self.report.failed_writes += 1;
                if refused {
                    // Written again at once, half at a time, until the polls the store refuses
                    // are found.
                    metrics
                        .write_failures
                        .add(1, &[KeyValue::new("kind", "refused")]);
                    self.batch_limit = (n / 2).max(1);
                    tracing::info!(
                        error = %reason, polls = n,
                        "the store refused a batch; writing it in halves to find the polls it refuses"
                    );
                } else {
                    metrics
                        .write_failures
                        .add(1, &[KeyValue::new("kind", "unavailable")]);
                    self.retry.failed(Instant::now());
                    tracing::warn!(
                        error = %reason, polls = n, waiting = self.buffer.len() + n,
                        "results not stored; they wait and are written again"
                    );
                }
                for (poll, (receipt, span, place, fetched_at)) in polls.into_iter().zip(rest).rev()
                {
                    self.buffer.push_front(Fetched {
                        receipt,
                        poll,
                        span,
                        place,
                        fetched_at,
                    });
                }
                self.backlog.record_gauges();
                return false;
            }
        };
        self.retry.succeeded();
        self.batch_limit = (self.batch_limit * 2).min(self.settings.max_polls * CATCH_UP_FACTOR);
        self.backlog
            .set_oldest(self.buffer.front().map(|f| f.fetched_at));
        self.report.polls_completed += n as u64;
        self.report.readings_written += write.readings_new;
        metrics.readings_written.add(write.readings_new, &[]);
        metrics.write_batch.record(n as u64, &[]);
        // Health, events and the acknowledgement overlap the next write (they wait here only
        // while the stage has a batch queued already).
        let stored = Stored {
            polls,
            write,
            rest,
            timeout,
        };
        let unsent = match &self.finishing {
            Some(finishing) => finishing
                .send(stored)
                .await
                .err()
                .map(|mpsc::error::SendError(stored)| stored),
            None => Some(stored),
        };
        // The stage is gone (it panicked, or the writer is stopping): finished here instead.
        if let Some(stored) = unsent {
            stored.finish(&self.handler, self.queue.as_ref()).await;
        }
        true
    }

    /// A poll the store refuses on its own: its chamber's cached definition is dropped and its
    /// job goes back to the queue, to be fetched again (with the chamber as it is now) after
    /// [`REFUSED_POLL_DELAY`]; a poll refused until its window closes ends in the ledger as
    /// expired. Its results are not stored.
    async fn refused(&mut self, poll: &ProcessedPoll, receipt: &LeaseReceipt, e: &StoreError) {
        let id = poll.record.entry.poll;
        tracing::warn!(
            error = %e, chamber = %id.chamber_id, slot = %id.slot,
            "the store refused this poll's results; its job goes back to the queue to be fetched again"
        );
        self.handler.reads.outdated(id.chamber_id);
        if let Err(e) = self.queue.release(receipt, REFUSED_POLL_DELAY).await {
            tracing::warn!(error = %e, "release failed; the job returns after its visibility timeout");
        }
    }

    /// Extends the leases of results that have waited a third of the visibility timeout (a
    /// store that is behind), at most every third of it.
    async fn extend_leases(&mut self) {
        let now = Instant::now();
        let third = self.settings.visibility / 3;
        if now < self.next_extension {
            return;
        }
        self.next_extension = now + third;
        let Some(cutoff) = now.checked_sub(third) else {
            return;
        };
        let receipts: Vec<LeaseReceipt> = self
            .buffer
            .iter()
            .take_while(|f| f.fetched_at <= cutoff)
            .map(|f| f.receipt.clone())
            .collect();
        if receipts.is_empty() {
            return;
        }
        match self.queue.extend(&receipts, self.settings.visibility).await {
            Ok(extended) => tracing::debug!(
                waiting = receipts.len(),
                extended,
                "leases of results waiting to be stored extended"
            ),
            Err(e) => tracing::warn!(
                error = %e, waiting = receipts.len(),
                "leases of results waiting to be stored not extended; other workers may fetch them again"
            ),
        }
    }
}
