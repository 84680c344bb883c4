//! Repository ports of alerting and forwarding: alert rules and alerts, transmitters and their
//! dead letters. Same conventions as the other repositories ([`StoreError`], tenant scoping,
//! all-or-nothing writes).

use async_trait::async_trait;

use crate::alerting::{Acknowledgement, Alert, AlertRule};
use crate::model::{
    AlertId, AlertRuleId, ChamberId, DeadLetterId, OrganizationId, Page, PageRequest, TransmitterId,
};
use crate::ports::StoreError;
use crate::time::Timestamp;
use crate::transmit::{DeadLetter, DeliveryState, Transmitter};

/// Which alerts to list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertFilter {
    pub chamber_id: Option<ChamberId>,
    pub rule_id: Option<AlertRuleId>,
    /// Only alerts not yet resolved.
    pub open_only: bool,
}

/// Alert rules and their alerts. A rule has at most one open alert; resolved alerts stay as its
/// history until the rule is deleted.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait AlertRepository: Send + Sync {
    /// # Errors
    /// `MissingParent { entity: "alert_rule", parent: "chamber" }` (also when the chamber is
    /// another tenant's); `Duplicate { entity: "alert_rule", field: "name" }` for a second rule
    /// of one name on a chamber; `Unavailable`.
    async fn create_rule(&self, rule: &AlertRule) -> Result<(), StoreError>;

    /// # Errors
    /// `NotFound { entity: "alert_rule" }`; `Unavailable`.
    async fn get_rule(&self, org: OrganizationId, id: AlertRuleId)
    -> Result<AlertRule, StoreError>;

    /// Rules of `org` (of one chamber if given), ordered by id.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list_rules(
        &self,
        org: OrganizationId,
        chamber: Option<ChamberId>,
        page: PageRequest<AlertRuleId>,
    ) -> Result<Page<AlertRule, AlertRuleId>, StoreError>;

    /// Deletes the rule with its alerts. Deleting a chamber deletes its rules.
    ///
    /// # Errors
    /// `NotFound { entity: "alert_rule" }`; `Unavailable`.
    async fn delete_rule(&self, org: OrganizationId, id: AlertRuleId) -> Result<(), StoreError>;

    /// For the evaluator (not tenant-scoped): every rule of every organization, ordered by id.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list_all_rules(
        &self,
        page: PageRequest<AlertRuleId>,
    ) -> Result<Page<AlertRule, AlertRuleId>, StoreError>;

    /// Stores a newly opened alert.
    ///
    /// # Errors
    /// `Conflict` when the rule already has an open alert (nothing is written);
    /// `MissingParent { entity: "alert", parent: "alert_rule" }`; `Unavailable`.
    async fn open_alert(&self, alert: &Alert) -> Result<(), StoreError>;

    /// Resolves the rule's open alert at `at` and returns it; `Ok(None)` when it has none.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn resolve_alert(
        &self,
        rule: AlertRuleId,
        at: Timestamp,
    ) -> Result<Option<Alert>, StoreError>;

    /// # Errors
    /// `NotFound { entity: "alert" }`; `Unavailable`.
    async fn get_alert(&self, org: OrganizationId, id: AlertId) -> Result<Alert, StoreError>;

    /// Alerts of `org` matching `filter`, ordered by id.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list_alerts(
        &self,
        org: OrganizationId,
        filter: AlertFilter,
        page: PageRequest<AlertId>,
    ) -> Result<Page<Alert, AlertId>, StoreError>;

    /// Records who acknowledged the alert (open or resolved) and returns it.
    ///
    /// # Errors
    /// `NotFound { entity: "alert" }`; `Conflict` when it is already acknowledged (the first
    /// acknowledgement stays); `Unavailable`.
    async fn acknowledge_alert(
        &self,
        org: OrganizationId,
        id: AlertId,
        ack: &Acknowledgement,
    ) -> Result<Alert, StoreError>;

    /// For the evaluator (not tenant-scoped): the rules that have an open alert.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn open_rule_ids(&self) -> Result<Vec<AlertRuleId>, StoreError>;
}

/// Transmitters and the dead letters of their failed deliveries.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait TransmitterRepository: Send + Sync {
    /// # Errors
    /// `MissingParent { entity: "transmitter", parent: "organization" }`;
    /// `Duplicate { entity: "transmitter", field: "name" }`; `Unavailable`.
    async fn create_transmitter(&self, transmitter: &Transmitter) -> Result<(), StoreError>;

    /// # Errors
    /// `NotFound { entity: "transmitter" }`; `Unavailable`.
    async fn get_transmitter(
        &self,
        org: OrganizationId,
        id: TransmitterId,
    ) -> Result<Transmitter, StoreError>;

    /// Transmitters of `org`, ordered by id.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list_transmitters(
        &self,
        org: OrganizationId,
        page: PageRequest<TransmitterId>,
    ) -> Result<Page<Transmitter, TransmitterId>, StoreError>;

    /// Deletes the transmitter with its dead letters and its delivery state.
    ///
    /// # Errors
    /// `NotFound { entity: "transmitter" }`; `Unavailable`.
    async fn delete_transmitter(
        &self,
        org: OrganizationId,
        id: TransmitterId,
    ) -> Result<(), StoreError>;

    /// For the forwarder (not tenant-scoped): every transmitter, ordered by id.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list_all_transmitters(
        &self,
        page: PageRequest<TransmitterId>,
    ) -> Result<Page<Transmitter, TransmitterId>, StoreError>;

    /// # Errors
    /// `MissingParent { entity: "dead_letter", parent: "transmitter" }` (the transmitter was
    /// deleted meanwhile); `Unavailable`.
    async fn record_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError>;

    /// Dead letters of `org` (of one transmitter if given), ordered by id.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list_dead_letters(
        &self,
        org: OrganizationId,
        transmitter: Option<TransmitterId>,
        page: PageRequest<DeadLetterId>,
    ) -> Result<Page<DeadLetter, DeadLetterId>, StoreError>;

    /// Writes down how a transmitter's deliveries are going, replacing what was written before.
    ///
    /// # Errors
    /// `MissingParent { entity: "delivery_state", parent: "transmitter" }` (the transmitter was
    /// deleted meanwhile); `Unavailable`.
    async fn record_delivery_state(&self, state: &DeliveryState) -> Result<(), StoreError>;

    /// The delivery states of `org`'s transmitters, ordered by transmitter id; a transmitter
    /// whose forwarder has not written one yet is absent.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn delivery_states(&self, org: OrganizationId) -> Result<Vec<DeliveryState>, StoreError>;
}
