//! [`AlertRepository`] and [`TransmitterRepository`] of [`MemoryStore`], over its tables.

use async_trait::async_trait;
use chamberlain_domain::alerting::{Acknowledgement, Alert, AlertRule};
use chamberlain_domain::model::{
    AlertId, AlertRuleId, ChamberId, DeadLetterId, OrganizationId, Page, PageRequest, TransmitterId,
};
use chamberlain_domain::ports::{AlertFilter, AlertRepository, StoreError, TransmitterRepository};
use chamberlain_domain::time::Timestamp;
use chamberlain_domain::transmit::{DeadLetter, DeliveryState, Transmitter};

use super::{MemoryStore, not_found, page};

#[async_trait]
impl AlertRepository for MemoryStore {
    async fn create_rule(&self, rule: &AlertRule) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.chamber_in(rule.organization_id, rule.chamber_id)
            .is_none()
        {
            return Err(StoreError::MissingParent {
                entity: "alert_rule",
                parent: "chamber",
            });
        }
        if t.alert_rules.contains_key(&rule.id)
            || t.alert_rules
                .values()
                .any(|r| r.chamber_id == rule.chamber_id && r.name == rule.name)
        {
            return Err(StoreError::Duplicate {
                entity: "alert_rule",
                field: "name",
            });
        }
        t.alert_rules.insert(rule.id, rule.clone());
        Ok(())
    }

    async fn get_rule(
        &self,
        org: OrganizationId,
        id: AlertRuleId,
    ) -> Result<AlertRule, StoreError> {
        self.lock()
            .alert_rules
            .get(&id)
            .filter(|r| r.organization_id == org)
            .cloned()
            .ok_or(not_found("alert_rule"))
    }

    async fn list_rules(
        &self,
        org: OrganizationId,
        chamber: Option<ChamberId>,
        request: PageRequest<AlertRuleId>,
    ) -> Result<Page<AlertRule, AlertRuleId>, StoreError> {
        let t = self.lock();
        Ok(page(
            t.alert_rules
                .values()
                .filter(|r| r.organization_id == org && chamber.is_none_or(|c| r.chamber_id == c))
                .cloned(),
            |r| r.id,
            &request,
        ))
    }

    async fn delete_rule(&self, org: OrganizationId, id: AlertRuleId) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.alert_rules
            .get(&id)
            .is_none_or(|r| r.organization_id != org)
        {
            return Err(not_found("alert_rule"));
        }
        t.alert_rules.remove(&id);
        t.alerts.retain(|_, a| a.rule_id != id);
        Ok(())
    }

    async fn list_all_rules(
        &self,
        request: PageRequest<AlertRuleId>,
    ) -> Result<Page<AlertRule, AlertRuleId>, StoreError> {
        let t = self.lock();
        Ok(page(t.alert_rules.values().cloned(), |r| r.id, &request))
    }

    async fn open_alert(&self, alert: &Alert) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.alert_rules
            .get(&alert.rule_id)
            .is_none_or(|r| r.organization_id != alert.organization_id)
        {
            return Err(StoreError::MissingParent {
                entity: "alert",
                parent: "alert_rule",
            });
        }
        if t.alerts.contains_key(&alert.id)
            || t.alerts
                .values()
                .any(|a| a.rule_id == alert.rule_id && a.is_open())
        {
            return Err(StoreError::Conflict {
                entity: "alert",
                reason: "the rule already has an open alert".into(),
            });
        }
        t.alerts.insert(alert.id, alert.clone());
        Ok(())
    }

    async fn resolve_alert(
        &self,
        rule: AlertRuleId,
        at: Timestamp,
    ) -> Result<Option<Alert>, StoreError> {
        let mut t = self.lock();
        Ok(t.alerts
            .values_mut()
            .find(|a| a.rule_id == rule && a.is_open())
            .map(|a| {
                a.resolved_at = Some(at);
                a.clone()
            }))
    }

    async fn get_alert(&self, org: OrganizationId, id: AlertId) -> Result<Alert, StoreError> {
        self.lock()
            .alerts
            .get(&id)
            .filter(|a| a.organization_id == org)
            .cloned()
            .ok_or(not_found("alert"))
    }

    async fn list_alerts(
        &self,
        org: OrganizationId,
        filter: AlertFilter,
        request: PageRequest<AlertId>,
    ) -> Result<Page<Alert, AlertId>, StoreError> {
        let t = self.lock();
        Ok(page(
            t.alerts
                .values()
                .filter(|a| {
                    a.organization_id == org
                        && filter.chamber_id.is_none_or(|c| a.chamber_id == c)
                        && filter.rule_id.is_none_or(|r| a.rule_id == r)
                        && (!filter.open_only || a.is_open())
                })
                .cloned(),
            |a| a.id,
            &request,
        ))
    }

    async fn acknowledge_alert(
        &self,
        org: OrganizationId,
        id: AlertId,
        ack: &Acknowledgement,
    ) -> Result<Alert, StoreError> {
        let mut t = self.lock();
        let alert = t
            .alerts
            .get_mut(&id)
            .filter(|a| a.organization_id == org)
            .ok_or(not_found("alert"))?;
        if alert.acknowledgement.is_some() {
            return Err(StoreError::Conflict {
                entity: "alert",
                reason: "already acknowledged".into(),
            });
        }
        alert.acknowledgement = Some(ack.clone());
        Ok(alert.clone())
    }

    async fn open_rule_ids(&self) -> Result<Vec<AlertRuleId>, StoreError> {
        let t = self.lock();
        let mut ids: Vec<_> = t
            .alerts
            .values()
            .filter(|a| a.is_open())
            .map(|a| a.rule_id)
            .collect();
        ids.sort();
        Ok(ids)
    }
}

#[async_trait]
impl TransmitterRepository for MemoryStore {
    async fn create_transmitter(&self, transmitter: &Transmitter) -> Result<(), StoreError> {
        let mut t = self.lock();
        if !t.has_organization(transmitter.organization_id) {
            return Err(StoreError::MissingParent {
                entity: "transmitter",
                parent: "organization",
            });
        }
        if t.transmitters.contains_key(&transmitter.id)
            || t.transmitters.values().any(|x| {
                x.organization_id == transmitter.organization_id && x.name == transmitter.name
            })
        {
            return Err(StoreError::Duplicate {
                entity: "transmitter",
                field: "name",
            });
        }
        t.transmitters.insert(transmitter.id, transmitter.clone());
        Ok(())
    }

    async fn get_transmitter(
        &self,
        org: OrganizationId,
        id: TransmitterId,
    ) -> Result<Transmitter, StoreError> {
        self.lock()
            .transmitters
            .get(&id)
            .filter(|x| x.organization_id == org)
            .cloned()
            .ok_or(not_found("transmitter"))
    }

    async fn list_transmitters(
        &self,
        org: OrganizationId,
        request: PageRequest<TransmitterId>,
    ) -> Result<Page<Transmitter, TransmitterId>, StoreError> {
        let t = self.lock();
        Ok(page(
            t.transmitters
                .values()
                .filter(|x| x.organization_id == org)
                .cloned(),
            |x| x.id,
            &request,
        ))
    }

    async fn delete_transmitter(
        &self,
        org: OrganizationId,
        id: TransmitterId,
    ) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.transmitters
            .get(&id)
            .is_none_or(|x| x.organization_id != org)
        {
            return Err(not_found("transmitter"));
        }
        t.transmitters.remove(&id);
        t.dead_letters.retain(|_, d| d.transmitter_id != id);
        t.delivery_states.remove(&id);
        Ok(())
    }

    async fn list_all_transmitters(
        &self,
        request: PageRequest<TransmitterId>,
    ) -> Result<Page<Transmitter, TransmitterId>, StoreError> {
        let t = self.lock();
        Ok(page(t.transmitters.values().cloned(), |x| x.id, &request))
    }

    async fn record_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.transmitters
            .get(&letter.transmitter_id)
            .is_none_or(|x| x.organization_id != letter.organization_id)
        {
            return Err(StoreError::MissingParent {
                entity: "dead_letter",
                parent: "transmitter",
            });
        }
        t.dead_letters.insert(letter.id, letter.clone());
        Ok(())
    }

    async fn list_dead_letters(
        &self,
        org: OrganizationId,
        transmitter: Option<TransmitterId>,
        request: PageRequest<DeadLetterId>,
    ) -> Result<Page<DeadLetter, DeadLetterId>, StoreError> {
        let t = self.lock();
        Ok(page(
            t.dead_letters
                .values()
                .filter(|d| {
                    d.organization_id == org && transmitter.is_none_or(|x| d.transmitter_id == x)
                })
                .cloned(),
            |d| d.id,
            &request,
        ))
    }

    async fn record_delivery_state(&self, state: &DeliveryState) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.transmitters
            .get(&state.transmitter_id)
            .is_none_or(|x| x.organization_id != state.organization_id)
        {
            return Err(StoreError::MissingParent {
                entity: "delivery_state",
                parent: "transmitter",
            });
        }
        t.delivery_states
            .insert(state.transmitter_id, state.clone());
        Ok(())
    }

    async fn delivery_states(&self, org: OrganizationId) -> Result<Vec<DeliveryState>, StoreError> {
        Ok(self
            .lock()
            .delivery_states
            .values()
            .filter(|s| s.organization_id == org)
            .cloned()
            .collect())
    }
}
