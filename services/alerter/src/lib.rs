#![doc = include_str!("../README.md")]

mod forward;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::ports::{
    AlertRepository, ChamberHealthRepository, ChamberRepository, Clock, DeliveryClient,
    EventDelivery, EventFeed, EventPublisher, EventSubscription, LeaderLease, LeaseGrant,
    Repositories, TransmitterRepository,
};
use chamberlain_domain::usecases::AlertEvaluator;

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

enum TermEnd {
    LostLease,
    Shutdown,
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
        tokio::pin!(shutdown);
        loop {
            let grant = tokio::select! {
                () = &mut shutdown => return,
                grant = self.acquire() => grant,
            };
            tracing::info!(holder = %self.config.holder, "leading alerting");
            match self.lead(grant.clone(), &mut shutdown).await {
                TermEnd::Shutdown => {
                    if let Err(e) = self.lease.release(&grant).await {
                        tracing::warn!(error = %e, "lease not released; it expires by itself");
                    }
                    return;
                }
                TermEnd::LostLease => {
                    tracing::warn!(holder = %self.config.holder, "lost the alerter lease; following");
                }
            }
        }
    }

    async fn acquire(&self) -> LeaseGrant {
        loop {
            match self
                .lease
                .acquire(&self.config.holder, self.config.lease_ttl)
                .await
            {
                Ok(Some(grant)) => return grant,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "lease store unavailable"),
            }
            tokio::time::sleep(self.config.renew_every).await;
        }
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

    async fn lead<S: Future<Output = ()> + Unpin>(
        &self,
        mut grant: LeaseGrant,
        shutdown: &mut S,
    ) -> TermEnd {
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
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_reload = tokio::time::Instant::now();
        let mut next_renew = tokio::time::Instant::now() + self.config.renew_every;
        loop {
            let now = tokio::time::Instant::now();
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
            if now >= next_renew {
                match self.lease.renew(&grant, self.config.lease_ttl).await {
                    Ok(Some(g)) => grant = g,
                    Ok(None) => return TermEnd::LostLease,
                    Err(e) => {
                        tracing::warn!(error = %e, "lease renewal failed");
                        if self.clock.now() >= grant.expires_at {
                            return TermEnd::LostLease;
                        }
                    }
                }
                next_renew = now + self.config.renew_every;
            }
            tokio::select! {
                () = &mut *shutdown => return TermEnd::Shutdown,
                _ = tick.tick() => {
                    for e in evaluator.tick().await {
                        forwarder.offer(&e);
                    }
                }
                () = tokio::time::sleep_until(next_reload.min(next_renew)) => {}
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
