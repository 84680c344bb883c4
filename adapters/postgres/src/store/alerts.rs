//! [`AlertRepository`] and [`TransmitterRepository`] on PostgreSQL. Conditions, destinations and
//! deliveries are stored as `jsonb` in the domain's serde form.

use async_trait::async_trait;
use chamberlain_db_span::db_port;
use chamberlain_domain::Timestamp;
use chamberlain_domain::alerting::{Acknowledgement, Alert, AlertRule};
use chamberlain_domain::model::{
    AlertId, AlertRuleId, ChamberId, DeadLetterId, Description, OrganizationId, Page, PageRequest,
    TransmitterId, UserId,
};
use chamberlain_domain::ports::{AlertFilter, AlertRepository, StoreError, TransmitterRepository};
use chamberlain_domain::transmit::{DeadLetter, DeliveryState, Forwarded, Transmitter};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::rows::{Cols, ts};
use super::{decode_all, limit};
use crate::PgStore;
use crate::errors::{corrupt, store_error};

type Result<T> = std::result::Result<T, StoreError>;

const RULE_COLUMNS: &str = "id, organization_id, chamber_id, name, condition, created_at";
const ALERT_COLUMNS: &str = "id, organization_id, rule_id, chamber_id, rule_name, since, \
     opened_at, resolved_at, detail, acknowledged_by, acknowledged_at, ack_comment";
const TRANSMITTER_COLUMNS: &str =
    "id, organization_id, name, destination, forward_readings, forward_alerts, created_at";
const LETTER_COLUMNS: &str =
    "id, organization_id, transmitter_id, delivery, attempts, last_error, at";

fn rule(row: &PgRow) -> Result<AlertRule> {
    let c = Cols {
        row,
        table: "alert_rules",
    };
    Ok(AlertRule {
        id: AlertRuleId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
        name: c.name("name")?,
        condition: c.get::<Json<_>>("condition")?.0,
        created_at: c.ts("created_at")?,
    })
}

fn alert(row: &PgRow) -> Result<Alert> {
    let c = Cols {
        row,
        table: "alerts",
    };
    let acknowledgement = match (
        c.get::<Option<Uuid>>("acknowledged_by")?,
        c.opt_ts("acknowledged_at")?,
    ) {
        (Some(user), Some(at)) => Some(Acknowledgement {
            user_id: UserId::from_uuid(user),
            at,
            comment: Description::parse(
                &c.get::<Option<String>>("ack_comment")?.unwrap_or_default(),
            )
            .map_err(|e| corrupt("alerts", "ack_comment", e))?,
        }),
        _ => None,
    };
    Ok(Alert {
        id: AlertId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        rule_id: AlertRuleId::from_uuid(c.uuid("rule_id")?),
        chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
        rule_name: c.name("rule_name")?,
        since: c.ts("since")?,
        opened_at: c.ts("opened_at")?,
        resolved_at: c.opt_ts("resolved_at")?,
        detail: c.get("detail")?,
        acknowledgement,
    })
}

fn transmitter(row: &PgRow) -> Result<Transmitter> {
    let c = Cols {
        row,
        table: "transmitters",
    };
    Ok(Transmitter {
        id: TransmitterId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        name: c.name("name")?,
        destination: c.get::<Json<_>>("destination")?.0,
        forwarded: Forwarded::new(c.get("forward_readings")?, c.get("forward_alerts")?)
            .map_err(|e| corrupt("transmitters", "forward_readings", e))?,
        created_at: c.ts("created_at")?,
    })
}

fn letter(row: &PgRow) -> Result<DeadLetter> {
    let c = Cols {
        row,
        table: "dead_letters",
    };
    Ok(DeadLetter {
        id: DeadLetterId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        transmitter_id: TransmitterId::from_uuid(c.uuid("transmitter_id")?),
        delivery: c.get::<Json<_>>("delivery")?.0,
        attempts: u32::try_from(c.get::<i32>("attempts")?)
            .map_err(|e| corrupt("dead_letters", "attempts", e))?,
        last_error: c.get("last_error")?,
        at: c.ts("at")?,
    })
}

const STATE_COLUMNS: &str =
    "transmitter_id, organization_id, last_delivered_at, failing_since, last_error, updated_at";

fn delivery_state(row: &PgRow) -> Result<DeliveryState> {
    let c = Cols {
        row,
        table: "transmitter_delivery_states",
    };
    Ok(DeliveryState {
        transmitter_id: TransmitterId::from_uuid(c.uuid("transmitter_id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        last_delivered_at: c.opt_ts("last_delivered_at")?,
        failing_since: c.opt_ts("failing_since")?,
        last_error: c.get("last_error")?,
        updated_at: c.ts("updated_at")?,
    })
}

#[db_port("postgresql")]
#[async_trait]
impl AlertRepository for PgStore {
    async fn create_rule(&self, r: &AlertRule) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO alert_rules ({RULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        )))
        .bind(r.id.as_uuid())
        .bind(r.organization_id.as_uuid())
        .bind(r.chamber_id.as_uuid())
        .bind(r.name.as_str())
        .bind(Json(&r.condition))
        .bind(ts(r.created_at))
        .execute(self.pool())
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn get_rule(&self, org: OrganizationId, id: AlertRuleId) -> Result<AlertRule> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RULE_COLUMNS} FROM alert_rules WHERE organization_id = $1 AND id = $2"
        )))
        .bind(org.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(self.pool())
        .await
        .map_err(store_error)?;
        row.as_ref()
            .map(rule)
            .transpose()?
            .ok_or(StoreError::NotFound {
                entity: "alert_rule",
            })
    }

    async fn list_rules(
        &self,
        org: OrganizationId,
        chamber: Option<ChamberId>,
        page: PageRequest<AlertRuleId>,
    ) -> Result<Page<AlertRule, AlertRuleId>> {
        self.read_page(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {RULE_COLUMNS} FROM alert_rules WHERE organization_id = $1 \
             AND ($2::uuid IS NULL OR chamber_id = $2) AND ($3::uuid IS NULL OR id > $3) \
             ORDER BY id LIMIT $4"
            )))
            .bind(org.as_uuid())
            .bind(chamber.map(|c| *c.as_uuid()))
            .bind(page.after.map(|a| *a.as_uuid()))
            .bind(limit(&page)),
            rule,
            page.size,
            |r| r.id,
        )
        .await
    }

    async fn delete_rule(&self, org: OrganizationId, id: AlertRuleId) -> Result<()> {
        let done = sqlx::query("DELETE FROM alert_rules WHERE organization_id = $1 AND id = $2")
            .bind(org.as_uuid())
            .bind(id.as_uuid())
            .execute(self.pool())
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                entity: "alert_rule",
            });
        }
        Ok(())
    }

    async fn list_all_rules(
        &self,
        page: PageRequest<AlertRuleId>,
    ) -> Result<Page<AlertRule, AlertRuleId>> {
        self.read_page(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {RULE_COLUMNS} FROM alert_rules WHERE ($1::uuid IS NULL OR id > $1) \
             ORDER BY id LIMIT $2"
            )))
            .bind(page.after.map(|a| *a.as_uuid()))
            .bind(limit(&page)),
            rule,
            page.size,
            |r| r.id,
        )
        .await
    }

    async fn open_alert(&self, a: &Alert) -> Result<()> {
        let ack = a.acknowledgement.as_ref();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO alerts ({ALERT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        )))
        .bind(a.id.as_uuid())
        .bind(a.organization_id.as_uuid())
        .bind(a.rule_id.as_uuid())
        .bind(a.chamber_id.as_uuid())
        .bind(a.rule_name.as_str())
        .bind(ts(a.since))
        .bind(ts(a.opened_at))
        .bind(a.resolved_at.map(ts))
        .bind(&a.detail)
        .bind(ack.map(|k| *k.user_id.as_uuid()))
        .bind(ack.map(|k| ts(k.at)))
        .bind(ack.map(|k| k.comment.as_str()))
        .execute(self.pool())
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn resolve_alert(&self, rule: AlertRuleId, at: Timestamp) -> Result<Option<Alert>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE alerts SET resolved_at = $2 WHERE rule_id = $1 AND resolved_at IS NULL \
             RETURNING {ALERT_COLUMNS}"
        )))
        .bind(rule.as_uuid())
        .bind(ts(at))
        .fetch_optional(self.pool())
        .await
        .map_err(store_error)?;
        row.as_ref().map(alert).transpose()
    }

    async fn get_alert(&self, org: OrganizationId, id: AlertId) -> Result<Alert> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE organization_id = $1 AND id = $2"
        )))
        .bind(org.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(self.pool())
        .await
        .map_err(store_error)?;
        row.as_ref()
            .map(alert)
            .transpose()?
            .ok_or(StoreError::NotFound { entity: "alert" })
    }

    async fn list_alerts(
        &self,
        org: OrganizationId,
        filter: AlertFilter,
        page: PageRequest<AlertId>,
    ) -> Result<Page<Alert, AlertId>> {
        self.read_page(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE organization_id = $1 \
             AND ($2::uuid IS NULL OR chamber_id = $2) AND ($3::uuid IS NULL OR rule_id = $3) \
             AND (NOT $4 OR resolved_at IS NULL) AND ($5::uuid IS NULL OR id > $5) \
             ORDER BY id LIMIT $6"
            )))
            .bind(org.as_uuid())
            .bind(filter.chamber_id.map(|c| *c.as_uuid()))
            .bind(filter.rule_id.map(|r| *r.as_uuid()))
            .bind(filter.open_only)
            .bind(page.after.map(|a| *a.as_uuid()))
            .bind(limit(&page)),
            alert,
            page.size,
            |a| a.id,
        )
        .await
    }

    async fn acknowledge_alert(
        &self,
        org: OrganizationId,
        id: AlertId,
        ack: &Acknowledgement,
    ) -> Result<Alert> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE alerts SET acknowledged_by = $3, acknowledged_at = $4, ack_comment = $5 \
             WHERE organization_id = $1 AND id = $2 AND acknowledged_at IS NULL \
             RETURNING {ALERT_COLUMNS}"
        )))
        .bind(org.as_uuid())
        .bind(id.as_uuid())
        .bind(ack.user_id.as_uuid())
        .bind(ts(ack.at))
        .bind(ack.comment.as_str())
        .fetch_optional(self.pool())
        .await
        .map_err(store_error)?;
        match row {
            Some(row) => alert(&row),
            None => {
                // Either not there (for this tenant) or acknowledged already.
                self.get_alert(org, id).await?;
                Err(StoreError::Conflict {
                    entity: "alert",
                    reason: "already acknowledged".into(),
                })
            }
        }
    }

    async fn open_rule_ids(&self) -> Result<Vec<AlertRuleId>> {
        let rows =
            sqlx::query("SELECT rule_id FROM alerts WHERE resolved_at IS NULL ORDER BY rule_id")
                .fetch_all(self.pool())
                .await
                .map_err(store_error)?;
        rows.iter()
            .map(|r| {
                r.try_get::<Uuid, _>("rule_id")
                    .map(AlertRuleId::from_uuid)
                    .map_err(|e| corrupt("alerts", "rule_id", e))
            })
            .collect()
    }
}

#[db_port("postgresql")]
#[async_trait]
impl TransmitterRepository for PgStore {
    async fn create_transmitter(&self, t: &Transmitter) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO transmitters ({TRANSMITTER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        )))
        .bind(t.id.as_uuid())
        .bind(t.organization_id.as_uuid())
        .bind(t.name.as_str())
        .bind(Json(&t.destination))
        .bind(t.forwarded.readings)
        .bind(t.forwarded.alerts)
        .bind(ts(t.created_at))
        .execute(self.pool())
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn get_transmitter(&self, org: OrganizationId, id: TransmitterId) -> Result<Transmitter> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TRANSMITTER_COLUMNS} FROM transmitters WHERE organization_id = $1 AND id = $2"
        )))
        .bind(org.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(self.pool())
        .await
        .map_err(store_error)?;
        row.as_ref()
            .map(transmitter)
            .transpose()?
            .ok_or(StoreError::NotFound {
                entity: "transmitter",
            })
    }

    async fn list_transmitters(
        &self,
        org: OrganizationId,
        page: PageRequest<TransmitterId>,
    ) -> Result<Page<Transmitter, TransmitterId>> {
        self.read_page(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {TRANSMITTER_COLUMNS} FROM transmitters WHERE organization_id = $1 \
             AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"
            )))
            .bind(org.as_uuid())
            .bind(page.after.map(|a| *a.as_uuid()))
            .bind(limit(&page)),
            transmitter,
            page.size,
            |t| t.id,
        )
        .await
    }

    async fn delete_transmitter(&self, org: OrganizationId, id: TransmitterId) -> Result<()> {
        let done = sqlx::query("DELETE FROM transmitters WHERE organization_id = $1 AND id = $2")
            .bind(org.as_uuid())
            .bind(id.as_uuid())
            .execute(self.pool())
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                entity: "transmitter",
            });
        }
        Ok(())
    }

    async fn list_all_transmitters(
        &self,
        page: PageRequest<TransmitterId>,
    ) -> Result<Page<Transmitter, TransmitterId>> {
        self.read_page(
sqlx::query(AssertSqlSafe(format!(
            "SELECT {TRANSMITTER_COLUMNS} FROM transmitters WHERE ($1::uuid IS NULL OR id > $1) \
             ORDER BY id LIMIT $2"
        )))
        .bind(page.after.map(|a| *a.as_uuid()))
        .bind(limit(&page)),
transmitter,
page.size,
|t| t.id,
)
.await
    }

    async fn record_dead_letter(&self, l: &DeadLetter) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO dead_letters ({LETTER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        )))
        .bind(l.id.as_uuid())
        .bind(l.organization_id.as_uuid())
        .bind(l.transmitter_id.as_uuid())
        .bind(Json(&l.delivery))
        .bind(i32::try_from(l.attempts).unwrap_or(i32::MAX))
        .bind(&l.last_error)
        .bind(ts(l.at))
        .execute(self.pool())
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn list_dead_letters(
        &self,
        org: OrganizationId,
        transmitter: Option<TransmitterId>,
        page: PageRequest<DeadLetterId>,
    ) -> Result<Page<DeadLetter, DeadLetterId>> {
        self.read_page(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {LETTER_COLUMNS} FROM dead_letters WHERE organization_id = $1 \
             AND ($2::uuid IS NULL OR transmitter_id = $2) AND ($3::uuid IS NULL OR id > $3) \
             ORDER BY id LIMIT $4"
            )))
            .bind(org.as_uuid())
            .bind(transmitter.map(|t| *t.as_uuid()))
            .bind(page.after.map(|a| *a.as_uuid()))
            .bind(limit(&page)),
            letter,
            page.size,
            |l| l.id,
        )
        .await
    }

    async fn record_delivery_state(&self, s: &DeliveryState) -> Result<()> {
        let done = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO transmitter_delivery_states ({STATE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (transmitter_id) DO UPDATE SET \
             last_delivered_at = EXCLUDED.last_delivered_at, \
             failing_since = EXCLUDED.failing_since, last_error = EXCLUDED.last_error, \
             updated_at = EXCLUDED.updated_at \
             WHERE transmitter_delivery_states.organization_id = EXCLUDED.organization_id"
        )))
        .bind(s.transmitter_id.as_uuid())
        .bind(s.organization_id.as_uuid())
        .bind(s.last_delivered_at.map(ts))
        .bind(s.failing_since.map(ts))
        .bind(s.last_error.as_deref())
        .bind(ts(s.updated_at))
        .execute(self.pool())
        .await
        .map_err(store_error)?;
        if done.rows_affected() == 0 {
            // The id is another organization's transmitter.
            return Err(StoreError::MissingParent {
                entity: "delivery_state",
                parent: "transmitter",
            });
        }
        Ok(())
    }

    async fn delivery_states(&self, org: OrganizationId) -> Result<Vec<DeliveryState>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {STATE_COLUMNS} FROM transmitter_delivery_states \
             WHERE organization_id = $1 ORDER BY transmitter_id"
        )))
        .bind(org.as_uuid())
        .fetch_all(self.pool())
        .await
        .map_err(store_error)?;
        decode_all(&rows, delivery_state)
    }
}
