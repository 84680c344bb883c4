#![doc = include_str!("../README.md")]

mod forward;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::ports::{
    AlertRepository, ChamberHealthRepository, ChamberRepository, Clock, DeliveryClient,
    EventDelivery, EventFeed, EventPublisher, EventSubscription, LeaderLease, Repositories,
    TransmitterRepository,
};
use chamberlain_domain::usecases::AlertEvaluator;
use chamberlain_leadership::{Leadership, sleep_until};

pub use forward::{Destinations, ForwardSettings, ForwardStats, Forwarder};

/// The alerter's timing.
#[derive(Debug, Clone)]
pub struct AlerterConfig {
    /// This replica's name in the lease (unique per process).
    pub holder: String,
    pub lease_ttl: Duration,
    pub renew_every: Duration,
    /// How often time-based conditions (down for, no reading for) are checked.
    pub tick: Duration,
    /// How often rules and transmitters are read again (API changes take effect within this).
    pub reload_every: Duration,
    pub forward: ForwardSettings,
}

impl AlerterConfig {
    pub fn new(holder: impl Into<String>) -> Self {
        Self {
            holder: holder.into(),
            lease_ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(3),
            tick: Duration::from_secs(1),
            reload_every: Duration::from_secs(10),
            forward: ForwardSettings::default(),
        }
    }
}

/// The alerter: its ports and settings.
pub struct Alerter {
    pub alerts: Arc<dyn AlertRepository>,
    pub chambers: Arc<dyn ChamberRepository>,
    pub health: Arc<dyn ChamberHealthRepository>,
    pub transmitters: Arc<dyn TransmitterRepository>,
    pub feed: Arc<dyn EventFeed>,
    pub events: Arc<dyn EventPublisher>,
    pub lease: Arc<dyn LeaderLease>,
    pub delivery: Arc<dyn DeliveryClient>,
    pub clock: Arc<dyn Clock>,
    pub config: AlerterConfig,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Alerter {
    pub fn new(
        repositories: &Repositories,
        feed: Arc<dyn EventFeed>,
        events: Arc<dyn EventPublisher>,
        lease: Arc<dyn LeaderLease>,
        delivery: Arc<dyn DeliveryClient>,
        clock: Arc<dyn Clock>,
        config: AlerterConfig,
    ) -> Self {
        Self {
            alerts: repositories.alerts.clone(),
            chambers: repositories.chambers.clone(),
            health: repositories.health.clone(),
            transmitters: repositories.transmitters.clone(),
            feed,
            events,
            lease,
            delivery,
            clock,
            config,
        }
    }

    /// Runs until `shutdown` resolves: waits for the lease, evaluates and forwards while it
    /// holds it, and gives it up on shutdown. Infrastructure errors are logged and retried.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let leadership = Leadership {
            lease: self.lease.clone(),
            clock: self.clock.clone(),
            holder: self.config.holder.clone(),
            ttl: self.config.lease_ttl,
            renew_every: self.config.renew_every,
            role: "alerting",
        };
        leadership
            .run(shutdown, |_grant| self.lead(), |_end| {})
            .await;
    }

    async fn subscribe(&self) -> Box<dyn EventSubscription> {
        loop {
            match self.feed.subscribe().await {
                Ok(s) => return s,
                Err(e) => {
                    tracing::warn!(error = %e, "event feed unavailable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// One term as the leader: evaluates rules on every event and every tick, forwards what
    /// transmitters want, and reloads rules and transmitters every `reload_every` (the timers on
    /// the `Clock` port). Runs until the leadership helper drops it.
    async fn lead(&self) {
        // Subscribe before loading, so nothing falls between the two.
        let mut subscription = self.subscribe().await;
        let mut evaluator = AlertEvaluator::new(
            self.alerts.clone(),
            self.chambers.clone(),
            self.health.clone(),
            self.events.clone(),
            self.clock.clone(),
        );
        let mut forwarder = Forwarder::new(
            self.transmitters.clone(),
            self.delivery.clone(),
            self.clock.clone(),
            self.config.forward,
        );
        let clock = self.clock.as_ref();
        let mut next_tick = clock.now() + self.config.tick;
        let mut next_reload = clock.now();
        loop {
            let now = clock.now();
            if now >= next_reload {
                match evaluator.reload().await {
                    Ok(events) => events.iter().for_each(|e| forwarder.offer(e)),
                    Err(e) => tracing::warn!(error = %e, "alert rules not reloaded"),
                }
                if let Err(e) = forwarder.reload().await {
                    tracing::warn!(error = %e, "transmitters not reloaded");
                }
                tracing::debug!(rules = evaluator.rules(), ?forwarder, "reloaded");
                next_reload = now + self.config.reload_every;
            }
            if now >= next_tick {
                for e in evaluator.tick().await {
                    forwarder.offer(&e);
                }
                // Ticks that fell behind are not made up: the next comes a tick from now.
                next_tick = clock.now() + self.config.tick;
            }
            tokio::select! {
                () = sleep_until(clock, next_tick.min(next_reload)) => {}
                delivery = subscription.next() => match delivery {
                    Some(EventDelivery::Event(event)) => {
                        // Alert events come from this evaluator (handed over directly below);
                        // the bus's copies are not forwarded twice.
                        if !matches!(event, chamberlain_domain::ports::DomainEvent::AlertOpened { .. }
                            | chamberlain_domain::ports::DomainEvent::AlertResolved { .. })
                        {
                            forwarder.offer(&event);
                            for e in evaluator.observe(&event).await {
                                forwarder.offer(&e);
                            }
                        }
                    }
                    Some(EventDelivery::Lagged { missed }) => {
                        tracing::warn!(missed, "alerter fell behind the event feed");
                    }
                    Some(EventDelivery::Interrupted) => {
                        tracing::warn!("event feed interrupted; events may be missing");
                    }
                    None => {
                        tracing::warn!("event feed closed; subscribing again");
                        subscription = self.subscribe().await;
                    }
                },
            }
        }
    }
}
