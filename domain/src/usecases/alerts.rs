//! Alerting and forwarding use cases: rules and alerts managed by users ([`AlertAdmin`]),
//! transmitters managed by admins ([`TransmitterAdmin`]), and the evaluator that turns the event
//! stream into alerts ([`AlertEvaluator`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::alerting::{Acknowledgement, Alert, AlertCondition, AlertRule, AlertSignal, RuleState};
use crate::error::{Rule, ValidationError};
use crate::model::{
    AlertId, AlertRuleId, ChamberId, DeadLetterId, Description, DetectorId, EndpointUrl, Finite,
    HealthState, Name, Page, PageRequest, PageSize, Role, SectionId, TransmitterId, every_page,
};
use crate::ports::{
    AlertFilter, AlertRepository, ChamberHealthRepository, ChamberRepository, Clock,
    DetectorRepository, DomainEvent, EventPublisher, Repositories, RoutingTag, StoreError,
    TransmitterRepository,
};
use crate::transmit::{
    DeadLetter, DeliveryState, Destination, Forwarded, MqttBroker, TopicPrefix, Transmitter,
    WebhookSecret,
};
use crate::usecases::{Actor, UseCaseError};

type Result<T> = std::result::Result<T, UseCaseError>;

/// A rule's condition as a user submits it.
#[derive(Debug, Clone, PartialEq)]
pub enum NewCondition {
    ChamberDown {
        after: Duration,
    },
    OutOfRange {
        detector_id: DetectorId,
        min: Option<f64>,
        max: Option<f64>,
        after: Duration,
    },
    NoReading {
        detector_id: Option<DetectorId>,
        after: Duration,
    },
}

/// An alert rule as a user submits it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlertRule {
    pub chamber_id: ChamberId,
    pub name: String,
    pub condition: NewCondition,
}

/// Rules and alerts, for users.
#[derive(Clone)]
pub struct AlertAdmin {
    pub alerts: Arc<dyn AlertRepository>,
    pub chambers: Arc<dyn ChamberRepository>,
    pub detectors: Arc<dyn DetectorRepository>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for AlertAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertAdmin").finish_non_exhaustive()
    }
}

fn bound(
    field: &'static str,
    v: Option<f64>,
) -> std::result::Result<Option<Finite>, ValidationError> {
    v.map(|v| Finite::new(v).map_err(|e| e.for_field(field)))
        .transpose()
}

impl AlertAdmin {
    pub fn new(repositories: &Repositories, clock: Arc<dyn Clock>) -> Self {
        Self {
            alerts: repositories.alerts.clone(),
            chambers: repositories.chambers.clone(),
            detectors: repositories.detectors.clone(),
            clock,
        }
    }

    /// # Errors
    /// `Forbidden` below operator; `Invalid` (`rule.name`, `rule.condition.after`,
    /// `rule.condition.min`, `rule.condition.max`, `rule.condition.detector_id` for a detector
    /// not of the chamber); `NotFound { entity: "chamber" }`; `Duplicate` for a second rule of
    /// one name on the chamber; `Unavailable`.
    pub async fn create_rule(&self, actor: &Actor, new: NewAlertRule) -> Result<AlertRule> {
        actor.require(Role::Operator, "create an alert rule")?;
        let org = actor.organization_id;
        let name = Name::parse(&new.name).map_err(|e| e.within("rule"))?;
        let condition = match new.condition {
            NewCondition::ChamberDown { after } => AlertCondition::ChamberDown { after },
            NewCondition::OutOfRange {
                detector_id,
                min,
                max,
                after,
            } => AlertCondition::OutOfRange {
                detector_id,
                min: bound("condition.min", min).map_err(|e| e.within("rule"))?,
                max: bound("condition.max", max).map_err(|e| e.within("rule"))?,
                after,
            },
            NewCondition::NoReading { detector_id, after } => {
                AlertCondition::NoReading { detector_id, after }
            }
        };
        condition.validate().map_err(|e| e.within("rule"))?;
        self.chambers.get(org, new.chamber_id).await?;
        let detector = match condition {
            AlertCondition::OutOfRange { detector_id, .. } => Some(detector_id),
            AlertCondition::NoReading { detector_id, .. } => detector_id,
            AlertCondition::ChamberDown { .. } => None,
        };
        if let Some(id) = detector {
            let belongs = match self.detectors.get(org, id).await {
                Ok(d) => d.chamber_id == new.chamber_id,
                Err(StoreError::NotFound { .. }) => false,
                Err(e) => return Err(e.into()),
            };
            if !belongs {
                return Err(ValidationError::new(
                    "rule.condition.detector_id",
                    Rule::Inconsistent("must be a detector of the rule's chamber".into()),
                )
                .into());
            }
        }
        let rule = AlertRule {
            id: AlertRuleId::random(),
            organization_id: org,
            chamber_id: new.chamber_id,
            name,
            condition,
            created_at: self.clock.now(),
        };
        self.alerts.create_rule(&rule).await?;
        Ok(rule)
    }

    /// # Errors
    /// `Unavailable`.
    pub async fn list_rules(
        &self,
        actor: &Actor,
        chamber: Option<ChamberId>,
        page: PageRequest<AlertRuleId>,
    ) -> Result<Page<AlertRule, AlertRuleId>> {
        actor.require(Role::Viewer, "read alert rules")?;
        Ok(self
            .alerts
            .list_rules(actor.organization_id, chamber, page)
            .await?)
    }

    /// # Errors
    /// `Forbidden` below operator; `NotFound`; `Unavailable`.
    pub async fn delete_rule(&self, actor: &Actor, id: AlertRuleId) -> Result<()> {
        actor.require(Role::Operator, "delete an alert rule")?;
        Ok(self.alerts.delete_rule(actor.organization_id, id).await?)
    }

    /// # Errors
    /// `Unavailable`.
    pub async fn list_alerts(
        &self,
        actor: &Actor,
        filter: AlertFilter,
        page: PageRequest<AlertId>,
    ) -> Result<Page<Alert, AlertId>> {
        actor.require(Role::Viewer, "read alerts")?;
        Ok(self
            .alerts
            .list_alerts(actor.organization_id, filter, page)
            .await?)
    }

    /// # Errors
    /// `Forbidden` below operator; `Invalid` (`comment`); `NotFound`; `FailedPrecondition` when
    /// already acknowledged; `Unavailable`.
    pub async fn acknowledge(&self, actor: &Actor, id: AlertId, comment: &str) -> Result<Alert> {
        actor.require(Role::Operator, "acknowledge an alert")?;
        let ack = Acknowledgement {
            user_id: actor.user_id,
            at: self.clock.now(),
            comment: Description::parse(comment).map_err(|e| e.for_field("comment"))?,
        };
        Ok(self
            .alerts
            .acknowledge_alert(actor.organization_id, id, &ack)
            .await?)
    }
}

/// A transmitter's destination as an admin submits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewDestination {
    Webhook {
        url: String,
        secret: String,
    },
    Mqtt {
        broker: String,
        topic_prefix: String,
    },
}

/// A transmitter as an admin submits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransmitter {
    pub name: String,
    pub destination: NewDestination,
    pub readings: bool,
    pub alerts: bool,
}

/// Transmitters and their dead letters, for admins.
#[derive(Clone)]
pub struct TransmitterAdmin {
    pub transmitters: Arc<dyn TransmitterRepository>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for TransmitterAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransmitterAdmin").finish_non_exhaustive()
    }
}

impl TransmitterAdmin {
    pub fn new(repositories: &Repositories, clock: Arc<dyn Clock>) -> Self {
        Self {
            transmitters: repositories.transmitters.clone(),
            clock,
        }
    }

    /// # Errors
    /// `Forbidden` below admin; `Invalid` (`transmitter.name`, `transmitter.webhook.url`,
    /// `transmitter.webhook.secret`, `transmitter.mqtt.broker`, `transmitter.mqtt.topic_prefix`,
    /// `transmitter.forward`); `Duplicate`; `Unavailable`.
    pub async fn create(&self, actor: &Actor, new: NewTransmitter) -> Result<Transmitter> {
        actor.require(Role::Admin, "configure a transmitter")?;
        let name = Name::parse(&new.name).map_err(|e| e.within("transmitter"))?;
        let destination = match new.destination {
            NewDestination::Webhook { url, secret } => Destination::Webhook {
                url: EndpointUrl::parse(&url).map_err(|e| e.within("transmitter.webhook"))?,
                secret: WebhookSecret::parse(&secret)
                    .map_err(|e| e.within("transmitter.webhook"))?,
            },
            NewDestination::Mqtt {
                broker,
                topic_prefix,
            } => Destination::Mqtt {
                broker: MqttBroker::parse(&broker).map_err(|e| e.within("transmitter.mqtt"))?,
                topic_prefix: TopicPrefix::parse(&topic_prefix)
                    .map_err(|e| e.within("transmitter.mqtt"))?,
            },
        };
        let transmitter = Transmitter {
            id: TransmitterId::random(),
            organization_id: actor.organization_id,
            name,
            destination,
            forwarded: Forwarded::new(new.readings, new.alerts)
                .map_err(|e| e.within("transmitter"))?,
            created_at: self.clock.now(),
        };
        self.transmitters.create_transmitter(&transmitter).await?;
        Ok(transmitter)
    }

    /// # Errors
    /// `Forbidden` below admin; `Unavailable`.
    pub async fn list(
        &self,
        actor: &Actor,
        page: PageRequest<TransmitterId>,
    ) -> Result<Page<Transmitter, TransmitterId>> {
        actor.require(Role::Admin, "read transmitters")?;
        Ok(self
            .transmitters
            .list_transmitters(actor.organization_id, page)
            .await?)
    }

    /// # Errors
    /// `Forbidden` below admin; `NotFound`; `Unavailable`.
    pub async fn get(&self, actor: &Actor, id: TransmitterId) -> Result<Transmitter> {
        actor.require(Role::Admin, "read transmitters")?;
        Ok(self
            .transmitters
            .get_transmitter(actor.organization_id, id)
            .await?)
    }

    /// # Errors
    /// `Forbidden` below admin; `NotFound`; `Unavailable`.
    pub async fn delete(&self, actor: &Actor, id: TransmitterId) -> Result<()> {
        actor.require(Role::Admin, "delete a transmitter")?;
        Ok(self
            .transmitters
            .delete_transmitter(actor.organization_id, id)
            .await?)
    }

    /// How each transmitter's deliveries are going (those with no delivery yet are absent).
    ///
    /// # Errors
    /// `Forbidden` below admin; `Unavailable`.
    pub async fn delivery_states(&self, actor: &Actor) -> Result<Vec<DeliveryState>> {
        actor.require(Role::Admin, "read delivery states")?;
        Ok(self
            .transmitters
            .delivery_states(actor.organization_id)
            .await?)
    }

    /// # Errors
    /// `Forbidden` below admin; `Unavailable`.
    pub async fn dead_letters(
        &self,
        actor: &Actor,
        transmitter: Option<TransmitterId>,
        page: PageRequest<DeadLetterId>,
    ) -> Result<Page<DeadLetter, DeadLetterId>> {
        actor.require(Role::Admin, "read dead letters")?;
        Ok(self
            .transmitters
            .list_dead_letters(actor.organization_id, transmitter, page)
            .await?)
    }
}

/// Turns the event stream into alerts: one [`RuleState`] per rule, fed every event and the
/// clock. Opening and resolving are stored first and published after (as
/// [`DomainEvent::AlertOpened`] / [`DomainEvent::AlertResolved`]), so a transmitter never hears
/// of an alert that is not stored. Run one evaluator at a time (the alerter holds a lease); the
/// repository's one-open-alert-per-rule rule keeps a second one harmless.
pub struct AlertEvaluator {
    pub alerts: Arc<dyn AlertRepository>,
    pub chambers: Arc<dyn ChamberRepository>,
    pub health: Arc<dyn ChamberHealthRepository>,
    pub events: Arc<dyn EventPublisher>,
    pub clock: Arc<dyn Clock>,
    states: HashMap<AlertRuleId, RuleState>,
    by_chamber: HashMap<ChamberId, Vec<AlertRuleId>>,
    sections: HashMap<ChamberId, Option<SectionId>>,
}

impl std::fmt::Debug for AlertEvaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertEvaluator")
            .field("rules", &self.states.len())
            .finish_non_exhaustive()
    }
}

impl AlertEvaluator {
    pub fn new(
        alerts: Arc<dyn AlertRepository>,
        chambers: Arc<dyn ChamberRepository>,
        health: Arc<dyn ChamberHealthRepository>,
        events: Arc<dyn EventPublisher>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            alerts,
            chambers,
            health,
            events,
            clock,
            states: HashMap::new(),
            by_chamber: HashMap::new(),
            sections: HashMap::new(),
        }
    }

    /// How many rules are being evaluated.
    pub fn rules(&self) -> usize {
        self.states.len()
    }

    /// Reads every rule and which ones have an open alert. A rule seen for the first time starts
    /// watching now (a chamber already down counts from when it went down); a rule still there
    /// keeps its state; a deleted rule is dropped. Where the stored alert and the state
    /// disagree (a write that failed earlier), the store is brought in line.
    ///
    /// # Errors
    /// `Unavailable`; the evaluator keeps its previous rules.
    pub async fn reload(&mut self) -> std::result::Result<Vec<DomainEvent>, StoreError> {
        let size = PageSize::new(1000).unwrap_or_default();
        let alerts = &self.alerts;
        let rules = every_page(size, |page| alerts.list_all_rules(page)).await?;
        let open: HashSet<AlertRuleId> = self.alerts.open_rule_ids().await?.into_iter().collect();
        let now = self.clock.now();
        let mut states = HashMap::with_capacity(rules.len());
        let mut by_chamber: HashMap<ChamberId, Vec<AlertRuleId>> = HashMap::new();
        let mut published = Vec::new();
        for rule in rules {
            let id = rule.id;
            by_chamber.entry(rule.chamber_id).or_default().push(id);
            let stored_open = open.contains(&id);
            let state = match self.states.remove(&id) {
                Some(mut state) if state.rule() == &rule => {
                    if state.is_open() != stored_open {
                        if stored_open {
                            // The state resolved but storing that failed: resolve now.
                            state.set_open(true);
                            if let Some(e) = self
                                .apply(&mut state, AlertSignal::Resolve { at: now })
                                .await
                            {
                                published.push(e);
                            }
                        } else {
                            // Opening failed to store: let the condition open it again.
                            state.set_open(false);
                        }
                    }
                    state
                }
                _ => {
                    let mut state = RuleState::new(rule.clone(), now, stored_open);
                    if matches!(rule.condition, AlertCondition::ChamberDown { .. })
                        && let Some(h) = self.health.get(rule.chamber_id).await?
                        && h.state == HealthState::Down
                    {
                        state.holding_since(h.changed_at);
                    }
                    state
                }
            };
            states.insert(id, state);
        }
        self.states = states;
        self.by_chamber = by_chamber;
        self.sections
            .retain(|chamber, _| self.by_chamber.contains_key(chamber));
        Ok(published)
    }

    /// Feeds one event; returns the alert events it caused (already stored and published).
    pub async fn observe(&mut self, event: &DomainEvent) -> Vec<DomainEvent> {
        let routing = event.routing();
        let Some(chamber) = routing.chamber_id else {
            return Vec::new();
        };
        let Some(ids) = self.by_chamber.get(&chamber).cloned() else {
            return Vec::new();
        };
        self.sections.insert(chamber, routing.section_id);
        let mut out = Vec::new();
        for id in ids {
            let Some(mut state) = self.states.remove(&id) else {
                continue;
            };
            if let Some(signal) = state.observe(event)
                && let Some(e) = self.apply(&mut state, signal).await
            {
                out.push(e);
            }
            self.states.insert(id, state);
        }
        out
    }

    /// Lets time pass: conditions that have held long enough open now.
    pub async fn tick(&mut self) -> Vec<DomainEvent> {
        let now = self.clock.now();
        let ids: Vec<AlertRuleId> = self.states.keys().copied().collect();
        let mut out = Vec::new();
        for id in ids {
            let Some(mut state) = self.states.remove(&id) else {
                continue;
            };
            if let Some(signal) = state.tick(now)
                && let Some(e) = self.apply(&mut state, signal).await
            {
                out.push(e);
            }
            self.states.insert(id, state);
        }
        out
    }

    async fn routing(&mut self, rule: &AlertRule) -> RoutingTag {
        let section_id = match self.sections.get(&rule.chamber_id) {
            Some(s) => *s,
            None => {
                let section = match self.chambers.load_for_poll(rule.chamber_id).await {
                    Ok(Some(c)) => Some(c.chamber.section_id),
                    Ok(None) | Err(_) => None,
                };
                self.sections.insert(rule.chamber_id, section);
                section
            }
        };
        RoutingTag {
            organization_id: rule.organization_id,
            section_id,
            chamber_id: Some(rule.chamber_id),
        }
    }

    /// Stores what the signal decided, then publishes it. A failed opening leaves the state
    /// closed, so the next tick opens it again; a failed resolving is retried by the next
    /// reload.
    async fn apply(&mut self, state: &mut RuleState, signal: AlertSignal) -> Option<DomainEvent> {
        let rule = state.rule().clone();
        let event = match signal {
            AlertSignal::Open { since, at, detail } => {
                let alert = Alert::opened(&rule, since, at, detail);
                match self.alerts.open_alert(&alert).await {
                    Ok(()) => DomainEvent::AlertOpened {
                        routing: self.routing(&rule).await,
                        alert: Box::new(alert),
                    },
                    // Already open (another evaluator, or before a restart): nothing new.
                    Err(StoreError::Conflict { .. }) => return None,
                    Err(StoreError::MissingParent { .. }) => {
                        tracing::debug!(rule = %rule.id, "rule deleted meanwhile");
                        return None;
                    }
                    Err(e) => {
                        tracing::warn!(rule = %rule.id, error = %e, "alert not opened; will retry");
                        state.set_open(false);
                        return None;
                    }
                }
            }
            AlertSignal::Resolve { at } => match self.alerts.resolve_alert(rule.id, at).await {
                Ok(Some(alert)) => DomainEvent::AlertResolved {
                    routing: self.routing(&rule).await,
                    alert: Box::new(alert),
                },
                Ok(None) => return None,
                Err(e) => {
                    // The state stays resolved; the next reload finds the stored alert still
                    // open and resolves it then.
                    tracing::warn!(rule = %rule.id, error = %e, "alert not resolved; will retry");
                    return None;
                }
            },
        };
        if let Err(e) = self.events.publish(std::slice::from_ref(&event)).await {
            tracing::warn!(error = %e, "alert event not published");
        }
        Some(event)
    }
}
