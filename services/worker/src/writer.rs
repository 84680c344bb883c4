//! The batched writer: stores fetched polls many at a time, then acknowledges their jobs in one
//! call (coalesced acks).

use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::ports::{LeaseReceipt, PollQueue};
use chamberlain_domain::usecases::{PollHandler, ProcessedPoll};
use chamberlain_telemetry::instruments;
use opentelemetry::KeyValue;
use tokio::sync::mpsc;

use crate::WorkerReport;

/// A fetched poll waiting to be stored, with its job's receipt and its trace span.
pub(crate) struct Fetched {
    pub(crate) receipt: LeaseReceipt,
    pub(crate) poll: ProcessedPoll,
    pub(crate) span: tracing::Span,
}

/// When the writer flushes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlushSettings {
    /// At least this often...
    pub(crate) every: Duration,
    /// ...or as soon as this many polls are waiting.
    pub(crate) max_polls: usize,
}

/// Buffers fetched polls and completes them in batches until every sender is gone, then
/// flushes what is left and reports.
pub(crate) async fn write_results(
    handler: PollHandler,
    queue: Arc<dyn PollQueue>,
    flush: FlushSettings,
    mut inbox: mpsc::UnboundedReceiver<Fetched>,
) -> WorkerReport {
    let mut report = WorkerReport::default();
    let mut buffer: Vec<Fetched> = Vec::new();
    let mut tick = tokio::time::interval(flush.every);
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
                store(&handler, &*queue, &mut buffer, &mut report).await;
                false
            }
        };
        if buffer.len() >= flush.max_polls || (closed && !buffer.is_empty()) {
            store(&handler, &*queue, &mut buffer, &mut report).await;
        }
        if closed {
            return report;
        }
    }
}

/// Stores the buffered polls in one write, then acknowledges their jobs; a failed write
/// acknowledges nothing (the jobs are delivered again after their visibility timeout).
async fn store(
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
