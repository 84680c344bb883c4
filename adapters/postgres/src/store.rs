//! [`PgStore`]: every repository port on PostgreSQL.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;

use async_trait::async_trait;
use chamberlain_domain::Timestamp;
use chamberlain_domain::error::{Rule, ValidationError};
use chamberlain_domain::limits::MAX_READINGS_PER_WRITE;
use chamberlain_domain::model::{
    ApiToken, ApiTokenId, Batch, BatchId, Chamber, ChamberHealth, ChamberId, Detector, DetectorId,
    Email, LedgerEntry, Organization, OrganizationId, Page, PageRequest, PollId, Reading, Section,
    SectionId, TokenHash, User, UserId,
};
use chamberlain_domain::ports::{
    Aggregate, AggregateQuery, ApiTokenRepository, BatchRepository, ChamberFilter,
    ChamberHealthRepository, ChamberRepository, ChamberWithDetectors, DetectorRepository,
    ItemError, LatestReadings, LedgerQuery, LedgerTally, OrganizationRepository,
    PollLedgerRepository, PollRecord, ReadingCursor, ReadingQuery, ReadingRepository, ReadingScope,
    SectionRepository, StoreError, TallyQuery, UserRepository, WriteReport,
};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::PgStore;
use crate::errors::{corrupt, is_missing_partition, is_retryable_conflict, store_error};
use crate::rows::{self, millis, ts};
use crate::{encoding, partitions};

type Result<T> = std::result::Result<T, StoreError>;

fn not_found(entity: &'static str) -> StoreError {
    StoreError::NotFound { entity }
}

fn limit<K>(page: &PageRequest<K>) -> i64 {
    i64::from(page.size.get()) + 1
}

fn decode_all<T>(rows: &[PgRow], f: fn(&PgRow) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

impl PgStore {
    /// The detectors of a reading scope within `org` (an unknown or foreign scope is "not
    /// found"), and the batch to filter on for a batch scope.
    async fn scope_detectors(
        &self,
        org: OrganizationId,
        scope: ReadingScope,
    ) -> Result<(Vec<Uuid>, Option<Uuid>)> {
        let (scope_sql, entity, id, batch) = match scope {
            ReadingScope::Detector(id) => (
                "SELECT d.id FROM detectors d WHERE d.organization_id = $1 AND d.id = $2",
                "detector",
                *id.as_uuid(),
                None,
            ),
            ReadingScope::Chamber(id) => (
                "SELECT c.id AS owner, d.id FROM chambers c LEFT JOIN detectors d ON d.chamber_id = c.id \
                 WHERE c.organization_id = $1 AND c.id = $2",
                "chamber",
                *id.as_uuid(),
                None,
            ),
            ReadingScope::Batch(id) => (
                "SELECT b.id AS owner, d.id FROM batches b LEFT JOIN chambers c ON c.section_id = b.section_id \
                 LEFT JOIN detectors d ON d.chamber_id = c.id WHERE b.organization_id = $1 AND b.id = $2",
                "batch",
                *id.as_uuid(),
                Some(*id.as_uuid()),
            ),
        };
        let scope = sqlx::query(scope_sql)
            .bind(org.as_uuid())
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        if scope.is_empty() {
            return Err(not_found(entity));
        }
        let detectors = scope
            .iter()
            .filter_map(|r| r.try_get::<Option<Uuid>, _>("id").ok().flatten())
            .collect();
        Ok((detectors, batch))
    }

    async fn exists(&self, sql: &'static str, a: Uuid, b: Uuid) -> Result<bool> {
        let row = sqlx::query(sql)
            .bind(a)
            .bind(b)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(row.is_some())
    }
}

#[async_trait]
impl OrganizationRepository for PgStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db OrganizationRepository::create", db.system = "postgresql", db.operation = "OrganizationRepository::create"))]
    async fn create(&self, org: &Organization) -> Result<()> {
        sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(org.id.as_uuid())
            .bind(org.name.as_str())
            .bind(ts(org.created_at))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db OrganizationRepository::get", db.system = "postgresql", db.operation = "OrganizationRepository::get"))]
    async fn get(&self, id: OrganizationId) -> Result<Organization> {
        let row = sqlx::query("SELECT id, name, created_at FROM organizations WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        row.as_ref()
            .map(rows::organization)
            .unwrap_or(Err(not_found("organization")))
    }
}

#[async_trait]
impl SectionRepository for PgStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db SectionRepository::create", db.system = "postgresql", db.operation = "SectionRepository::create"))]
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

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db SectionRepository::get", db.system = "postgresql", db.operation = "SectionRepository::get"))]
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

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db SectionRepository::list", db.system = "postgresql", db.operation = "SectionRepository::list"))]
    async fn list(
        &self,
        org: OrganizationId,
        page: PageRequest<SectionId>,
    ) -> Result<Page<Section, SectionId>> {
        let rows = sqlx::query(
            "SELECT * FROM sections WHERE organization_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3",
        )
        .bind(org.as_uuid())
        .bind(page.after.map(|a| *a.as_uuid()))
        .bind(limit(&page))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(Page::from_sorted(
            decode_all(&rows, rows::section)?,
            page.size,
            |s| s.id,
        ))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db SectionRepository::update", db.system = "postgresql", db.operation = "SectionRepository::update"))]
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

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db SectionRepository::delete", db.system = "postgresql", db.operation = "SectionRepository::delete"))]
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
    Ok(())
}

#[async_trait]
impl ChamberRepository for PgStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::create", db.system = "postgresql", db.operation = "ChamberRepository::create"))]
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

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::get", db.system = "postgresql", db.operation = "ChamberRepository::get"))]
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

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::list", db.system = "postgresql", db.operation = "ChamberRepository::list"))]
    async fn list(
        &self,
        org: OrganizationId,
        filter: ChamberFilter,
        page: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
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
        )
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(Page::from_sorted(
            decode_all(&rows, rows::chamber)?,
            page.size,
            |c| c.id,
        ))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::update", db.system = "postgresql", db.operation = "ChamberRepository::update"))]
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

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::delete", db.system = "postgresql", db.operation = "ChamberRepository::delete"))]
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
        // Readings by their key (detector), the ledger by its key (chamber).
        sqlx::query("DELETE FROM readings WHERE detector_id = ANY($1)")
            .bind(&detectors)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        for sql in [
            "DELETE FROM poll_ledger WHERE chamber_id = $1",
            "DELETE FROM chamber_latest WHERE chamber_id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::load_for_poll", db.system = "postgresql", db.operation = "ChamberRepository::load_for_poll"))]
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

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::list_active", db.system = "postgresql", db.operation = "ChamberRepository::list_active"))]
    async fn list_active(&self, page: PageRequest<ChamberId>) -> Result<Page<Chamber, ChamberId>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM chambers WHERE state = 'active' AND ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
            rows::CHAMBER_COLUMNS
        )))
        .bind(page.after.map(|a| *a.as_uuid()))
        .bind(limit(&page))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(Page::from_sorted(
            decode_all(&rows, rows::chamber)?,
            page.size,
            |c| c.id,
        ))
    }
}

#[async_trait]
impl DetectorRepository for PgStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db DetectorRepository::add", db.system = "postgresql", db.operation = "DetectorRepository::add"))]
    async fn add(&self, d: &Detector) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        insert_detectors(&mut tx, std::slice::from_ref(d)).await?;
        tx.commit().await.map_err(store_error)
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db DetectorRepository::get", db.system = "postgresql", db.operation = "DetectorRepository::get"))]
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

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db DetectorRepository::list_for_chamber", db.system = "postgresql", db.operation = "DetectorRepository::list_for_chamber"))]
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

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db DetectorRepository::list_for_chambers", db.system = "postgresql", db.operation = "DetectorRepository::list_for_chambers"))]
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

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db DetectorRepository::update", db.system = "postgresql", db.operation = "DetectorRepository::update"))]
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

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db DetectorRepository::delete", db.system = "postgresql", db.operation = "DetectorRepository::delete"))]
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
        sqlx::query("DELETE FROM readings WHERE detector_id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        // The chamber's latest values lose this detector.
        let latest = sqlx::query(
            "SELECT slot, readings FROM chamber_latest WHERE chamber_id = $1 FOR UPDATE",
        )
        .bind(chamber)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        if let Some(row) = latest {
            let c = rows::Cols {
                row: &row,
                table: "chamber_latest",
            };
            let slot = c.ts("slot")?;
            let packed: Vec<u8> = c.get("readings")?;
            let readings = encoding::unpack_latest(ChamberId::from_uuid(chamber), slot, &packed)?;
            let kept: Vec<&Reading> = readings.iter().filter(|r| r.detector_id != id).collect();
            sqlx::query("UPDATE chamber_latest SET readings = $2 WHERE chamber_id = $1")
                .bind(chamber)
                .bind(encoding::pack_latest(&kept))
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }
}

#[async_trait]
impl BatchRepository for PgStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db BatchRepository::start", db.system = "postgresql", db.operation = "BatchRepository::start"))]
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

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db BatchRepository::end", db.system = "postgresql", db.operation = "BatchRepository::end"))]
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

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db BatchRepository::get", db.system = "postgresql", db.operation = "BatchRepository::get"))]
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

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db BatchRepository::list", db.system = "postgresql", db.operation = "BatchRepository::list"))]
    async fn list(
        &self,
        org: OrganizationId,
        section: Option<SectionId>,
        page: PageRequest<BatchId>,
    ) -> Result<Page<Batch, BatchId>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM batches WHERE organization_id = $1 AND ($2::uuid IS NULL OR section_id = $2) \
             AND ($3::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4",
            rows::BATCH_COLUMNS
        )))
        .bind(org.as_uuid())
        .bind(section.map(|s| *s.as_uuid()))
        .bind(page.after.map(|a| *a.as_uuid()))
        .bind(limit(&page))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(Page::from_sorted(
            decode_all(&rows, rows::batch)?,
            page.size,
            |b| b.id,
        ))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db BatchRepository::covering", db.system = "postgresql", db.operation = "BatchRepository::covering"))]
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

/// Readings as columns, to bind as arrays.
struct ReadingColumns {
    detector: Vec<Uuid>,
    chamber: Vec<Uuid>,
    slot: Vec<OffsetDateTime>,
    value: Vec<Option<f64>>,
    corruption: Vec<Option<i16>>,
    requested: Vec<OffsetDateTime>,
    received: Vec<OffsetDateTime>,
    batch: Vec<Option<Uuid>>,
}

impl ReadingColumns {
    fn of(readings: &[&Reading]) -> Self {
        let (value, corruption) = readings.iter().map(|r| rows::split_value(&r.value)).unzip();
        Self {
            detector: readings.iter().map(|r| *r.detector_id.as_uuid()).collect(),
            chamber: readings.iter().map(|r| *r.chamber_id.as_uuid()).collect(),
            slot: readings.iter().map(|r| ts(r.slot)).collect(),
            value,
            corruption,
            requested: readings.iter().map(|r| ts(r.requested_at)).collect(),
            received: readings.iter().map(|r| ts(r.received_at)).collect(),
            batch: readings
                .iter()
                .map(|r| r.batch_id.map(|b| *b.as_uuid()))
                .collect(),
        }
    }
}

#[derive(Default)]
struct LedgerColumns {
    chamber: Vec<Uuid>,
    slot: Vec<OffsetDateTime>,
    outcome: Vec<String>,
    detail: Vec<serde_json::Value>,
    attempt: Vec<i32>,
    requested: Vec<Option<OffsetDateTime>>,
    recorded: Vec<OffsetDateTime>,
    latency: Vec<Option<i64>>,
    lateness: Vec<i64>,
}

impl LedgerColumns {
    fn push(&mut self, e: &LedgerEntry) -> Result<()> {
        self.chamber.push(*e.poll.chamber_id.as_uuid());
        self.slot.push(ts(e.poll.slot));
        self.outcome.push(e.outcome.code().to_owned());
        self.detail.push(
            serde_json::to_value(&e.outcome)
                .map_err(|err| corrupt("poll_ledger", "detail", err))?,
        );
        self.attempt
            .push(i32::try_from(e.attempt).unwrap_or(i32::MAX));
        self.requested.push(e.requested_at.map(ts));
        self.recorded.push(ts(e.recorded_at));
        self.latency.push(e.latency.map(millis));
        self.lateness.push(millis(e.lateness));
        Ok(())
    }
}

/// Inserts ledger entries that are not stored yet; returns the polls that were new.
async fn insert_ledger(
    tx: &mut Transaction<'_, Postgres>,
    l: &LedgerColumns,
) -> std::result::Result<HashSet<(Uuid, OffsetDateTime)>, WriteFailure> {
    let rows = sqlx::query(
        "INSERT INTO poll_ledger (chamber_id, slot, outcome, detail, attempt, requested_at, recorded_at, latency_ms, lateness_ms) \
         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::jsonb[], $5::int4[], $6::timestamptz[], \
                              $7::timestamptz[], $8::int8[], $9::int8[]) \
         ON CONFLICT (chamber_id, slot) DO NOTHING RETURNING chamber_id, slot",
    )
    .bind(&l.chamber)
    .bind(&l.slot)
    .bind(&l.outcome)
    .bind(&l.detail)
    .bind(&l.attempt)
    .bind(&l.requested)
    .bind(&l.recorded)
    .bind(&l.latency)
    .bind(&l.lateness)
    .fetch_all(&mut **tx)
    .await
    .map_err(store_error_keep_partition)?;
    let mut new = HashSet::with_capacity(rows.len());
    for r in &rows {
        new.insert((
            r.try_get("chamber_id").map_err(store_error)?,
            r.try_get("slot").map_err(store_error)?,
        ));
    }
    Ok(new)
}

/// Like [`store_error`], but keeps "no partition" recognisable for the retry.
fn store_error_keep_partition(e: sqlx::Error) -> WriteFailure {
    if is_retryable_conflict(&e) {
        WriteFailure::Conflict
    } else if is_missing_partition(&e) {
        WriteFailure::MissingPartition
    } else {
        WriteFailure::Store(store_error(e))
    }
}

enum WriteFailure {
    MissingPartition,
    /// A deadlock or serialization conflict aborted the transaction: run it again.
    Conflict,
    Store(StoreError),
}

impl From<StoreError> for WriteFailure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl PgStore {
    /// Checks that every chamber exists and every reading's detector is its chamber's.
    /// Checks, in one query, that every chamber exists and every reading's detector is one of
    /// its chamber's.
    async fn check_parents(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        chambers: &[Uuid],
        readings: &[&Reading],
    ) -> Result<()> {
        let distinct: BTreeSet<Uuid> = chambers.iter().copied().collect();
        let distinct: Vec<Uuid> = distinct.into_iter().collect();
        let rows = sqlx::query(
            "SELECT c.id AS chamber_id, array_remove(array_agg(d.id), NULL) AS detectors \
             FROM chambers c LEFT JOIN detectors d ON d.chamber_id = c.id \
             WHERE c.id = ANY($1) GROUP BY c.id",
        )
        .bind(&distinct)
        .fetch_all(&mut **tx)
        .await
        .map_err(store_error)?;
        if rows.len() != distinct.len() {
            return Err(StoreError::MissingParent {
                entity: "poll",
                parent: "chamber",
            });
        }
        let mut detectors_of: HashMap<Uuid, HashSet<Uuid>> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let chamber: Uuid = row.try_get("chamber_id").map_err(store_error)?;
            let detectors: Vec<Uuid> = row.try_get("detectors").map_err(store_error)?;
            detectors_of.insert(chamber, detectors.into_iter().collect());
        }
        let known = |r: &&Reading| {
            detectors_of
                .get(r.chamber_id.as_uuid())
                .is_some_and(|ds| ds.contains(r.detector_id.as_uuid()))
        };
        if !readings.iter().all(known) {
            return Err(StoreError::MissingParent {
                entity: "reading",
                parent: "detector",
            });
        }
        Ok(())
    }

    async fn try_store(
        &self,
        ordered: &[&PollRecord],
        all_readings: &[&Reading],
        l: &LedgerColumns,
    ) -> std::result::Result<WriteReport, WriteFailure> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        self.check_parents(&mut tx, &l.chamber, all_readings)
            .await?;
        // The ledger decides: only polls whose entry is new here write their readings, so the
        // readings insert can never conflict (a concurrent writer of the same poll waits on the
        // ledger's key and then finds it taken).
        let new_polls = insert_ledger(&mut tx, l).await?;
        let is_new = |p: &PollId| new_polls.contains(&(*p.chamber_id.as_uuid(), ts(p.slot)));
        let fresh: Vec<&PollRecord> = ordered
            .iter()
            .copied()
            .filter(|p| is_new(&p.entry.poll))
            .collect();
        let mut readings: Vec<&Reading> = fresh.iter().flat_map(|p| &p.readings).collect();
        readings.sort_by_key(|r| (r.detector_id, r.slot));
        if !readings.is_empty() {
            // One Bind/Execute exchange with the columns as arrays. (A binary COPY is as cheap on
            // the server, but sqlx writes its CopyDone in a separate small packet that Nagle's
            // algorithm holds until the server's delayed ACK: ~40 ms per batch.)
            let r = ReadingColumns::of(&readings);
            sqlx::query(
                "INSERT INTO readings (detector_id, chamber_id, slot, value, corruption, requested_at, received_at, batch_id) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::float8[], $5::int2[], \
                                      $6::timestamptz[], $7::timestamptz[], $8::uuid[])",
            )
            .bind(&r.detector)
            .bind(&r.chamber)
            .bind(&r.slot)
            .bind(&r.value)
            .bind(&r.corruption)
            .bind(&r.requested)
            .bind(&r.received)
            .bind(&r.batch)
            .execute(&mut *tx)
            .await
            .map_err(store_error_keep_partition)?;
        }
        update_latest(&mut tx, &fresh).await?;
        tx.commit().await.map_err(store_error)?;
        let inserted = readings.len() as u64;
        let existing_polls: Vec<PollId> = ordered
            .iter()
            .map(|p| p.entry.poll)
            .filter(|p| !is_new(p))
            .collect();
        Ok(WriteReport {
            readings_new: inserted,
            readings_existing: all_readings.len() as u64 - inserted,
            ledger_new: new_polls.len() as u64,
            ledger_existing: existing_polls.len() as u64,
            existing_polls,
        })
    }

    /// Runs a write, creating the partitions its slots need and retrying once if one was
    /// missing (a slot outside the partitions created ahead: a late backfill, a clock jump).
    async fn with_partitions<T, F, Fut>(
        &self,
        slots: impl Iterator<Item = Timestamp>,
        write: F,
    ) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, WriteFailure>>,
    {
        let days: BTreeSet<i64> = slots.map(partitions::day_of).collect();
        // A few tries: a missing partition is created, a deadlock or serialization conflict is
        // run again; anything else is the caller's.
        let mut last = StoreError::unavailable("write not attempted");
        for _ in 0..3 {
            match write().await {
                Ok(v) => return Ok(v),
                Err(WriteFailure::Store(e)) => return Err(e),
                Err(WriteFailure::MissingPartition) => {
                    partitions::ensure_days(&self.pool, &days).await?;
                    last =
                        StoreError::unavailable("no partition for a slot even after creating it");
                }
                Err(WriteFailure::Conflict) => {
                    last = StoreError::unavailable("write aborted by repeated deadlocks");
                }
            }
        }
        Err(last)
    }
}

/// Moves each chamber's latest row forward to the newest slot written (never backwards).
async fn update_latest(tx: &mut Transaction<'_, Postgres>, polls: &[&PollRecord]) -> Result<()> {
    // The newest poll with readings per chamber in this batch.
    let mut newest: HashMap<ChamberId, &PollRecord> = HashMap::new();
    for p in polls.iter().copied().filter(|p| !p.readings.is_empty()) {
        let e = newest.entry(p.entry.poll.chamber_id).or_insert(p);
        if p.entry.poll.slot > e.entry.poll.slot {
            *e = p;
        }
    }
    if newest.is_empty() {
        return Ok(());
    }
    let mut newest: Vec<&PollRecord> = newest.into_values().collect();
    newest.sort_by_key(|p| p.entry.poll.chamber_id);
    let mut chamber = Vec::with_capacity(newest.len());
    let mut slot = Vec::with_capacity(newest.len());
    let mut packed = Vec::with_capacity(newest.len());
    for p in &newest {
        let mut readings: Vec<&Reading> = p.readings.iter().collect();
        readings.sort_by_key(|r| r.detector_id);
        chamber.push(*p.entry.poll.chamber_id.as_uuid());
        slot.push(ts(p.entry.poll.slot));
        packed.push(encoding::pack_latest(&readings));
    }
    sqlx::query(
        "INSERT INTO chamber_latest (chamber_id, slot, readings) \
         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::bytea[]) \
         ON CONFLICT (chamber_id) DO UPDATE SET slot = EXCLUDED.slot, readings = EXCLUDED.readings \
         WHERE chamber_latest.slot < EXCLUDED.slot",
    )
    .bind(&chamber)
    .bind(&slot)
    .bind(&packed)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

#[async_trait]
impl ReadingRepository for PgStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ReadingRepository::store_polls", db.system = "postgresql", db.operation = "ReadingRepository::store_polls"))]
    async fn store_polls(&self, polls: &[PollRecord]) -> Result<WriteReport> {
        let total: usize = polls.iter().map(|p| p.readings.len()).sum();
        if total > MAX_READINGS_PER_WRITE {
            return Err(StoreError::Invalid(ValidationError::new(
                "readings",
                Rule::TooLong {
                    max: MAX_READINGS_PER_WRITE,
                    actual: total,
                },
            )));
        }
        if polls.is_empty() {
            return Ok(WriteReport::default());
        }
        // Rows go in key order, so concurrent writers touching the same keys (redeliveries, the
        // same chambers' latest rows) always lock them in the same order and never deadlock.
        let mut ordered: Vec<&PollRecord> = polls.iter().collect();
        ordered.sort_by_key(|p| p.entry.poll);
        let mut readings: Vec<&Reading> = Vec::with_capacity(total);
        let mut l = LedgerColumns::default();
        for p in &ordered {
            for reading in &p.readings {
                if reading.chamber_id != p.entry.poll.chamber_id
                    || reading.slot != p.entry.poll.slot
                {
                    return Err(StoreError::MissingParent {
                        entity: "reading",
                        parent: "detector",
                    });
                }
                readings.push(reading);
            }
            l.push(&p.entry)?;
        }
        self.with_partitions(polls.iter().map(|p| p.entry.poll.slot), || {
            self.try_store(&ordered, &readings, &l)
        })
        .await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ReadingRepository::query", db.system = "postgresql", db.operation = "ReadingRepository::query"))]
    async fn query(
        &self,
        org: OrganizationId,
        q: &ReadingQuery,
    ) -> Result<Page<Reading, ReadingCursor>> {
        let (detectors, batch) = self.scope_detectors(org, q.scope).await?;
        // One key-range scan per detector, each in slot order and cut at the page size, then
        // merged into (slot, detector) order.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT r.* FROM UNNEST($1::uuid[]) AS d(id) CROSS JOIN LATERAL ( \
                SELECT {cols} FROM readings WHERE detector_id = d.id AND slot >= $2 AND slot < $3 \
                AND ($4::timestamptz IS NULL OR (slot, detector_id) > ($4, $5)) \
                AND ($7::uuid IS NULL OR batch_id = $7) \
                ORDER BY slot LIMIT $6) r \
             ORDER BY r.slot, r.detector_id LIMIT $6",
            cols = rows::READING_COLUMNS
        )))
        .bind(&detectors)
        .bind(ts(q.from))
        .bind(ts(q.to))
        .bind(q.page.after.map(|c| ts(c.slot)))
        .bind(q.page.after.map(|c| *c.detector_id.as_uuid()))
        .bind(limit(&q.page))
        .bind(batch)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let cursor = |r: &Reading| ReadingCursor {
            slot: r.slot,
            detector_id: r.detector_id,
        };
        Ok(Page::from_sorted(
            decode_all(&rows, rows::reading)?,
            q.page.size,
            cursor,
        ))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ReadingRepository::aggregate", db.system = "postgresql", db.operation = "ReadingRepository::aggregate"))]
    async fn aggregate(&self, org: OrganizationId, q: &AggregateQuery) -> Result<Vec<Aggregate>> {
        let (detectors, batch) = self.scope_detectors(org, q.scope).await?;
        // One key-range scan per detector (the key holds the rows in slot order), summed up in
        // epoch-aligned buckets by `date_bin`.
        let rows = sqlx::query(
            "SELECT d.id AS detector_id, a.bucket, a.low, a.high, a.total, a.n \
             FROM UNNEST($1::uuid[]) AS d(id) CROSS JOIN LATERAL ( \
                SELECT date_bin(make_interval(secs => $4::float8 / 1000), slot, \
                         timestamptz '1970-01-01 00:00:00+00') AS bucket, \
                       min(value) AS low, max(value) AS high, sum(value) AS total, \
                       count(value) AS n \
                FROM readings WHERE detector_id = d.id AND slot >= $2 AND slot < $3 \
                AND value IS NOT NULL AND ($5::uuid IS NULL OR batch_id = $5) \
                GROUP BY 1) a \
             ORDER BY d.id, a.bucket",
        )
        .bind(&detectors)
        .bind(ts(q.from))
        .bind(ts(q.to))
        .bind(q.bucket_millis.max(1))
        .bind(batch)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let c = rows::Cols {
                    row,
                    table: "readings",
                };
                let count =
                    u64::try_from(c.get::<i64>("n")?).map_err(|e| corrupt("readings", "n", e))?;
                #[allow(clippy::cast_precision_loss, reason = "a mean")]
                Ok(Aggregate {
                    detector_id: DetectorId::from_uuid(c.uuid("detector_id")?),
                    bucket_start: c.ts("bucket")?,
                    min: c.get("low")?,
                    max: c.get("high")?,
                    mean: c.get::<f64>("total")? / count as f64,
                    count,
                })
            })
            .collect()
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ReadingRepository::latest", db.system = "postgresql", db.operation = "ReadingRepository::latest"))]
    async fn latest(
        &self,
        org: OrganizationId,
        chambers: &[ChamberId],
    ) -> Result<Vec<LatestReadings>> {
        let ids: Vec<Uuid> = chambers.iter().map(|c| *c.as_uuid()).collect();
        let rows = sqlx::query(
            "SELECT l.chamber_id, l.slot, l.readings FROM chamber_latest l JOIN chambers c ON c.id = l.chamber_id \
             WHERE c.organization_id = $1 AND l.chamber_id = ANY($2)",
        )
        .bind(org.as_uuid())
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let mut by_chamber = HashMap::with_capacity(rows.len());
        for row in &rows {
            let c = rows::Cols {
                row,
                table: "chamber_latest",
            };
            let chamber_id = ChamberId::from_uuid(c.uuid("chamber_id")?);
            let slot = c.ts("slot")?;
            let packed: Vec<u8> = c.get("readings")?;
            let readings = encoding::unpack_latest(chamber_id, slot, &packed)?;
            by_chamber.insert(
                chamber_id,
                LatestReadings {
                    chamber_id,
                    slot,
                    readings,
                },
            );
        }
        Ok(chambers
            .iter()
            .filter_map(|c| by_chamber.remove(c))
            .collect())
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ReadingRepository::prune_before", db.system = "postgresql", db.operation = "ReadingRepository::prune_before"))]
    async fn prune_before(&self, cutoff: Timestamp) -> Result<()> {
        let cutoff_day = partitions::day_of(cutoff);
        let dropped = partitions::drop_before(&self.pool, cutoff_day).await?;
        sqlx::query("DELETE FROM chamber_latest WHERE slot < $1")
            .bind(ts(partitions::day_start(cutoff_day)))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if !dropped.is_empty() {
            tracing::info!(partitions = ?dropped, "retention dropped partitions");
        }
        Ok(())
    }
}

#[async_trait]
impl PollLedgerRepository for PgStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db PollLedgerRepository::record", db.system = "postgresql", db.operation = "PollLedgerRepository::record"))]
    async fn record(&self, entries: &[LedgerEntry]) -> Result<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut l = LedgerColumns::default();
        for e in entries {
            l.push(e)?;
        }
        let write = || async {
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            self.check_parents(&mut tx, &l.chamber, &[]).await?;
            let new = insert_ledger(&mut tx, &l).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(new.len() as u64)
        };
        self.with_partitions(entries.iter().map(|e| e.poll.slot), write)
            .await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db PollLedgerRepository::list", db.system = "postgresql", db.operation = "PollLedgerRepository::list"))]
    async fn list(
        &self,
        org: OrganizationId,
        q: &LedgerQuery,
    ) -> Result<Page<LedgerEntry, Timestamp>> {
        if !self
            .exists(
                "SELECT 1 FROM chambers WHERE organization_id = $1 AND id = $2",
                *org.as_uuid(),
                *q.chamber_id.as_uuid(),
            )
            .await?
        {
            return Err(not_found("chamber"));
        }
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM poll_ledger WHERE chamber_id = $1 AND slot >= $2 AND slot < $3 \
             AND (NOT $4 OR outcome <> 'ok') AND ($5::timestamptz IS NULL OR slot > $5) ORDER BY slot LIMIT $6",
            rows::LEDGER_COLUMNS
        )))
        .bind(q.chamber_id.as_uuid())
        .bind(ts(q.from))
        .bind(ts(q.to))
        .bind(q.failures_only)
        .bind(q.page.after.map(ts))
        .bind(limit(&q.page))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(Page::from_sorted(
            decode_all(&rows, rows::ledger_entry)?,
            q.page.size,
            |e| e.poll.slot,
        ))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db PollLedgerRepository::tally", db.system = "postgresql", db.operation = "PollLedgerRepository::tally"))]
    async fn tally(&self, org: OrganizationId, q: &TallyQuery) -> Result<Vec<LedgerTally>> {
        if !self
            .exists(
                "SELECT 1 FROM chambers WHERE organization_id = $1 AND id = $2",
                *org.as_uuid(),
                *q.chamber_id.as_uuid(),
            )
            .await?
        {
            return Err(not_found("chamber"));
        }
        // Along the key (chamber, slot), in buckets starting at `from`.
        let rows = sqlx::query(
            "SELECT date_bin(make_interval(secs => $4::float8 / 1000), slot, $2) AS bucket, \
               count(*) FILTER (WHERE outcome IN ('ok', 'corrupted_values')) AS read, \
               count(*) FILTER (WHERE outcome IN ('missed', 'expired', 'cancelled')) AS missed, \
               count(*) AS n \
             FROM poll_ledger WHERE chamber_id = $1 AND slot >= $2 AND slot < $3 \
             GROUP BY 1 ORDER BY 1",
        )
        .bind(q.chamber_id.as_uuid())
        .bind(ts(q.from))
        .bind(ts(q.to))
        .bind(q.bucket_millis.max(1))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let c = rows::Cols {
                    row,
                    table: "poll_ledger",
                };
                let count = |column| {
                    u64::try_from(c.get::<i64>(column)?)
                        .map_err(|e| corrupt("poll_ledger", column, e))
                };
                let (read, missed, all) = (count("read")?, count("missed")?, count("n")?);
                Ok(LedgerTally {
                    bucket_start: c.ts("bucket")?,
                    read,
                    failed: all - read - missed,
                    missed,
                })
            })
            .collect()
    }
}

#[async_trait]
impl ChamberHealthRepository for PgStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberHealthRepository::count_by_state", db.system = "postgresql", db.operation = "ChamberHealthRepository::count_by_state"))]
    async fn count_by_state(&self) -> Result<Vec<(chamberlain_domain::model::HealthState, u64)>> {
        let rows = sqlx::query(
            "SELECT coalesce(h.state, 'unknown') AS state, count(*) AS n FROM chambers c \
             LEFT JOIN chamber_health h ON h.chamber_id = c.id GROUP BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state").map_err(store_error)?;
                let n: i64 = row.try_get("n").map_err(store_error)?;
                let state = chamberlain_domain::model::HealthState::parse(&state)
                    .ok_or_else(|| corrupt("chamber_health", "state", &state))?;
                Ok((state, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberHealthRepository::get", db.system = "postgresql", db.operation = "ChamberHealthRepository::get"))]
    async fn get(&self, chamber: ChamberId) -> Result<Option<ChamberHealth>> {
        let row = sqlx::query("SELECT * FROM chamber_health WHERE chamber_id = $1")
            .bind(chamber.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        row.as_ref().map(rows::health).transpose()
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberHealthRepository::get_many", db.system = "postgresql", db.operation = "ChamberHealthRepository::get_many"))]
    async fn get_many(&self, chambers: &[ChamberId]) -> Result<Vec<ChamberHealth>> {
        let ids: Vec<Uuid> = chambers.iter().map(|c| *c.as_uuid()).collect();
        let rows = sqlx::query("SELECT * FROM chamber_health WHERE chamber_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        decode_all(&rows, rows::health)
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberHealthRepository::save", db.system = "postgresql", db.operation = "ChamberHealthRepository::save"))]
    async fn save(&self, h: &ChamberHealth) -> Result<u64> {
        let version = i64::try_from(h.version).unwrap_or(i64::MAX);
        let sql = if h.version == 0 {
            "INSERT INTO chamber_health (chamber_id, state, consecutive_failures, failing_since, last_slot, changed_at, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7 + 1) ON CONFLICT (chamber_id) DO NOTHING"
        } else {
            "UPDATE chamber_health SET state = $2, consecutive_failures = $3, failing_since = $4, last_slot = $5, \
             changed_at = $6, version = version + 1 WHERE chamber_id = $1 AND version = $7"
        };
        let done = sqlx::query(sql)
            .bind(h.chamber_id.as_uuid())
            .bind(rows::health_state_str(h.state))
            .bind(i32::try_from(h.consecutive_failures).unwrap_or(i32::MAX))
            .bind(h.failing_since.map(ts))
            .bind(h.last_slot.map(ts))
            .bind(ts(h.changed_at))
            .bind(version)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict {
                entity: "health",
                reason: format!("version {} is stale", h.version),
            });
        }
        Ok(h.version + 1)
    }
}

#[async_trait]
impl UserRepository for PgStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db UserRepository::create", db.system = "postgresql", db.operation = "UserRepository::create"))]
    async fn create(&self, u: &User) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO users ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            rows::USER_COLUMNS
        )))
        .bind(u.id.as_uuid())
        .bind(u.organization_id.as_uuid())
        .bind(u.email.as_str())
        .bind(u.display_name.as_str())
        .bind(u.role.as_str())
        .bind(u.password_hash.as_deref())
        .bind(u.disabled)
        .bind(ts(u.created_at))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db UserRepository::get", db.system = "postgresql", db.operation = "UserRepository::get"))]
    async fn get(&self, org: OrganizationId, id: UserId) -> Result<User> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM users WHERE organization_id = $1 AND id = $2",
            rows::USER_COLUMNS
        )))
        .bind(org.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref()
            .map(rows::user)
            .unwrap_or(Err(not_found("user")))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db UserRepository::find_by_email", db.system = "postgresql", db.operation = "UserRepository::find_by_email"))]
    async fn find_by_email(&self, email: &Email) -> Result<Vec<User>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM users WHERE email = $1 ORDER BY organization_id",
            rows::USER_COLUMNS
        )))
        .bind(email.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(rows::user).collect()
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db UserRepository::list", db.system = "postgresql", db.operation = "UserRepository::list"))]
    async fn list(
        &self,
        org: OrganizationId,
        page: PageRequest<UserId>,
    ) -> Result<Page<User, UserId>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM users WHERE organization_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3",
            rows::USER_COLUMNS
        )))
        .bind(org.as_uuid())
        .bind(page.after.map(|a| *a.as_uuid()))
        .bind(limit(&page))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(Page::from_sorted(
            decode_all(&rows, rows::user)?,
            page.size,
            |u| u.id,
        ))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db UserRepository::update", db.system = "postgresql", db.operation = "UserRepository::update"))]
    async fn update(&self, u: &User) -> Result<()> {
        let done = sqlx::query(
            "UPDATE users SET email = $3, display_name = $4, role = $5, password_hash = $6, disabled = $7 \
             WHERE organization_id = $1 AND id = $2",
        )
        .bind(u.organization_id.as_uuid())
        .bind(u.id.as_uuid())
        .bind(u.email.as_str())
        .bind(u.display_name.as_str())
        .bind(u.role.as_str())
        .bind(u.password_hash.as_deref())
        .bind(u.disabled)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        if done.rows_affected() == 0 {
            Err(not_found("user"))
        } else {
            Ok(())
        }
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db UserRepository::delete", db.system = "postgresql", db.operation = "UserRepository::delete"))]
    async fn delete(&self, org: OrganizationId, id: UserId) -> Result<()> {
        let done = sqlx::query("DELETE FROM users WHERE organization_id = $1 AND id = $2")
            .bind(org.as_uuid())
            .bind(id.as_uuid())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 {
            Err(not_found("user"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ApiTokenRepository for PgStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ApiTokenRepository::create", db.system = "postgresql", db.operation = "ApiTokenRepository::create"))]
    async fn create(&self, t: &ApiToken) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO api_tokens ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            rows::TOKEN_COLUMNS
        )))
        .bind(t.id.as_uuid())
        .bind(t.organization_id.as_uuid())
        .bind(t.user_id.as_uuid())
        .bind(t.name.as_str())
        .bind(&t.hash.0[..])
        .bind(t.role_cap.as_str())
        .bind(ts(t.created_at))
        .bind(t.expires_at.map(ts))
        .bind(t.last_used_at.map(ts))
        .bind(t.revoked_at.map(ts))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ApiTokenRepository::find_by_hash", db.system = "postgresql", db.operation = "ApiTokenRepository::find_by_hash"))]
    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<ApiToken>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM api_tokens WHERE token_hash = $1",
            rows::TOKEN_COLUMNS
        )))
        .bind(&hash.0[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(rows::token).transpose()
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ApiTokenRepository::list", db.system = "postgresql", db.operation = "ApiTokenRepository::list"))]
    async fn list(
        &self,
        org: OrganizationId,
        user: Option<UserId>,
        page: PageRequest<ApiTokenId>,
    ) -> Result<Page<ApiToken, ApiTokenId>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM api_tokens WHERE organization_id = $1 AND ($2::uuid IS NULL OR user_id = $2) \
             AND ($3::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4",
            rows::TOKEN_COLUMNS
        )))
        .bind(org.as_uuid())
        .bind(user.map(|u| *u.as_uuid()))
        .bind(page.after.map(|a| *a.as_uuid()))
        .bind(limit(&page))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(Page::from_sorted(
            decode_all(&rows, rows::token)?,
            page.size,
            |t| t.id,
        ))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ApiTokenRepository::revoke", db.system = "postgresql", db.operation = "ApiTokenRepository::revoke"))]
    async fn revoke(&self, org: OrganizationId, id: ApiTokenId, at: Timestamp) -> Result<()> {
        let done = sqlx::query("UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $3) WHERE organization_id = $1 AND id = $2")
            .bind(org.as_uuid())
            .bind(id.as_uuid())
            .bind(ts(at))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 {
            Err(not_found("token"))
        } else {
            Ok(())
        }
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ApiTokenRepository::touch", db.system = "postgresql", db.operation = "ApiTokenRepository::touch"))]
    async fn touch(&self, id: ApiTokenId, at: Timestamp) -> Result<()> {
        let done = sqlx::query("UPDATE api_tokens SET last_used_at = GREATEST(COALESCE(last_used_at, $2), $2) WHERE id = $1")
            .bind(id.as_uuid())
            .bind(ts(at))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 {
            Err(not_found("token"))
        } else {
            Ok(())
        }
    }
}
