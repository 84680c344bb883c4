//! How each job ends, told to the queue once: the backend's middleware in the apalis worker
//! ([`SettleLayer`]), outside every layer of the worker's own, so it sees each job's final
//! outcome.
//!
//! Each job takes a place in the [`Backlog`] here, given back once its results are stored (or at
//! once when there is nothing to store).
//!
//! - `Done`: the poll's results go to the [`writer`](crate::writer), which stores many polls in
//!   one write and acknowledges their jobs together once the write returned (coalesced acks).
//!   A poll that expired while this worker's store was behind is recorded as expired for that
//!   reason (`store_behind`).
//!   The job's future ends once its results are handed over (not when they are stored: a
//!   future per job waiting for its batch cost the worker a tenth of its CPU per poll); on
//!   shutdown the writer stores what it was handed after the worker stops.
//! - `Retry`: the job is released for redelivery after the outcome's delay.
//! - `Discard`: the job is acknowledged (its chamber is gone, paused, or the poll expired).
//! - An error (a read failed, the per-poll timeout passed): nothing is told; the job is
//!   delivered again after its visibility timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use apalis_core::error::BoxDynError;
use apalis_core::layers::{Layer, Service};
use apalis_core::task::Task;
use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{ExpiryReason, PollJob, PollOutcome};
use chamberlain_domain::ports::{LeaseReceipt, PollQueue};
use chamberlain_domain::usecases::JobOutcome;
use chamberlain_telemetry::instruments;
use tokio::sync::mpsc;

use crate::backlog::{Backlog, Place};
use crate::writer::Fetched;

/// A job's outcome from the worker's layers, with the poll's trace span (none when the poll is
/// not traced).
#[derive(Debug)]
pub struct Polled {
    pub outcome: JobOutcome,
    pub span: tracing::Span,
}

/// How a job ended, as the queue was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Its poll's results are with the writer, which stores them and then acknowledges the
    /// job (a failed write acknowledges nothing: the job comes back).
    Written,
    /// Released for a retry while the poll is current.
    Released,
    /// Acknowledged without a result.
    Discarded,
}

/// What the settle layer needs: the queue, and the writer's inbox.
#[derive(Clone)]
pub(crate) struct Settler {
    pub(crate) queue: Arc<dyn PollQueue>,
    pub(crate) writes: mpsc::UnboundedSender<Fetched>,
    pub(crate) retries: Arc<AtomicU64>,
    pub(crate) backlog: Arc<Backlog>,
}

impl Settler {
    async fn settle(self, job: Settling, polled: Polled) -> Result<Settled, BoxDynError> {
        let Settling {
            receipt,
            mut place,
            expires_at,
        } = job;
        match polled.outcome {
            JobOutcome::Done(mut poll) => {
                let entry = &mut poll.record.entry;
                if let PollOutcome::Expired { reason } = &mut entry.outcome
                    && self.backlog.was_behind_within(entry.poll.slot, expires_at)
                {
                    *reason = ExpiryReason::StoreBehind;
                    instruments().polls_store_behind.add(1, &[]);
                }
                place.hold(&poll);
                self.writes
                    .send(Fetched {
                        receipt,
                        poll,
                        span: polled.span,
                        place,
                        fetched_at: tokio::time::Instant::now(),
                    })
                    .map_err(|_| "the writer has stopped; the job will be redelivered")?;
                Ok(Settled::Written)
            }
            JobOutcome::Retry { delay, error } => {
                drop(place);
                self.retries.fetch_add(1, Ordering::Relaxed);
                instruments().polls_retried.add(1, &[]);
                tracing::debug!(error = %error, "transient failure; retrying while the poll is current");
                if let Err(e) = self.queue.release(&receipt, delay).await {
                    tracing::warn!(error = %e, "release failed; the job returns after its visibility timeout");
                }
                Ok(Settled::Released)
            }
            JobOutcome::Discard => {
                drop(place);
                if let Err(e) = self.queue.ack(std::slice::from_ref(&receipt)).await {
                    tracing::warn!(error = %e, "ack of a discarded job failed; it will be redelivered and discarded again");
                }
                Ok(Settled::Discarded)
            }
        }
    }
}

/// A job being settled: its receipt, its place in the backlog, and when it expires.
struct Settling {
    receipt: LeaseReceipt,
    place: Place,
    expires_at: Timestamp,
}

/// The backend's middleware: settles each job with the queue once its layers returned.
#[derive(Clone)]
pub struct SettleLayer {
    settler: Settler,
}

impl std::fmt::Debug for SettleLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettleLayer").finish_non_exhaustive()
    }
}

impl SettleLayer {
    pub(crate) fn new(settler: Settler) -> Self {
        Self { settler }
    }
}

impl<S> Layer<S> for SettleLayer {
    type Service = SettleService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SettleService {
            inner,
            settler: self.settler.clone(),
        }
    }
}

/// See [`SettleLayer`].
#[derive(Clone)]
pub struct SettleService<S> {
    inner: S,
    settler: Settler,
}

impl<S> std::fmt::Debug for SettleService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettleService").finish_non_exhaustive()
    }
}

impl<S> Service<Task<PollJob>> for SettleService<S>
where
    S: Service<Task<PollJob>, Response = Polled>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError> + Send,
{
    type Response = Settled;
    type Error = BoxDynError;
    type Future = Pin<Box<dyn Future<Output = Result<Settled, BoxDynError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<PollJob>) -> Self::Future {
        // The backend hands out a job only while the backlog has room, and this runs at once
        // after it, on the same task: the place is there.
        let place = self.settler.backlog.take();
        let receipt = match task.task_id() {
            Some(apalis_core::task::task_id::TaskId::String(id)) => Some(LeaseReceipt(id.clone())),
            _ => None,
        };
        let chamber = task.args.poll.chamber_id;
        let expires_at = task.args.expires_at();
        let handled = self.inner.call(task);
        let settler = self.settler.clone();
        Box::pin(async move {
            let receipt = receipt.ok_or("a task without a lease receipt")?;
            let job = Settling {
                receipt,
                place,
                expires_at,
            };
            match handled.await {
                Ok(polled) => settler.settle(job, polled).await,
                Err(e) => {
                    let e: BoxDynError = e.into();
                    tracing::warn!(error = %e, chamber.id = %chamber, "poll not handled; it will be redelivered");
                    Err(e)
                }
            }
        })
    }
}
