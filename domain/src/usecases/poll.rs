//! Handling one poll: fetch, parse, map values to detectors, store readings and the ledger
//! entry, move health, publish events.
//!
//! Split so workers can batch and time each stage: [`PollHandler::fetch`] turns a job into its
//! [`JobOutcome`] (no writes) through three stages a worker may call itself
//! ([`PollHandler::prepare`], [`PollHandler::send`], [`PollHandler::interpret`]), and
//! [`PollHandler::complete`] stores many polls' results in one write, then moves health and
//! publishes events. The queue is not here: the worker leases a job, and it alone
//! acknowledges or releases it, once, after its outcome (a `Done` only after `complete`
//! returned).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::model::{
    Chamber, ChamberHealth, ChamberId, CorruptionReason, Detector, DetectorKey, ExpiryReason,
    Finite, HealthPolicy, HealthTransition, LedgerEntry, PollId, PollJob, PollKind, PollOutcome,
    Reading, ReadingValue, ResponseFormat,
};
use crate::parse::{JsonDocument, PrometheusDocument, ValueProblem};
use crate::ports::{
    ChamberClient, ChamberHealthRepository, ChamberWithDetectors, Clock, DomainEvent,
    EventPublisher, FetchError, FetchRequest, FetchedResponse, PollReads, PollRecord,
    ReadingRepository, Repositories, RepositoryPollReads, RoutingTag, StoreError, WriteReport,
};
use crate::time::Timestamp;

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
    pub routing: RoutingTag,
    pub health_policy: HealthPolicy,
    pub record: PollRecord,
}

/// What a leased job comes to. Exactly one per job, and the worker alone tells the queue:
/// `Done` is acknowledged once [`PollHandler::complete`] has stored it, `Retry` is released
/// for another try, `Discard` is acknowledged at once.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// Results to store (a reading or a ledger entry without one), then acknowledge.
    Done(ProcessedPoll),
    /// A transient failure while the poll is still current: release the job for another try
    /// after `delay`.
    Retry { delay: Duration, error: FetchError },
    /// The chamber was deleted: acknowledge without a ledger entry.
    Discard,
}

/// A poll about to be sent: its job, its chamber and the request.
#[derive(Debug, Clone, PartialEq)]
pub struct PollAttempt {
    pub job: PollJob,
    pub chamber: Arc<ChamberWithDetectors>,
    pub request: FetchRequest,
}

/// What [`PollHandler::prepare`] decided: a request to send, or an outcome without one
/// (chamber deleted, paused, or the poll already expired).
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared {
    Send(PollAttempt),
    Decided(JobOutcome),
}

/// The chamber's answer (or the failure to get one), with when it was asked and answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub result: Result<FetchedResponse, FetchError>,
    pub requested_at: Timestamp,
    pub received_at: Timestamp,
}

/// What [`PollHandler::complete`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    pub write: WriteReport,
    /// The ledger entries this write stored for the first time (a redelivered poll that was
    /// already stored is not among them): the polls whose health moved and events went out.
    pub stored: Vec<LedgerEntry>,
    pub transitions: Vec<HealthTransition>,
}

/// The poll-handling use case. See the module docs.
#[derive(Clone)]
pub struct PollHandler {
    pub reads: Arc<dyn PollReads>,
    pub readings: Arc<dyn ReadingRepository>,
    pub health: Arc<dyn ChamberHealthRepository>,
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
enum Parsed<'a> {
    Json(JsonDocument<'a>),
    Prometheus(PrometheusDocument),
}

impl Parsed<'_> {
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

/// A poll's results with what completing them needs of its chamber.
fn processed(chamber: &Chamber, entry: LedgerEntry, readings: Vec<Reading>) -> ProcessedPoll {
    ProcessedPoll {
        routing: RoutingTag {
            organization_id: chamber.organization_id,
            section_id: Some(chamber.section_id),
            chamber_id: Some(chamber.id),
        },
        health_policy: chamber.health_policy,
        record: PollRecord { entry, readings },
    }
}

impl PollHandler {
    /// With the default [`PollSettings`], reading chambers and batches straight from
    /// `repositories` (see [`PollHandler::with_reads`] for a cache in front).
    pub fn new(
        repositories: &Repositories,
        client: Arc<dyn ChamberClient>,
        events: Arc<dyn EventPublisher>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            reads: Arc::new(RepositoryPollReads::of(repositories)),
            readings: repositories.readings.clone(),
            health: repositories.health.clone(),
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

    /// Reads a poll's chamber and batch through `reads` (a worker's cache).
    #[must_use]
    pub fn with_reads(mut self, reads: Arc<dyn PollReads>) -> Self {
        self.reads = reads;
        self
    }

    /// A job's outcome: [`PollHandler::prepare`], [`PollHandler::send`] and
    /// [`PollHandler::interpret`] in a row. Writes nothing. (A worker that times each stage
    /// calls the three itself.)
    ///
    /// # Errors
    /// As [`PollHandler::prepare`] and [`PollHandler::interpret`].
    pub async fn fetch(&self, job: &PollJob) -> Result<JobOutcome, StoreError> {
        match self.prepare(job).await? {
            Prepared::Decided(outcome) => Ok(outcome),
            Prepared::Send(attempt) => {
                let answer = self.send(&attempt).await;
                self.interpret(attempt, answer).await
            }
        }
    }

    /// Loads the poll's chamber and decides whether to send it: a deleted chamber's job is
    /// discarded; a paused chamber's poll is recorded as cancelled, an expired one as expired.
    ///
    /// # Errors
    /// `StoreError` if the chamber could not be loaded: the job stays leased and is delivered
    /// again after its visibility timeout.
    pub async fn prepare(&self, job: &PollJob) -> Result<Prepared, StoreError> {
        let Some(chamber) = self.reads.load_for_poll(job.poll.chamber_id).await? else {
            return Ok(Prepared::Decided(JobOutcome::Discard));
        };
        let now = self.clock.now();
        let unfetched = if !chamber.chamber.is_active() {
            Some(PollOutcome::Cancelled)
        } else if job.is_expired_at(now) {
            Some(PollOutcome::Expired {
                reason: ExpiryReason::Late,
            })
        } else {
            None
        };
        if let Some(outcome) = unfetched {
            let entry = LedgerEntry::unfetched(job.poll, outcome, job.meta.attempt, now);
            return Ok(Prepared::Decided(JobOutcome::Done(processed(
                &chamber.chamber,
                entry,
                Vec::new(),
            ))));
        }
        let request = FetchRequest {
            url: chamber.chamber.endpoint.clone(),
            timeout: chamber.chamber.timeout.as_duration(),
            slot: job.poll.slot,
            attempt: job.meta.attempt,
        };
        Ok(Prepared::Send(PollAttempt {
            job: job.clone(),
            chamber,
            request,
        }))
    }

    /// Sends the request, noting when it went out and when the answer came.
    pub async fn send(&self, attempt: &PollAttempt) -> Answer {
        let requested_at = self.clock.now();
        let result = self.client.fetch(&attempt.request).await;
        Answer {
            result,
            requested_at,
            received_at: self.clock.now(),
        }
    }

    /// Reads the answer into the job's outcome: readings for each detector and a ledger entry,
    /// or a retry for a transient failure while the poll is still current.
    ///
    /// # Errors
    /// `StoreError` if the batch covering the readings could not be read; as
    /// [`PollHandler::prepare`].
    pub async fn interpret(
        &self,
        attempt: PollAttempt,
        answer: Answer,
    ) -> Result<JobOutcome, StoreError> {
        let PollAttempt { job, chamber, .. } = attempt;
        let Answer {
            result,
            requested_at,
            received_at,
        } = answer;
        let (outcome, values) = match result {
            Ok(response) => interpret_response(
                chamber.chamber.format,
                &chamber.detectors,
                response.status,
                &response.body,
            ),
            Err(error) => {
                let retry_at = received_at + self.settings.retry_backoff;
                let may_retry = match job.kind {
                    PollKind::Scheduled => retry_at < job.expires_at(),
                    PollKind::Backfill => job.meta.attempt < self.settings.max_backfill_attempts,
                };
                if error.is_transient() && may_retry {
                    return Ok(JobOutcome::Retry {
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
            self.reads
                .covering(chamber.chamber.section_id, requested_at)
                .await?
                .map(|b| b.id)
        };
        let readings = chamber
            .detectors
            .iter()
            .zip(values)
            .map(|(d, value)| Reading {
                detector_id: d.id,
                chamber_id: chamber.chamber.id,
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
        Ok(JobOutcome::Done(processed(
            &chamber.chamber,
            entry,
            readings,
        )))
    }

    /// Stores the results of many polls in one write, then moves health and publishes events
    /// for the polls that were new. Acknowledges nothing: the caller acknowledges the polls'
    /// jobs once this returned `Ok` (their results are durable by then).
    ///
    /// # Errors
    /// `StoreError` if the write failed: nothing was stored, and the jobs must not be
    /// acknowledged (they are delivered again; the idempotent write makes that safe). Health
    /// and events are derived: their failures are logged, never returned.
    pub async fn complete(&self, polls: Vec<ProcessedPoll>) -> Result<Completion, StoreError> {
        let write = self.store(&polls).await?;
        Ok(self.after_store(polls, write).await)
    }

    /// The first half of [`PollHandler::complete`]: stores the polls' results in one write
    /// and leaves the polls with the caller, who may keep them to try again if it fails (or
    /// give up waiting on it: a write abandoned midway stores all or nothing).
    ///
    /// # Errors
    /// As [`PollHandler::complete`].
    pub async fn store(&self, polls: &[ProcessedPoll]) -> Result<WriteReport, StoreError> {
        if polls.is_empty() {
            return Ok(WriteReport::default());
        }
        let records: Vec<PollRecord> = polls.iter().map(|p| p.record.clone()).collect();
        self.readings.store_polls(&records).await
    }

    /// The second half of [`PollHandler::complete`], once [`PollHandler::store`] returned
    /// `write`: moves health and publishes events for the polls the write stored first.
    pub async fn after_store(&self, polls: Vec<ProcessedPoll>, write: WriteReport) -> Completion {
        if polls.is_empty() {
            return Completion {
                write,
                ..Completion::default()
            };
        }
        let existing: HashSet<_> = write.existing_polls.iter().copied().collect();
        let fresh: Vec<ProcessedPoll> = polls
            .into_iter()
            .filter(|p| !existing.contains(&p.record.entry.poll))
            .collect();
        let transitions = self.observe_health_batch(&fresh).await;
        let mut events = Vec::new();
        let mut stored = Vec::with_capacity(fresh.len());
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
            stored.push(entry.clone());
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
        Completion {
            write,
            stored,
            transitions,
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
        let changed: Vec<ChamberHealth> = original
            .into_iter()
            .filter_map(|(id, before)| {
                let after = current.get(&id)?;
                material(&before, after).then(|| ChamberHealth {
                    version: before.version,
                    ..after.clone()
                })
            })
            .collect();
        if changed.is_empty() {
            return transitions;
        }
        // One save for the batch; a chamber it did not save (another worker wrote its health
        // meanwhile, or it is gone), or every chamber if the save failed (then none was saved),
        // is redone poll by poll.
        let redo: HashSet<ChamberId> = match self.health.save_many(&changed).await {
            Ok(not_saved) => not_saved.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, chambers = changed.len(), "health not saved at once; saving it chamber by chamber");
                changed.iter().map(|h| h.chamber_id).collect()
            }
        };
        for h in &changed {
            if !redo.contains(&h.chamber_id) {
                transitions.extend(pending.remove(&h.chamber_id).unwrap_or_default());
            }
        }
        for p in observed
            .iter()
            .filter(|p| redo.contains(&p.record.entry.poll.chamber_id))
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
