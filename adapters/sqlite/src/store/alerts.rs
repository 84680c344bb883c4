//! [`AlertRepository`] and [`TransmitterRepository`] of [`SqliteStore`]. Conditions,
//! destinations and deliveries are stored as JSON text in the domain's serde form.

use async_trait::async_trait;
use chamberlain_db_span::db_port;
use chamberlain_domain::alerting::{Acknowledgement, Alert, AlertRule};
use chamberlain_domain::model::{
    AlertId, AlertRuleId, ChamberId, DeadLetterId, Description, OrganizationId, Page, PageRequest,
    TransmitterId, UserId,
};
use chamberlain_domain::ports::{AlertFilter, AlertRepository, StoreError, TransmitterRepository};
use chamberlain_domain::time::Timestamp;
use chamberlain_domain::transmit::{DeadLetter, DeliveryState, Forwarded, Transmitter};
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use super::rows::{Cols, decode_all};
use super::{SqliteStore, after_id, exists, limit, missing_parent, not_found, touched};
use crate::errors::{Write, child, corrupt, db, writing};

type Result<T> = std::result::Result<T, StoreError>;

macro_rules! rule_columns {
    () => {
        "id, organization_id, chamber_id, name, condition, created_at"
    };
}
macro_rules! alert_columns {
    () => {
        "id, organization_id, rule_id, chamber_id, rule_name, since, opened_at, resolved_at, \
         detail, acknowledged_by, acknowledged_at, ack_comment"
    };
}
macro_rules! transmitter_columns {
    () => {
        "id, organization_id, name, destination, forward_readings, forward_alerts, created_at"
    };
}
macro_rules! letter_columns {
    () => {
        "id, organization_id, transmitter_id, delivery, attempts, last_error, at"
    };
}

fn json<T: serde::Serialize>(value: &T, field: &'static str) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::unavailable(format!("{field} cannot be encoded: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(c: &Cols<'_>, column: &'static str) -> Result<T> {
    c.parse(column, |s: String| serde_json::from_str::<T>(&s))
}

fn rule(row: &SqliteRow) -> Result<AlertRule> {
    let c = Cols::new(row, "alert_rules");
    Ok(AlertRule {
        id: AlertRuleId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
        name: c.name("name")?,
        condition: from_json(&c, "condition")?,
        created_at: c.at("created_at")?,
    })
}

fn alert(row: &SqliteRow) -> Result<Alert> {
    let c = Cols::new(row, "alerts");
    let acknowledgement = match (
        c.get::<Option<Uuid>>("acknowledged_by")?,
        c.opt_at("acknowledged_at")?,
    ) {
        (Some(user), Some(at)) => Some(Acknowledgement {
            user_id: UserId::from_uuid(user),
            at,
            comment: c.parse("ack_comment", |s: Option<String>| {
                Description::parse(&s.unwrap_or_default())
            })?,
        }),
        _ => None,
    };
    Ok(Alert {
        id: AlertId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        rule_id: AlertRuleId::from_uuid(c.uuid("rule_id")?),
        chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
        rule_name: c.name("rule_name")?,
        since: c.at("since")?,
        opened_at: c.at("opened_at")?,
        resolved_at: c.opt_at("resolved_at")?,
        detail: c.get("detail")?,
        acknowledgement,
    })
}

fn transmitter(row: &SqliteRow) -> Result<Transmitter> {
    let c = Cols::new(row, "transmitters");
    Ok(Transmitter {
        id: TransmitterId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        name: c.name("name")?,
        destination: from_json(&c, "destination")?,
        forwarded: Forwarded::new(c.get("forward_readings")?, c.get("forward_alerts")?)
            .map_err(|e| corrupt("transmitters", "forward_readings", e))?,
        created_at: c.at("created_at")?,
    })
}

fn letter(row: &SqliteRow) -> Result<DeadLetter> {
    let c = Cols::new(row, "dead_letters");
    Ok(DeadLetter {
        id: DeadLetterId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        transmitter_id: TransmitterId::from_uuid(c.uuid("transmitter_id")?),
        delivery: from_json(&c, "delivery")?,
        attempts: c.count("attempts")?,
        last_error: c.get("last_error")?,
        at: c.at("at")?,
    })
}

macro_rules! state_columns {
    () => {
        "transmitter_id, organization_id, last_delivered_at, failing_since, last_error, updated_at"
    };
}

fn delivery_state(row: &SqliteRow) -> Result<DeliveryState> {
    let c = Cols::new(row, "transmitter_delivery_states");
    Ok(DeliveryState {
        transmitter_id: TransmitterId::from_uuid(c.uuid("transmitter_id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        last_delivered_at: c.opt_at("last_delivered_at")?,
        failing_since: c.opt_at("failing_since")?,
        last_error: c.get("last_error")?,
        updated_at: c.at("updated_at")?,
    })
}

fn opt_id(id: Option<&Uuid>) -> Option<Uuid> {
    id.copied()
}

#[db_port("sqlite")]
#[async_trait]
impl AlertRepository for SqliteStore {
    async fn create_rule(&self, r: &AlertRule) -> Result<()> {
        let condition = json(&r.condition, "condition")?;
        let mut w = self.begin_write().await?;
        let result = async {
            let chamber = exists(
                w.conn(),
                sqlx::query("SELECT 1 FROM chambers WHERE id = ?1 AND organization_id = ?2")
                    .bind(*r.chamber_id.as_uuid())
                    .bind(*r.organization_id.as_uuid()),
            )
            .await?;
            if !chamber {
                return Err(missing_parent("alert_rule", "chamber"));
            }
            sqlx::query(concat!(
                "INSERT INTO alert_rules (",
                rule_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ))
            .bind(*r.id.as_uuid())
            .bind(*r.organization_id.as_uuid())
            .bind(*r.chamber_id.as_uuid())
            .bind(r.name.as_str())
            .bind(condition)
            .bind(r.created_at.as_unix_millis())
            .execute(w.conn())
            .await
            .map_err(writing(child("alert_rule", "chamber")))?;
            Ok(())
        }
        .await;
        w.finish(result).await
    }

    async fn get_rule(&self, org: OrganizationId, id: AlertRuleId) -> Result<AlertRule> {
        let row = sqlx::query(concat!(
            "SELECT ",
            rule_columns!(),
            " FROM alert_rules WHERE organization_id = ?1 AND id = ?2"
        ))
        .bind(*org.as_uuid())
        .bind(*id.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref()
            .map(rule)
            .transpose()?
            .ok_or(not_found("alert_rule"))
    }

    async fn list_rules(
        &self,
        org: OrganizationId,
        chamber: Option<ChamberId>,
        page: PageRequest<AlertRuleId>,
    ) -> Result<Page<AlertRule, AlertRuleId>> {
        self.read_page(
            sqlx::query(concat!(
                "SELECT ",
                rule_columns!(),
                " FROM alert_rules WHERE organization_id = ?1 AND (?2 IS NULL OR chamber_id = ?2) \
              AND id > ?3 ORDER BY id LIMIT ?4"
            ))
            .bind(*org.as_uuid())
            .bind(chamber.map(|c| *c.as_uuid()))
            .bind(after_id(page.after.as_ref().map(AlertRuleId::as_uuid)))
            .bind(limit(page.size)),
            rule,
            page.size,
            |r| r.id,
        )
        .await
    }

    async fn delete_rule(&self, org: OrganizationId, id: AlertRuleId) -> Result<()> {
        let mut w = self.begin_write().await?;
        let result = sqlx::query("DELETE FROM alert_rules WHERE organization_id = ?1 AND id = ?2")
            .bind(*org.as_uuid())
            .bind(*id.as_uuid())
            .execute(w.conn())
            .await
            .map_err(writing(Write::Plain))
            .and_then(|done| touched(done, "alert_rule"));
        w.finish(result).await
    }

    async fn list_all_rules(
        &self,
        page: PageRequest<AlertRuleId>,
    ) -> Result<Page<AlertRule, AlertRuleId>> {
        self.read_page(
            sqlx::query(concat!(
                "SELECT ",
                rule_columns!(),
                " FROM alert_rules WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))
            .bind(after_id(page.after.as_ref().map(AlertRuleId::as_uuid)))
            .bind(limit(page.size)),
            rule,
            page.size,
            |r| r.id,
        )
        .await
    }

    async fn open_alert(&self, a: &Alert) -> Result<()> {
        let ack = a.acknowledgement.as_ref();
        let mut w = self.begin_write().await?;
        let result = async {
            let parent = exists(
                w.conn(),
                sqlx::query("SELECT 1 FROM alert_rules WHERE id = ?1 AND organization_id = ?2")
                    .bind(*a.rule_id.as_uuid())
                    .bind(*a.organization_id.as_uuid()),
            )
            .await?;
            if !parent {
                return Err(missing_parent("alert", "alert_rule"));
            }
            sqlx::query(concat!(
                "INSERT INTO alerts (",
                alert_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ))
            .bind(*a.id.as_uuid())
            .bind(*a.organization_id.as_uuid())
            .bind(*a.rule_id.as_uuid())
            .bind(*a.chamber_id.as_uuid())
            .bind(a.rule_name.as_str())
            .bind(a.since.as_unix_millis())
            .bind(a.opened_at.as_unix_millis())
            .bind(a.resolved_at.map(Timestamp::as_unix_millis))
            .bind(&a.detail)
            .bind(ack.map(|k| *k.user_id.as_uuid()))
            .bind(ack.map(|k| k.at.as_unix_millis()))
            .bind(ack.map(|k| k.comment.as_str().to_owned()))
            .execute(w.conn())
            .await
            .map_err(writing(child("alert", "alert_rule")))?;
            Ok(())
        }
        .await;
        w.finish(result).await
    }

    async fn resolve_alert(&self, rule: AlertRuleId, at: Timestamp) -> Result<Option<Alert>> {
        let mut w = self.begin_write().await?;
        let result = sqlx::query(concat!(
            "UPDATE alerts SET resolved_at = ?2 WHERE rule_id = ?1 AND resolved_at IS NULL \
             RETURNING ",
            alert_columns!()
        ))
        .bind(*rule.as_uuid())
        .bind(at.as_unix_millis())
        .fetch_optional(w.conn())
        .await
        .map_err(writing(Write::Plain))
        .and_then(|row| row.as_ref().map(alert).transpose());
        w.finish(result).await
    }

    async fn get_alert(&self, org: OrganizationId, id: AlertId) -> Result<Alert> {
        let row = sqlx::query(concat!(
            "SELECT ",
            alert_columns!(),
            " FROM alerts WHERE organization_id = ?1 AND id = ?2"
        ))
        .bind(*org.as_uuid())
        .bind(*id.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref()
            .map(alert)
            .transpose()?
            .ok_or(not_found("alert"))
    }

    async fn list_alerts(
        &self,
        org: OrganizationId,
        filter: AlertFilter,
        page: PageRequest<AlertId>,
    ) -> Result<Page<Alert, AlertId>> {
        self.read_page(
            sqlx::query(concat!(
                "SELECT ",
                alert_columns!(),
                " FROM alerts WHERE organization_id = ?1 AND (?2 IS NULL OR chamber_id = ?2) \
              AND (?3 IS NULL OR rule_id = ?3) AND (NOT ?4 OR resolved_at IS NULL) \
              AND id > ?5 ORDER BY id LIMIT ?6"
            ))
            .bind(*org.as_uuid())
            .bind(opt_id(filter.chamber_id.as_ref().map(ChamberId::as_uuid)))
            .bind(opt_id(filter.rule_id.as_ref().map(AlertRuleId::as_uuid)))
            .bind(filter.open_only)
            .bind(after_id(page.after.as_ref().map(AlertId::as_uuid)))
            .bind(limit(page.size)),
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
        let mut w = self.begin_write().await?;
        let result = async {
            let row = sqlx::query(concat!(
                "UPDATE alerts SET acknowledged_by = ?3, acknowledged_at = ?4, ack_comment = ?5 \
                 WHERE organization_id = ?1 AND id = ?2 AND acknowledged_at IS NULL RETURNING ",
                alert_columns!()
            ))
            .bind(*org.as_uuid())
            .bind(*id.as_uuid())
            .bind(*ack.user_id.as_uuid())
            .bind(ack.at.as_unix_millis())
            .bind(ack.comment.as_str())
            .fetch_optional(w.conn())
            .await
            .map_err(writing(Write::Plain))?;
            if let Some(row) = row {
                return alert(&row);
            }
            let there = exists(
                w.conn(),
                sqlx::query("SELECT 1 FROM alerts WHERE organization_id = ?1 AND id = ?2")
                    .bind(*org.as_uuid())
                    .bind(*id.as_uuid()),
            )
            .await?;
            Err(if there {
                StoreError::Conflict {
                    entity: "alert",
                    reason: "already acknowledged".into(),
                }
            } else {
                not_found("alert")
            })
        }
        .await;
        w.finish(result).await
    }

    async fn open_rule_ids(&self) -> Result<Vec<AlertRuleId>> {
        let rows =
            sqlx::query("SELECT rule_id FROM alerts WHERE resolved_at IS NULL ORDER BY rule_id")
                .fetch_all(&self.readers)
                .await
                .map_err(db)?;
        rows.iter()
            .map(|row| {
                Cols::new(row, "alerts")
                    .uuid("rule_id")
                    .map(AlertRuleId::from_uuid)
            })
            .collect()
    }
}

#[db_port("sqlite")]
#[async_trait]
impl TransmitterRepository for SqliteStore {
    async fn create_transmitter(&self, t: &Transmitter) -> Result<()> {
        let destination = json(&t.destination, "destination")?;
        let mut w = self.begin_write().await?;
        let result = async {
            let org = exists(
                w.conn(),
                sqlx::query("SELECT 1 FROM organizations WHERE id = ?1")
                    .bind(*t.organization_id.as_uuid()),
            )
            .await?;
            if !org {
                return Err(missing_parent("transmitter", "organization"));
            }
            sqlx::query(concat!(
                "INSERT INTO transmitters (",
                transmitter_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ))
            .bind(*t.id.as_uuid())
            .bind(*t.organization_id.as_uuid())
            .bind(t.name.as_str())
            .bind(destination)
            .bind(t.forwarded.readings)
            .bind(t.forwarded.alerts)
            .bind(t.created_at.as_unix_millis())
            .execute(w.conn())
            .await
            .map_err(writing(child("transmitter", "organization")))?;
            Ok(())
        }
        .await;
        w.finish(result).await
    }

    async fn get_transmitter(&self, org: OrganizationId, id: TransmitterId) -> Result<Transmitter> {
        let row = sqlx::query(concat!(
            "SELECT ",
            transmitter_columns!(),
            " FROM transmitters WHERE organization_id = ?1 AND id = ?2"
        ))
        .bind(*org.as_uuid())
        .bind(*id.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref()
            .map(transmitter)
            .transpose()?
            .ok_or(not_found("transmitter"))
    }

    async fn list_transmitters(
        &self,
        org: OrganizationId,
        page: PageRequest<TransmitterId>,
    ) -> Result<Page<Transmitter, TransmitterId>> {
        self.read_page(
            sqlx::query(concat!(
                "SELECT ",
                transmitter_columns!(),
                " FROM transmitters WHERE organization_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            ))
            .bind(*org.as_uuid())
            .bind(after_id(page.after.as_ref().map(TransmitterId::as_uuid)))
            .bind(limit(page.size)),
            transmitter,
            page.size,
            |t| t.id,
        )
        .await
    }

    async fn delete_transmitter(&self, org: OrganizationId, id: TransmitterId) -> Result<()> {
        let mut w = self.begin_write().await?;
        let result = sqlx::query("DELETE FROM transmitters WHERE organization_id = ?1 AND id = ?2")
            .bind(*org.as_uuid())
            .bind(*id.as_uuid())
            .execute(w.conn())
            .await
            .map_err(writing(Write::Plain))
            .and_then(|done| touched(done, "transmitter"));
        w.finish(result).await
    }

    async fn list_all_transmitters(
        &self,
        page: PageRequest<TransmitterId>,
    ) -> Result<Page<Transmitter, TransmitterId>> {
        self.read_page(
            sqlx::query(concat!(
                "SELECT ",
                transmitter_columns!(),
                " FROM transmitters WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))
            .bind(after_id(page.after.as_ref().map(TransmitterId::as_uuid)))
            .bind(limit(page.size)),
            transmitter,
            page.size,
            |t| t.id,
        )
        .await
    }

    async fn record_dead_letter(&self, l: &DeadLetter) -> Result<()> {
        let delivery = json(&l.delivery, "delivery")?;
        let mut w = self.begin_write().await?;
        let result = async {
            let parent = exists(
                w.conn(),
                sqlx::query("SELECT 1 FROM transmitters WHERE id = ?1 AND organization_id = ?2")
                    .bind(*l.transmitter_id.as_uuid())
                    .bind(*l.organization_id.as_uuid()),
            )
            .await?;
            if !parent {
                return Err(missing_parent("dead_letter", "transmitter"));
            }
            sqlx::query(concat!(
                "INSERT INTO dead_letters (",
                letter_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ))
            .bind(*l.id.as_uuid())
            .bind(*l.organization_id.as_uuid())
            .bind(*l.transmitter_id.as_uuid())
            .bind(delivery)
            .bind(i64::from(l.attempts))
            .bind(&l.last_error)
            .bind(l.at.as_unix_millis())
            .execute(w.conn())
            .await
            .map_err(writing(child("dead_letter", "transmitter")))?;
            Ok(())
        }
        .await;
        w.finish(result).await
    }

    async fn list_dead_letters(
        &self,
        org: OrganizationId,
        transmitter: Option<TransmitterId>,
        page: PageRequest<DeadLetterId>,
    ) -> Result<Page<DeadLetter, DeadLetterId>> {
        self.read_page(
            sqlx::query(concat!(
                "SELECT ",
                letter_columns!(),
                " FROM dead_letters WHERE organization_id = ?1 \
              AND (?2 IS NULL OR transmitter_id = ?2) AND id > ?3 ORDER BY id LIMIT ?4"
            ))
            .bind(*org.as_uuid())
            .bind(opt_id(transmitter.as_ref().map(TransmitterId::as_uuid)))
            .bind(after_id(page.after.as_ref().map(DeadLetterId::as_uuid)))
            .bind(limit(page.size)),
            letter,
            page.size,
            |l| l.id,
        )
        .await
    }

    async fn record_delivery_state(&self, s: &DeliveryState) -> Result<()> {
        let mut w = self.begin_write().await?;
        let result = async {
            let parent = exists(
                w.conn(),
                sqlx::query("SELECT 1 FROM transmitters WHERE id = ?1 AND organization_id = ?2")
                    .bind(*s.transmitter_id.as_uuid())
                    .bind(*s.organization_id.as_uuid()),
            )
            .await?;
            if !parent {
                return Err(missing_parent("delivery_state", "transmitter"));
            }
            sqlx::query(concat!(
                "INSERT INTO transmitter_delivery_states (",
                state_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (transmitter_id) DO UPDATE SET \
                 last_delivered_at = excluded.last_delivered_at, \
                 failing_since = excluded.failing_since, last_error = excluded.last_error, \
                 updated_at = excluded.updated_at"
            ))
            .bind(*s.transmitter_id.as_uuid())
            .bind(*s.organization_id.as_uuid())
            .bind(s.last_delivered_at.map(Timestamp::as_unix_millis))
            .bind(s.failing_since.map(Timestamp::as_unix_millis))
            .bind(s.last_error.as_deref())
            .bind(s.updated_at.as_unix_millis())
            .execute(w.conn())
            .await
            .map_err(writing(child("delivery_state", "transmitter")))?;
            Ok(())
        }
        .await;
        w.finish(result).await
    }

    async fn delivery_states(&self, org: OrganizationId) -> Result<Vec<DeliveryState>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            state_columns!(),
            " FROM transmitter_delivery_states WHERE organization_id = ?1 ORDER BY transmitter_id"
        ))
        .bind(*org.as_uuid())
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        decode_all(&rows, delivery_state)
    }
}
