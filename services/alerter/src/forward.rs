//! The forwarder: each transmitter gets a lane (a bounded queue and a task that delivers in
//! order, retrying with backoff and dead-lettering after the last try). Offering an event never
//! waits: a full lane drops the delivery and counts it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chamberlain_domain::model::{
    DeadLetterId, OrganizationId, PageSize, TransmitterId, every_page,
};
use chamberlain_domain::ports::{
    Clock, DeliveryClient, DeliveryError, DomainEvent, StoreError, TransmitterRepository,
};
use chamberlain_domain::transmit::{
    DeadLetter, Delivery, DeliveryState, Destination, RetryPolicy, Transmitter,
};
use tokio::sync::mpsc;

/// Routes each delivery to the client of its transmitter's kind.
pub struct Destinations {
    pub webhook: Arc<dyn DeliveryClient>,
    pub mqtt: Arc<dyn DeliveryClient>,
}

impl std::fmt::Debug for Destinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destinations").finish_non_exhaustive()
    }
}

#[async_trait]
impl DeliveryClient for Destinations {
    async fn deliver(
        &self,
        transmitter: &Transmitter,
        delivery: &Delivery,
    ) -> Result<(), DeliveryError> {
        match transmitter.destination {
            Destination::Webhook { .. } => self.webhook.deliver(transmitter, delivery).await,
            Destination::Mqtt { .. } => self.mqtt.deliver(transmitter, delivery).await,
        }
    }
}

/// Counts one delivery outcome in `field` and in `chamberlain_transmitter_deliveries_total`;
/// returns the new count.
fn count(field: &AtomicU64, outcome: &'static str) -> u64 {
    chamberlain_telemetry::instruments()
        .transmitter_deliveries
        .add(1, &[opentelemetry::KeyValue::new("outcome", outcome)]);
    field.fetch_add(1, Ordering::Relaxed) + 1
}

/// What the forwarder has done, for logs and tests (and, by outcome, the metric
/// `chamberlain_transmitter_deliveries_total`).
#[derive(Debug, Default)]
pub struct ForwardStats {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Deliveries dropped because their lane was full.
    pub dropped: AtomicU64,
    /// Deliveries not attempted because the egress policy blocks their transmitter's
    /// destination (reported once per transmitter, with one dead letter).
    pub blocked: AtomicU64,
}

struct Lane {
    transmitter: Arc<Transmitter>,
    tx: mpsc::Sender<Delivery>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Settings of the forwarder.
#[derive(Debug, Clone, Copy)]
pub struct ForwardSettings {
    pub retry: RetryPolicy,
    /// Deliveries a lane holds before it drops new ones.
    pub lane_capacity: usize,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            lane_capacity: 1024,
        }
    }
}

/// Lanes per transmitter, kept in line with the repository by [`Forwarder::reload`].
pub struct Forwarder {
    transmitters: Arc<dyn TransmitterRepository>,
    client: Arc<dyn DeliveryClient>,
    clock: Arc<dyn Clock>,
    settings: ForwardSettings,
    lanes: HashMap<TransmitterId, Lane>,
    by_org: HashMap<OrganizationId, Vec<TransmitterId>>,
    stats: Arc<ForwardStats>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("lanes", &self.lanes.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    pub fn new(
        transmitters: Arc<dyn TransmitterRepository>,
        client: Arc<dyn DeliveryClient>,
        clock: Arc<dyn Clock>,
        settings: ForwardSettings,
    ) -> Self {
        Self {
            transmitters,
            client,
            clock,
            settings,
            lanes: HashMap::new(),
            by_org: HashMap::new(),
            stats: Arc::new(ForwardStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<ForwardStats> {
        self.stats.clone()
    }

    /// Reads every transmitter: new ones get a lane, deleted ones lose theirs (deliveries in
    /// it are dropped).
    ///
    /// # Errors
    /// `Unavailable`; the lanes stay as they were.
    pub async fn reload(&mut self) -> Result<(), StoreError> {
        let size = PageSize::new(1000).unwrap_or_default();
        let transmitters = &self.transmitters;
        let all = every_page(size, |page| transmitters.list_all_transmitters(page)).await?;
        let mut lanes = HashMap::with_capacity(all.len());
        let mut by_org: HashMap<OrganizationId, Vec<TransmitterId>> = HashMap::new();
        for t in all {
            by_org.entry(t.organization_id).or_default().push(t.id);
            let lane = match self.lanes.remove(&t.id) {
                Some(lane) if *lane.transmitter == t => lane,
                _ => self.lane(t),
            };
            lanes.insert(lane.transmitter.id, lane);
        }
        self.lanes = lanes;
        self.by_org = by_org;
        Ok(())
    }

    fn lane(&self, transmitter: Transmitter) -> Lane {
        let transmitter = Arc::new(transmitter);
        let (tx, rx) = mpsc::channel(self.settings.lane_capacity.max(1));
        let task = tokio::spawn(run_lane(
            transmitter.clone(),
            rx,
            self.client.clone(),
            self.transmitters.clone(),
            self.clock.clone(),
            self.settings.retry,
            self.stats.clone(),
        ));
        Lane {
            transmitter,
            tx,
            task,
        }
    }

    /// Queues the deliveries `event` makes for its organization's transmitters. Never waits.
    pub fn offer(&self, event: &DomainEvent) {
        let org = event.routing().organization_id;
        let Some(ids) = self.by_org.get(&org) else {
            return;
        };
        for id in ids {
            let Some(lane) = self.lanes.get(id) else {
                continue;
            };
            let Some(delivery) = Delivery::for_event(event, lane.transmitter.forwarded) else {
                continue;
            };
            if lane.tx.try_send(delivery).is_err() {
                let dropped = count(&self.stats.dropped, "dropped");
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        transmitter = %lane.transmitter.id,
                        dropped,
                        "transmitter lane full; deliveries dropped"
                    );
                }
            }
        }
    }
}

/// How often a lane writes its transmitter's [`DeliveryState`] down while nothing changes (a
/// change between delivering and failing is written at once).
const STATE_EVERY_MILLIS: i64 = 10_000;

/// A lane's [`DeliveryState`] and when it was last written down.
struct StateRecorder {
    state: DeliveryState,
    written_at: Option<i64>,
}

impl StateRecorder {
    /// Applies one outcome (`Ok` delivered, `Err(reason)` a failed try) and writes the state
    /// down when it changed or has not been written for a while. A write that fails is logged;
    /// the next outcome tries again.
    async fn note(
        &mut self,
        outcome: Result<(), &str>,
        repository: &dyn TransmitterRepository,
        clock: &dyn Clock,
    ) {
        let now = clock.now();
        let changed = match outcome {
            Ok(()) => self.state.delivered(now),
            Err(reason) => self.state.failed(now, reason),
        };
        let millis = now.as_unix_millis();
        let due = self
            .written_at
            .is_none_or(|at| millis - at >= STATE_EVERY_MILLIS);
        if !(changed || due) {
            return;
        }
        self.state.updated_at = now;
        match repository.record_delivery_state(&self.state).await {
            Ok(()) => self.written_at = Some(millis),
            Err(e) => {
                tracing::debug!(transmitter = %self.state.transmitter_id, error = %e, "delivery state not stored");
            }
        }
    }
}

async fn run_lane(
    transmitter: Arc<Transmitter>,
    mut rx: mpsc::Receiver<Delivery>,
    client: Arc<dyn DeliveryClient>,
    repository: Arc<dyn TransmitterRepository>,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    stats: Arc<ForwardStats>,
) {
    // Set once the egress policy has blocked this transmitter's destination: the block was
    // reported (a WARN and a dead letter) and later deliveries are only counted, until one goes
    // through (the destination's address changed) or the transmitter is changed (a new lane).
    let mut blocked = false;
    let mut recorder = StateRecorder {
        state: DeliveryState::new(&transmitter, clock.now()),
        written_at: None,
    };
    while let Some(delivery) = rx.recv().await {
        let mut attempt = 1;
        let last_error = loop {
            let outcome = client.deliver(&transmitter, &delivery).await;
            recorder
                .note(
                    outcome.as_ref().map(drop).map_err(|e| e.reason()),
                    repository.as_ref(),
                    clock.as_ref(),
                )
                .await;
            match outcome {
                Ok(()) => {
                    count(&stats.delivered, "delivered");
                    blocked = false;
                    break None;
                }
                Err(DeliveryError::Blocked { reason }) => {
                    count(&stats.blocked, "blocked");
                    if blocked {
                        tracing::debug!(transmitter = %transmitter.id, %reason, "destination still blocked; delivery skipped");
                        break None;
                    }
                    blocked = true;
                    tracing::warn!(transmitter = %transmitter.id, %reason, "destination blocked by the egress policy; later deliveries to it are counted, not logged, until it changes");
                    break Some(reason);
                }
                Err(DeliveryError::Permanent { reason }) => break Some(reason),
                Err(DeliveryError::Transient { reason }) => match retry.backoff_after(attempt) {
                    Some(wait) => {
                        tracing::debug!(transmitter = %transmitter.id, attempt, %reason, ?wait, "delivery failed; retrying");
                        count(&stats.retried, "retried");
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    None => break Some(reason),
                },
            }
        };
        let Some(last_error) = last_error else {
            continue;
        };
        tracing::warn!(transmitter = %transmitter.id, attempts = attempt, error = %last_error, "delivery given up; dead-lettered");
        let letter = DeadLetter {
            id: DeadLetterId::random(),
            organization_id: transmitter.organization_id,
            transmitter_id: transmitter.id,
            delivery,
            attempts: attempt,
            last_error,
            at: clock.now(),
        };
        match repository.record_dead_letter(&letter).await {
            Ok(()) => {
                count(&stats.dead_lettered, "dead_lettered");
            }
            Err(e) => {
                tracing::error!(transmitter = %transmitter.id, error = %e, "dead letter not stored")
            }
        }
    }
}
