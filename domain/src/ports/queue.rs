//! The poll queue: due polls travel from the scheduler to the workers.

use std::time::Duration;

use async_trait::async_trait;

use crate::model::PollJob;
use crate::time::Timestamp;

/// Failures of the queue. Every variant may be retried later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue's backend cannot be reached or did not answer in time.
    #[error("poll queue unavailable: {message}")]
    Unavailable { message: String },
    /// The backend answered with something this adapter cannot read (a corrupt job).
    #[error("poll queue returned an unreadable job: {message}")]
    Corrupt { message: String },
}

/// Proof of a lease on one job, to ack or release it. Opaque: its content is the adapter's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseReceipt(pub String);

/// A job leased to a worker until its visibility timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedJob {
    pub job: PollJob,
    pub receipt: LeaseReceipt,
}

/// What an enqueue did: `new` jobs were added, `duplicates` were refused because the same poll
/// (chamber, slot) was enqueued within its dedup TTL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnqueueReport {
    pub new: u64,
    pub duplicates: u64,
}

/// A snapshot of the queue, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Jobs waiting to be leased (including released jobs whose delay has passed).
    pub ready: u64,
    /// Jobs leased and not yet acked.
    pub leased: u64,
    /// Released jobs waiting out their delay.
    pub delayed: u64,
    /// Enqueue time of the oldest ready job.
    pub oldest_ready_enqueued_at: Option<Timestamp>,
}

/// At-least-once delivery of poll jobs, deduplicated by poll identity at enqueue.
///
/// A leased job is invisible to other workers until its visibility timeout passes; then it is
/// delivered again with `meta.attempt` incremented. Workers ack a job only after its results are
/// durable.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait PollQueue: Send + Sync {
    /// Enqueues jobs, refusing any whose poll was enqueued within its
    /// [`PollJob::dedup_ttl`] (even if already acked), and any repeated within `jobs`.
    ///
    /// # Errors
    /// `Unavailable`. A failed call may have enqueued some jobs; calling again with the same
    /// jobs is safe (dedup) and reports them as duplicates.
    async fn enqueue(&self, jobs: &[PollJob]) -> Result<EnqueueReport, QueueError>;

    /// Leases up to `max` ready jobs for `visibility`, oldest first, waiting up to `wait` for
    /// the first one; an empty vector means none arrived in time.
    ///
    /// # Errors
    /// `Unavailable`; `Corrupt` (the unreadable job is removed, not redelivered forever).
    async fn lease(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<LeasedJob>, QueueError>;

    /// Removes the jobs for good. A receipt whose lease expired (the job may be with another
    /// worker by now) or that was already acked is ignored. Returns how many were removed.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn ack(&self, receipts: &[LeaseReceipt]) -> Result<u64, QueueError>;

    /// Keeps leased jobs from other workers for `visibility` more, from now: a worker holding
    /// results it cannot store yet keeps their jobs, so they are not fetched again. A receipt
    /// whose job was acked, or delivered again since (its lease expired and another lease took
    /// it), is ignored; a lease that expired but was not taken again is extended. Returns how
    /// many were extended.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn extend(
        &self,
        receipts: &[LeaseReceipt],
        visibility: Duration,
    ) -> Result<u64, QueueError>;

    /// Gives a leased job back for redelivery after `delay` (attempt + 1). An expired receipt is
    /// ignored.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn release(&self, receipt: &LeaseReceipt, delay: Duration) -> Result<(), QueueError>;

    /// # Errors
    /// `Unavailable`.
    async fn depth(&self) -> Result<QueueDepth, QueueError>;
}

/// A worker as the queue knows it: a consumer that has leased jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConsumer {
    /// The adapter's name for it (unique per worker process start).
    pub name: String,
    /// Jobs it holds now.
    pub leased: u64,
    /// How long since it last asked for jobs.
    pub idle: Duration,
}

/// Where a job is in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueuedJobState {
    /// Waiting to be leased.
    Ready,
    /// Leased to a worker, not yet acked.
    Leased,
    /// Released, waiting out its delay.
    Delayed,
}

/// One job in the queue, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    /// The adapter's identity of the job in the queue (not a receipt: it cannot ack).
    pub id: String,
    pub job: PollJob,
    pub state: QueuedJobState,
    /// The consumer holding it, when leased.
    pub consumer: Option<String>,
    /// When its current lease began, when leased.
    pub leased_at: Option<Timestamp>,
}

/// A read-only view of the poll queue for installation operators (the queue on the console).
/// Nothing here changes the queue or any lease; the views are snapshots and may be stale by
/// the time they are shown.
#[async_trait]
pub trait QueueInspector: Send + Sync {
    /// The consumers that asked for jobs within `within`, and any that still hold jobs (a dead
    /// worker's, until they are taken over), by name.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn consumers(&self, within: Duration) -> Result<Vec<QueueConsumer>, QueueError>;

    /// Jobs in `state`, in the order they will be delivered (ready, leased: oldest first;
    /// delayed: soonest visible first), skipping `offset`, at most `limit`.
    ///
    /// # Errors
    /// `Unavailable`; `Corrupt` is never returned: an unreadable job is left out.
    async fn jobs(
        &self,
        state: QueuedJobState,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<QueuedJob>, QueueError>;

    /// The job with this [`QueuedJob::id`], if it is still queued.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn job(&self, id: &str) -> Result<Option<QueuedJob>, QueueError>;
}
