//! [`SectionRepository`], [`ChamberRepository`], [`DetectorRepository`] and [`BatchRepository`]
//! on PostgreSQL: what is polled, where, and in which run.

use std::collections::HashSet;

use async_trait::async_trait;
use chamberlain_db_span::db_port;
use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{
    Batch, BatchId, Chamber, ChamberId, Detector, DetectorId, OrganizationId, Page, PageRequest,
    Section, SectionId,
};
use chamberlain_domain::ports::{
    BatchRepository, ChamberFilter, ChamberRepository, ChamberWithDetectors, DetectorRepository,
    ItemError, SectionRepository, StoreError,
};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use uuid::Uuid;

use super::{decode_all, limit, not_found};
use crate::PgStore;
use crate::errors::store_error;
use crate::store::layouts::{self, Change};
use crate::store::rows::{self, millis, ts};

type Result<T> = std::result::Result<T, StoreError>;

#[db_port("postgresql")]
#[async_trait]
impl SectionRepository for PgStore {
    async fn create(&self, s: &Section) -> Result<()> {
        sqlx::query(
            "INSERT INTO sections (id, organization_id, name, description, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(s.id.as_uuid())
        .bind(s.organization_id.as_uuid())
        .bind(s.name.as_str())
        .bind(s.description.as_str())
        .bind(ts(s.created_at))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn get(&self, org: OrganizationId, id: SectionId) -> Result<Section> {
        let row = sqlx::query("SELECT * FROM sections WHERE organization_id = $1 AND id = $2")
            .bind(org.as_uuid())
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        row.as_ref()
            .map(rows::section)
            .unwrap_or(Err(not_found("section")))
    }

    async fn list(
        &self,
        org: OrganizationId,
        page: PageRequest<SectionId>,
    ) -> Result<Page<Section, SectionId>> {
        self.read_page(
sqlx::query(
            "SELECT * FROM sections WHERE organization_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3",
        )
        .bind(org.as_uuid())
        .bind(page.after.map(|a| *a.as_uuid()))
        .bind(limit(&page)),
rows::section,
page.size,
|s| s.id,
)
.await
    }

    async fn update(&self, s: &Section) -> Result<()> {
        let done = sqlx::query("UPDATE sections SET name = $3, description = $4 WHERE organization_id = $1 AND id = $2")
            .bind(s.organization_id.as_uuid())
            .bind(s.id.as_uuid())
            .bind(s.name.as_str())
            .bind(s.description.as_str())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 {
            Err(not_found("section"))
        } else {
            Ok(())
        }
    }

    async fn delete(&self, org: OrganizationId, id: SectionId) -> Result<()> {
        let (o, i) = (*org.as_uuid(), *id.as_uuid());
        if !self
            .exists(
                "SELECT 1 FROM sections WHERE organization_id = $1 AND id = $2",
                o,
                i,
            )
            .await?
        {
            return Err(not_found("section"));
        }
        if self
            .exists(
                "SELECT 1 FROM chambers WHERE organization_id = $1 AND section_id = $2 LIMIT 1",
                o,
                i,
            )
            .await?
        {
            return Err(StoreError::HasDependents {
                entity: "section",
                dependents: "chambers",
            });
        }
        if self
            .exists(
                "SELECT 1 FROM batches WHERE organization_id = $1 AND section_id = $2 LIMIT 1",
                o,
                i,
            )
            .await?
        {
            return Err(StoreError::HasDependents {
                entity: "section",
                dependents: "batches",
            });
        }
        sqlx::query("DELETE FROM sections WHERE organization_id = $1 AND id = $2")
            .bind(o)
            .bind(i)
            .execute(&self.pool)
            .await
            .map_err(|e| match store_error(e) {
                // A chamber or batch created in the meantime: the foreign key says so.
                StoreError::MissingParent { entity, .. } => StoreError::HasDependents {
                    entity: "section",
                    dependents: if entity == "batch" {
                        "batches"
                    } else {
                        "chambers"
                    },
                },
                other => other,
            })?;
        Ok(())
    }
}

async fn insert_detectors(
    tx: &mut Transaction<'_, Postgres>,
    detectors: &[Detector],
) -> Result<()> {
    if detectors.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Detector) -> Uuid| detectors.iter().map(f).collect::<Vec<_>>();
    let text = |f: fn(&Detector) -> String| detectors.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO detectors (id, organization_id, chamber_id, name, alias, unit, key_kind, key, range_min, range_max) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::float8[], $10::float8[])",
    )
    .bind(col(|d| *d.id.as_uuid()))
    .bind(col(|d| *d.organization_id.as_uuid()))
    .bind(col(|d| *d.chamber_id.as_uuid()))
    .bind(text(|d| d.name.to_string()))
    .bind(detectors.iter().map(|d| d.alias.as_ref().map(ToString::to_string)).collect::<Vec<_>>())
    .bind(text(|d| d.unit.to_string()))
    .bind(text(|d| rows::key_kind(&d.key).to_owned()))
    .bind(text(|d| d.key.to_string()))
    .bind(detectors.iter().map(|d| d.range.min()).collect::<Vec<_>>())
    .bind(detectors.iter().map(|d| d.range.max()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// Inserts one chamber and its detectors within `tx`.
async fn insert_chamber(
    tx: &mut Transaction<'_, Postgres>,
    c: &Chamber,
    detectors: &[Detector],
) -> Result<()> {
    let mut names = HashSet::new();
    for d in detectors {
        if d.chamber_id != c.id || d.organization_id != c.organization_id {
            return Err(StoreError::MissingParent {
                entity: "detector",
                parent: "chamber",
            });
        }
        if !names.insert(&d.name) {
            return Err(StoreError::Duplicate {
                entity: "detector",
                field: "name",
            });
        }
    }
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO chambers ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        rows::CHAMBER_COLUMNS
    )))
    .bind(c.id.as_uuid())
    .bind(c.organization_id.as_uuid())
    .bind(c.section_id.as_uuid())
    .bind(c.name.as_str())
    .bind(c.endpoint.as_str())
    .bind(c.format.as_str())
    .bind(c.interval.as_millis() as i64)
    .bind(millis(c.timeout.as_duration()))
    .bind(rows::state_str(c.state))
    .bind(sqlx::types::Json(c.health_policy))
    .bind(ts(c.schedule_since))
    .bind(ts(c.created_at))
    .bind(ts(c.updated_at))
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    insert_detectors(tx, detectors).await?;
    let ids: Vec<Uuid> = detectors.iter().map(|d| *d.id.as_uuid()).collect();
    layouts::create(tx, *c.id.as_uuid(), &ids).await
}

#[db_port("postgresql")]
#[async_trait]
impl ChamberRepository for PgStore {
    async fn create(&self, c: &Chamber, detectors: &[Detector]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        insert_chamber(&mut tx, c, detectors).await?;
        tx.commit().await.map_err(store_error)
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::create_many", db.system = "postgresql", db.operation = "ChamberRepository::create_many", items = chambers.len()))]
    async fn create_many(
        &self,
        chambers: &[ChamberWithDetectors],
    ) -> std::result::Result<(), ItemError> {
        let mut tx = self.pool.begin().await.map_err(|e| ItemError {
            index: 0,
            error: store_error(e),
        })?;
        for (index, c) in chambers.iter().enumerate() {
            insert_chamber(&mut tx, &c.chamber, &c.detectors)
                .await
                .map_err(|error| ItemError { index, error })?;
        }
        // Dropping the transaction on an error above rolled it back.
        tx.commit().await.map_err(|e| ItemError {
            index: chambers.len().saturating_sub(1),
            error: store_error(e),
        })
    }

    async fn get(&self, org: OrganizationId, id: ChamberId) -> Result<Chamber> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM chambers WHERE organization_id = $1 AND id = $2",
            rows::CHAMBER_COLUMNS
        )))
        .bind(org.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref()
            .map(rows::chamber)
            .unwrap_or(Err(not_found("chamber")))
    }

    async fn list(
        &self,
        org: OrganizationId,
        filter: ChamberFilter,
        page: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>> {
        self.read_page(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {} FROM chambers WHERE organization_id = $1 \
             AND ($2::uuid IS NULL OR section_id = $2) AND ($3::text IS NULL OR state = $3) \
             AND ($4::uuid IS NULL OR id > $4) \
             AND ($6::text IS NULL OR strpos(lower(name), lower($6)) > 0) \
             AND ($7::text IS NULL OR COALESCE((SELECT h.state FROM chamber_health h \
                  WHERE h.chamber_id = chambers.id), 'unknown') = $7) \
             ORDER BY id LIMIT $5",
                rows::CHAMBER_COLUMNS
            )))
            .bind(org.as_uuid())
            .bind(filter.section_id.map(|s| *s.as_uuid()))
            .bind(filter.state.map(rows::state_str))
            .bind(page.after.map(|a| *a.as_uuid()))
            .bind(limit(&page))
            .bind(filter.name_contains.as_deref())
            .bind(
                filter
                    .health
                    .map(chamberlain_domain::model::HealthState::as_str),
            ),
            rows::chamber,
            page.size,
            |c| c.id,
        )
        .await
    }

    async fn update(&self, c: &Chamber) -> Result<()> {
        let (org, id, section) = (
            *c.organization_id.as_uuid(),
            *c.id.as_uuid(),
            *c.section_id.as_uuid(),
        );
        if !self
            .exists(
                "SELECT 1 FROM chambers WHERE organization_id = $1 AND id = $2",
                org,
                id,
            )
            .await?
        {
            return Err(not_found("chamber"));
        }
        if !self
            .exists(
                "SELECT 1 FROM sections WHERE organization_id = $1 AND id = $2",
                org,
                section,
            )
            .await?
        {
            return Err(StoreError::MissingParent {
                entity: "chamber",
                parent: "section",
            });
        }
        let done = sqlx::query(
            "UPDATE chambers SET section_id = $3, name = $4, endpoint = $5, format = $6, interval_ms = $7, \
             timeout_ms = $8, state = $9, health_policy = $10, schedule_since = $11, updated_at = $12 \
             WHERE organization_id = $1 AND id = $2",
        )
        .bind(c.organization_id.as_uuid())
        .bind(c.id.as_uuid())
        .bind(c.section_id.as_uuid())
        .bind(c.name.as_str())
        .bind(c.endpoint.as_str())
        .bind(c.format.as_str())
        .bind(c.interval.as_millis() as i64)
        .bind(millis(c.timeout.as_duration()))
        .bind(rows::state_str(c.state))
        .bind(sqlx::types::Json(c.health_policy))
        .bind(ts(c.schedule_since))
        .bind(ts(c.updated_at))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        if done.rows_affected() == 0 {
            Err(not_found("chamber"))
        } else {
            Ok(())
        }
    }

    async fn delete(&self, org: OrganizationId, id: ChamberId) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let detectors: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM detectors WHERE organization_id = $1 AND chamber_id = $2",
        )
        .bind(org.as_uuid())
        .bind(id.as_uuid())
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        // Ownership first: nothing of another tenant's chamber is touched.
        let gone = sqlx::query("DELETE FROM chambers WHERE organization_id = $1 AND id = $2")
            .bind(org.as_uuid())
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if gone.rows_affected() == 0 {
            return Err(not_found("chamber"));
        }
        // Its polls by their key (chamber); its layouts went with the chamber.
        sqlx::query("DELETE FROM polls WHERE chamber_id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        sqlx::query("DELETE FROM chamber_latest WHERE chamber_id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        // Rows of the previous layout not converted yet.
        if self.has_legacy_tables(&mut tx).await? {
            sqlx::query("DELETE FROM legacy_readings WHERE detector_id = ANY($1)")
                .bind(&detectors)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            sqlx::query("DELETE FROM legacy_poll_ledger WHERE chamber_id = $1")
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }

    async fn load_for_poll(&self, id: ChamberId) -> Result<Option<ChamberWithDetectors>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM chambers WHERE id = $1",
            rows::CHAMBER_COLUMNS
        )))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        let Some(row) = row else { return Ok(None) };
        let chamber = rows::chamber(&row)?;
        let detectors = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM detectors WHERE chamber_id = $1 ORDER BY id",
            rows::DETECTOR_COLUMNS
        )))
        .bind(id.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(Some(ChamberWithDetectors {
            chamber,
            detectors: decode_all(&detectors, rows::detector)?,
        }))
    }

    async fn list_active(&self, page: PageRequest<ChamberId>) -> Result<Page<Chamber, ChamberId>> {
        self.read_page(
sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM chambers WHERE state = 'active' AND ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
            rows::CHAMBER_COLUMNS
        )))
        .bind(page.after.map(|a| *a.as_uuid()))
        .bind(limit(&page)),
rows::chamber,
page.size,
|c| c.id,
)
.await
    }
}

#[db_port("postgresql")]
#[async_trait]
impl DetectorRepository for PgStore {
    async fn add(&self, d: &Detector) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        insert_detectors(&mut tx, std::slice::from_ref(d)).await?;
        layouts::change(
            &mut tx,
            *d.chamber_id.as_uuid(),
            Change::Added(*d.id.as_uuid()),
        )
        .await?;
        tx.commit().await.map_err(store_error)
    }

    async fn get(&self, org: OrganizationId, id: DetectorId) -> Result<Detector> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM detectors WHERE organization_id = $1 AND id = $2",
            rows::DETECTOR_COLUMNS
        )))
        .bind(org.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref()
            .map(rows::detector)
            .unwrap_or(Err(not_found("detector")))
    }

    async fn list_for_chamber(
        &self,
        org: OrganizationId,
        chamber: ChamberId,
    ) -> Result<Vec<Detector>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM detectors WHERE organization_id = $1 AND chamber_id = $2 ORDER BY id",
            rows::DETECTOR_COLUMNS
        )))
        .bind(org.as_uuid())
        .bind(chamber.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        decode_all(&rows, rows::detector)
    }

    async fn list_for_chambers(
        &self,
        org: OrganizationId,
        chambers: &[ChamberId],
    ) -> Result<Vec<Detector>> {
        let ids: Vec<Uuid> = chambers.iter().map(|c| *c.as_uuid()).collect();
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM detectors WHERE organization_id = $1 AND chamber_id = ANY($2) \
             ORDER BY chamber_id, id",
            rows::DETECTOR_COLUMNS
        )))
        .bind(org.as_uuid())
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        decode_all(&rows, rows::detector)
    }

    async fn update(&self, d: &Detector) -> Result<()> {
        let done = sqlx::query(
            "UPDATE detectors SET name = $3, alias = $4, unit = $5, key_kind = $6, key = $7, range_min = $8, range_max = $9 \
             WHERE organization_id = $1 AND id = $2",
        )
        .bind(d.organization_id.as_uuid())
        .bind(d.id.as_uuid())
        .bind(d.name.as_str())
        .bind(d.alias.as_ref().map(|a| a.as_str()))
        .bind(d.unit.as_str())
        .bind(rows::key_kind(&d.key))
        .bind(d.key.to_string())
        .bind(d.range.min())
        .bind(d.range.max())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        if done.rows_affected() == 0 {
            Err(not_found("detector"))
        } else {
            Ok(())
        }
    }

    async fn delete(&self, org: OrganizationId, id: DetectorId) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let row = sqlx::query(
            "DELETE FROM detectors WHERE organization_id = $1 AND id = $2 RETURNING chamber_id",
        )
        .bind(org.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let Some(row) = row else {
            return Err(not_found("detector"));
        };
        let chamber: Uuid = row.try_get("chamber_id").map_err(store_error)?;
        // A new layout without it: no query returns its values again; their bytes stay in
        // their polls' rows until retention drops those days.
        layouts::change(&mut tx, chamber, Change::Removed(*id.as_uuid())).await?;
        if self.has_legacy_tables(&mut tx).await? {
            sqlx::query("DELETE FROM legacy_readings WHERE detector_id = $1")
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }
}

#[db_port("postgresql")]
#[async_trait]
impl BatchRepository for PgStore {
    async fn start(&self, b: &Batch) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO batches ({}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            rows::BATCH_COLUMNS
        )))
        .bind(b.id.as_uuid())
        .bind(b.organization_id.as_uuid())
        .bind(b.section_id.as_uuid())
        .bind(b.name.as_str())
        .bind(b.description.as_str())
        .bind(ts(b.started_at))
        .bind(b.ended_at.map(ts))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn end(&self, org: OrganizationId, id: BatchId, at: Timestamp) -> Result<Batch> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE batches SET ended_at = $3 WHERE organization_id = $1 AND id = $2 \
             AND ended_at IS NULL AND started_at <= $3 RETURNING {}",
            rows::BATCH_COLUMNS
        )))
        .bind(org.as_uuid())
        .bind(id.as_uuid())
        .bind(ts(at))
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        if let Some(row) = row {
            return rows::batch(&row);
        }
        let current = BatchRepository::get(self, org, id).await?;
        let reason = if current.is_open() {
            "cannot end before it started"
        } else {
            "already ended"
        };
        Err(StoreError::Conflict {
            entity: "batch",
            reason: reason.into(),
        })
    }

    async fn get(&self, org: OrganizationId, id: BatchId) -> Result<Batch> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM batches WHERE organization_id = $1 AND id = $2",
            rows::BATCH_COLUMNS
        )))
        .bind(org.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref()
            .map(rows::batch)
            .unwrap_or(Err(not_found("batch")))
    }

    async fn list(
        &self,
        org: OrganizationId,
        section: Option<SectionId>,
        page: PageRequest<BatchId>,
    ) -> Result<Page<Batch, BatchId>> {
        self.read_page(
sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM batches WHERE organization_id = $1 AND ($2::uuid IS NULL OR section_id = $2) \
             AND ($3::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4",
            rows::BATCH_COLUMNS
        )))
        .bind(org.as_uuid())
        .bind(section.map(|s| *s.as_uuid()))
        .bind(page.after.map(|a| *a.as_uuid()))
        .bind(limit(&page)),
rows::batch,
page.size,
|b| b.id,
)
.await
    }

    async fn covering(&self, section: SectionId, at: Timestamp) -> Result<Option<Batch>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM batches WHERE section_id = $1 AND started_at <= $2 AND (ended_at IS NULL OR ended_at > $2) \
             ORDER BY started_at DESC LIMIT 1",
            rows::BATCH_COLUMNS
        )))
        .bind(section.as_uuid())
        .bind(ts(at))
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(rows::batch).transpose()
    }
}
