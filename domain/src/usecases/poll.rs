//! Handling one poll: fetch, parse, map values to detectors, store readings and the ledger
//! entry, acknowledge, move health, publish events.
//!
//! Split in two so workers can batch: [`PollHandler::fetch`] turns a leased job into results
//! (no writes), and [`PollHandler::complete`] stores many results in one write, acknowledges
//! their jobs only after that write returned, then updates health and publishes events.
//! [`PollHandler::handle`] does both for a single job.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;

use crate::model::{
    Chamber, ChamberHealth, ChamberId, CorruptionReason, Detector, DetectorKey, Finite,
    HealthPolicy, HealthTransition, LedgerEntry, PollId, PollKind, PollOutcome, Reading,
    ReadingValue, ResponseFormat,
};
use crate::parse::{JsonDocument, PrometheusDocument, ValueProblem};
use crate::ports::{
    BatchRepository, ChamberClient, ChamberHealthRepository, ChamberRepository, Clock, DomainEvent,
    EventPublisher, FetchError, FetchRequest, LeaseReceipt, LeasedJob, PollQueue, PollRecord,
    QueueError, ReadingRepository, Repositories, RoutingTag, StoreError, WriteReport,
};

/// Tunables of poll handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSettings {
    /// Wait before retrying a transient failure (only while the poll is still current).
    pub retry_backoff: Duration,
    /// Attempts of a backfill poll (which has no next slot to expire at).
    pub max_backfill_attempts: u32,
    /// Optimistic-concurrency retries of a health update before giving up on it.
    pub health_write_attempts: u32,
}

impl Default for PollSettings {
    fn default() -> Self {
        Self {
            retry_backoff: Duration::from_millis(250),
            max_backfill_attempts: 3,
            health_write_attempts: 5,
        }
    }
}

/// A poll's results, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedPoll {
    pub receipt: LeaseReceipt,
    pub routing: RoutingTag,
    pub health_policy: HealthPolicy,
    pub record: PollRecord,
}

/// What [`PollHandler::fetch`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// Results to store, then acknowledge.
    Done(ProcessedPoll),
    /// A transient failure while the poll is still current: release the job for another try.
    Retry {
        receipt: LeaseReceipt,
        delay: Duration,
        error: FetchError,
    },
    /// The chamber was deleted: acknowledge without a ledger entry.
    Discard { receipt: LeaseReceipt },
}

/// Told by [`PollHandler::complete_observed`] as a batch moves on.
pub trait CompletionStages: Send {
    /// The batch is durable.
    fn written(&mut self);
    /// Its jobs were acknowledged (or the acknowledgement failed).
    fn acked(&mut self);
}

/// Observes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStages;

impl CompletionStages for NoStages {
    fn written(&mut self) {}
    fn acked(&mut self) {}
}

/// What [`PollHandler::complete`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    pub write: WriteReport,
    pub acked: u64,
    pub transitions: Vec<HealthTransition>,
}

/// What [`PollHandler::handle`] did with one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Completed(Completion),
    Retried { delay: Duration, error: FetchError },
    Discarded,
}

/// Failures of poll handling. In each case the job was **not** acknowledged: it will be
/// delivered again after its visibility timeout, and the idempotent write makes that safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    #[error("could not store poll results: {0}")]
    Store(#[from] StoreError),
    #[error("could not acknowledge polls: {0}")]
    Queue(#[from] QueueError),
}

/// The poll-handling use case. See the module docs.
#[derive(Clone)]
pub struct PollHandler {
    pub chambers: Arc<dyn ChamberRepository>,
    pub batches: Arc<dyn BatchRepository>,
    pub readings: Arc<dyn ReadingRepository>,
    pub health: Arc<dyn ChamberHealthRepository>,
    pub queue: Arc<dyn PollQueue>,
    pub client: Arc<dyn ChamberClient>,
    pub events: Arc<dyn EventPublisher>,
    pub clock: Arc<dyn Clock>,
    pub settings: PollSettings,
}

impl std::fmt::Debug for PollHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollHandler")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The outcome of reading a response, and each detector's value. Pure.
pub fn interpret_response(
    format: ResponseFormat,
    detectors: &[Detector],
    status: u16,
    body: &[u8],
) -> (PollOutcome, Vec<ReadingValue>) {
    if !(200..300).contains(&status) {
        return (PollOutcome::HttpStatus { status }, Vec::new());
    }
    let parsed = match format {
        ResponseFormat::Json => JsonDocument::parse(body).map(Parsed::Json),
        ResponseFormat::Prometheus => PrometheusDocument::parse(body).map(Parsed::Prometheus),
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => {
            let values = detectors
                .iter()
                .map(|_| ReadingValue::Corrupted(CorruptionReason::MalformedResponse))
                .collect();
            return (
                PollOutcome::Malformed {
                    reason: e.to_string(),
                },
                values,
            );
        }
    };
    let values: Vec<ReadingValue> = detectors
        .iter()
        .map(|d| match parsed.value(&d.key) {
            Ok(v) => match Finite::new(v) {
                Ok(f) if d.range.contains(v) => ReadingValue::Measured(f),
                Ok(_) => ReadingValue::Corrupted(CorruptionReason::Implausible),
                Err(_) => ReadingValue::Corrupted(CorruptionReason::NonFinite),
            },
            Err(problem) => ReadingValue::Corrupted(problem.into()),
        })
        .collect();
    let corrupted = values.iter().filter(|v| v.is_corrupted()).count();
    let outcome = if corrupted == 0 {
        PollOutcome::Ok
    } else {
        PollOutcome::CorruptedValues {
            corrupted: u32::try_from(corrupted).unwrap_or(u32::MAX),
        }
    };
    (outcome, values)
}

/// A response body read in its chamber's format.
enum Parsed {
    Json(JsonDocument),
    Prometheus(PrometheusDocument),
}

impl Parsed {
    fn value(&self, key: &DetectorKey) -> Result<f64, ValueProblem> {
        match (self, key) {
            (Self::Json(doc), DetectorKey::JsonPointer(p)) => doc.value(p),
            (Self::Prometheus(doc), DetectorKey::Metric(m)) => doc.value(m),
            // A key of the other format cannot be in this response (the chamber's format
            // changed under its detectors).
            _ => Err(ValueProblem::Missing),
        }
    }
}

fn fetch_error_outcome(e: &FetchError) -> PollOutcome {
    match e {
        FetchError::Timeout => PollOutcome::Timeout,
        FetchError::Connect { reason } => PollOutcome::ConnectionFailed {
            reason: reason.clone(),
        },
        FetchError::Blocked { reason } => PollOutcome::Blocked {
            reason: reason.clone(),
        },
        FetchError::TooLarge { limit_bytes } => PollOutcome::TooLarge {
            limit_bytes: *limit_bytes,
        },
        FetchError::Protocol { reason } => PollOutcome::Malformed {
            reason: reason.clone(),
        },
    }
}

fn routing(chamber: &Chamber) -> RoutingTag {
    RoutingTag {
        organization_id: chamber.organization_id,
        section_id: Some(chamber.section_id),
        chamber_id: Some(chamber.id),
    }
}

impl PollHandler {
    /// With the default [`PollSettings`]. Chambers and batches are read through
    /// `repositories` (a worker may hand in a cached pair).
    pub fn new(
        repositories: &Repositories,
        queue: Arc<dyn PollQueue>,
        client: Arc<dyn ChamberClient>,
        events: Arc<dyn EventPublisher>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            chambers: repositories.chambers.clone(),
            batches: repositories.batches.clone(),
            readings: repositories.readings.clone(),
            health: repositories.health.clone(),
            queue,
            client,
            events,
            clock,
            settings: PollSettings::default(),
        }
    }

    #[must_use]
    pub fn with_settings(mut self, settings: PollSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Fetches and interprets one leased poll. Writes nothing.
    ///
    /// # Errors
    /// `StoreError` if the chamber (or its batch) could not be loaded; the job stays leased and
    /// is redelivered after its visibility timeout.
    pub async fn fetch(&self, leased: &LeasedJob) -> Result<Fetched, StoreError> {
        let job = &leased.job;
        let receipt = leased.receipt.clone();
        let Some(loaded) = self.chambers.load_for_poll(job.poll.chamber_id).await? else {
            return Ok(Fetched::Discard { receipt });
        };
        let chamber = &loaded.chamber;
        let done = |entry: LedgerEntry, readings: Vec<Reading>| {
            Fetched::Done(ProcessedPoll {
                receipt: leased.receipt.clone(),
                routing: routing(chamber),
                health_policy: chamber.health_policy,
                record: PollRecord { entry, readings },
            })
        };
        let now = self.clock.now();
        if !chamber.is_active() {
            return Ok(done(
                LedgerEntry::unfetched(job.poll, PollOutcome::Cancelled, job.meta.attempt, now),
                Vec::new(),
            ));
        }
        if job.is_expired_at(now) {
            return Ok(done(
                LedgerEntry::unfetched(job.poll, PollOutcome::Expired, job.meta.attempt, now),
                Vec::new(),
            ));
        }
        let request = FetchRequest {
            url: chamber.endpoint.clone(),
            timeout: chamber.timeout.as_duration(),
            slot: job.poll.slot,
            attempt: job.meta.attempt,
        };
        // Steps are spans only inside a traced poll (the worker's span), never on their own.
        let traced = !tracing::Span::current().is_none();
        let step = |make: &dyn Fn() -> tracing::Span| {
            if traced {
                make()
            } else {
                tracing::Span::none()
            }
        };
        let requested_at = self.clock.now();
        let result = self
            .client
            .fetch(&request)
            .instrument(step(&|| tracing::info_span!("poll.fetch")))
            .await;
        let received_at = self.clock.now();
        let (outcome, values) = match result {
            Ok(response) => {
                let status = response.status;
                step(&|| tracing::info_span!("poll.parse", status)).in_scope(|| {
                    interpret_response(
                        chamber.format,
                        &loaded.detectors,
                        response.status,
                        &response.body,
                    )
                })
            }
            Err(error) => {
                let retry_at = received_at + self.settings.retry_backoff;
                let may_retry = match job.kind {
                    PollKind::Scheduled => retry_at < job.expires_at(),
                    PollKind::Backfill => job.meta.attempt < self.settings.max_backfill_attempts,
                };
                if error.is_transient() && may_retry {
                    return Ok(Fetched::Retry {
                        receipt,
                        delay: self.settings.retry_backoff,
                        error,
                    });
                }
                (fetch_error_outcome(&error), Vec::new())
            }
        };
        let batch_id = if values.is_empty() {
            None
        } else {
            self.batches
                .covering(chamber.section_id, requested_at)
                .await?
                .map(|b| b.id)
        };
        let readings = loaded
            .detectors
            .iter()
            .zip(values)
            .map(|(d, value)| Reading {
                detector_id: d.id,
                chamber_id: chamber.id,
                slot: job.poll.slot,
                value,
                requested_at,
                received_at,
                batch_id,
            })
            .collect();
        let entry = LedgerEntry {
            poll: job.poll,
            outcome,
            attempt: job.meta.attempt,
            requested_at: Some(requested_at),
            recorded_at: received_at,
            latency: Some(received_at.saturating_since(requested_at)),
            lateness: requested_at.saturating_since(job.poll.slot),
        };
        Ok(done(entry, readings))
    }

    /// Stores the results of many polls in one write; only after it returned, acknowledges
    /// their jobs; then moves health and publishes events for the polls that were new.
    ///
    /// # Errors
    /// `PollError::Store` if the write failed: nothing was acknowledged. `PollError::Queue` if
    /// the acknowledgement failed after the write (health and events were still handled; the
    /// jobs will be redelivered and found already stored).
    pub async fn complete(&self, polls: Vec<ProcessedPoll>) -> Result<Completion, PollError> {
        self.complete_observed(polls, &mut NoStages).await
    }

    /// [`PollHandler::complete`], telling `stages` when the write and the acknowledgement are
    /// done (so a worker can time them per poll).
    ///
    /// # Errors
    /// As [`PollHandler::complete`].
    pub async fn complete_observed(
        &self,
        polls: Vec<ProcessedPoll>,
        stages: &mut dyn CompletionStages,
    ) -> Result<Completion, PollError> {
        if polls.is_empty() {
            return Ok(Completion::default());
        }
        let records: Vec<PollRecord> = polls.iter().map(|p| p.record.clone()).collect();
        let write = self.readings.store_polls(&records).await?;
        stages.written();
        let receipts: Vec<LeaseReceipt> = polls.iter().map(|p| p.receipt.clone()).collect();
        let acked = self.queue.ack(&receipts).await;
        stages.acked();

        let existing: HashSet<_> = write.existing_polls.iter().copied().collect();
        let fresh: Vec<ProcessedPoll> = polls
            .into_iter()
            .filter(|p| !existing.contains(&p.record.entry.poll))
            .collect();
        let transitions = self.observe_health_batch(&fresh).await;
        let mut events = Vec::new();
        for poll in fresh {
            let PollRecord { entry, readings } = poll.record;
            if let Some(t) = transitions.get(&entry.poll) {
                events.push(DomainEvent::HealthChanged {
                    routing: poll.routing,
                    transition: t.clone(),
                });
            }
            if !readings.is_empty() {
                events.push(DomainEvent::ReadingsWritten {
                    routing: poll.routing,
                    poll: entry.poll,
                    readings,
                });
            }
            events.push(DomainEvent::PollCompleted {
                routing: poll.routing,
                entry,
            });
        }
        let mut transitions: Vec<HealthTransition> = transitions.into_values().collect();
        transitions.sort_by_key(|t| (t.chamber_id, t.at));
        if !events.is_empty()
            && let Err(e) = self.events.publish(&events).await
        {
            tracing::warn!(error = %e, events = events.len(), "poll events not published");
        }
        Ok(Completion {
            write,
            acked: acked?,
            transitions,
        })
    }

    /// Fetches one poll and completes it (or releases it for a retry, or discards it).
    ///
    /// # Errors
    /// As [`PollHandler::fetch`] and [`PollHandler::complete`]; the job is not acknowledged.
    pub async fn handle(&self, leased: LeasedJob) -> Result<Handled, PollError> {
        match self.fetch(&leased).await? {
            Fetched::Done(poll) => Ok(Handled::Completed(self.complete(vec![poll]).await?)),
            Fetched::Retry {
                receipt,
                delay,
                error,
            } => {
                self.queue.release(&receipt, delay).await?;
                Ok(Handled::Retried { delay, error })
            }
            Fetched::Discard { receipt } => {
                self.queue.ack(std::slice::from_ref(&receipt)).await?;
                Ok(Handled::Discarded)
            }
        }
    }

    /// Applies a batch's outcomes to health: one read for the batch, a write only where a
    /// chamber's state, failure count or failing-since changes (a healthy chamber's success
    /// writes nothing). A write that loses an optimistic-concurrency race falls back to
    /// re-reading per poll. Returns each poll's transition. Health is derived state: a failure
    /// here is logged, never fails the poll.
    async fn observe_health_batch(
        &self,
        polls: &[ProcessedPoll],
    ) -> HashMap<PollId, HealthTransition> {
        let mut observed: Vec<&ProcessedPoll> = polls
            .iter()
            .filter(|p| p.record.entry.outcome.chamber_succeeded().is_some())
            .collect();
        observed.sort_by_key(|p| p.record.entry.poll.slot);
        let mut ids: Vec<ChamberId> = observed
            .iter()
            .map(|p| p.record.entry.poll.chamber_id)
            .collect();
        ids.sort();
        ids.dedup();
        let mut transitions = HashMap::new();
        if ids.is_empty() {
            return transitions;
        }
        let stored = match self.health.get_many(&ids).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "health not read");
                return transitions;
            }
        };
        let mut current: HashMap<ChamberId, ChamberHealth> =
            stored.into_iter().map(|h| (h.chamber_id, h)).collect();
        let mut original: HashMap<ChamberId, ChamberHealth> = HashMap::new();
        let mut pending: HashMap<ChamberId, Vec<(PollId, HealthTransition)>> = HashMap::new();
        for p in &observed {
            let entry = &p.record.entry;
            let id = entry.poll.chamber_id;
            let succeeded = entry.outcome.chamber_succeeded().unwrap_or(true);
            let cur = current
                .entry(id)
                .or_insert_with(|| ChamberHealth::unknown(id, entry.recorded_at));
            original.entry(id).or_insert_with(|| cur.clone());
            let (next, t) = cur.observe(
                entry.poll.slot,
                succeeded,
                entry.recorded_at,
                &p.health_policy,
            );
            if let Some(t) = t {
                pending.entry(id).or_default().push((entry.poll, t));
            }
            *cur = next;
        }
        let material = |a: &ChamberHealth, b: &ChamberHealth| {
            a.state != b.state
                || a.consecutive_failures != b.consecutive_failures
                || a.failing_since != b.failing_since
        };
        for (id, before) in original {
            let Some(after) = current.get(&id) else {
                continue;
            };
            if !material(&before, after) {
                continue;
            }
            match self
                .health
                .save(&ChamberHealth {
                    version: before.version,
                    ..after.clone()
                })
                .await
            {
                Ok(_) => transitions.extend(pending.remove(&id).unwrap_or_default()),
                Err(StoreError::Conflict { .. }) => {
                    // Another worker wrote this chamber's health meanwhile: redo it poll by poll.
                    for p in observed
                        .iter()
                        .filter(|p| p.record.entry.poll.chamber_id == id)
                    {
                        let entry = &p.record.entry;
                        let succeeded = entry.outcome.chamber_succeeded().unwrap_or(true);
                        if let Some(t) = self
                            .observe_health(entry, succeeded, &p.health_policy)
                            .await
                        {
                            transitions.insert(entry.poll, t);
                        }
                    }
                }
                Err(e) => tracing::warn!(chamber.id = %id, error = %e, "health not saved"),
            }
        }
        transitions
    }

    /// Applies one outcome to the chamber's health with optimistic concurrency. Health is
    /// derived state: a failure here is logged, never fails the poll.
    async fn observe_health(
        &self,
        entry: &LedgerEntry,
        succeeded: bool,
        policy: &HealthPolicy,
    ) -> Option<HealthTransition> {
        let chamber_id = entry.poll.chamber_id;
        for _ in 0..self.settings.health_write_attempts.max(1) {
            let current = match self.health.get(chamber_id).await {
                Ok(h) => h.unwrap_or_else(|| ChamberHealth::unknown(chamber_id, entry.recorded_at)),
                Err(e) => {
                    tracing::warn!(chamber.id = %chamber_id, error = %e, "health not read");
                    return None;
                }
            };
            let (next, transition) =
                current.observe(entry.poll.slot, succeeded, entry.recorded_at, policy);
            if next == current {
                return None;
            }
            match self.health.save(&next).await {
                Ok(_) => return transition,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!(chamber.id = %chamber_id, error = %e, "health not saved");
                    return None;
                }
            }
        }
        tracing::warn!(chamber.id = %chamber_id, "health not saved: too many concurrent updates");
        None
    }
}
