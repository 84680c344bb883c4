//! [`SectionRepository`], [`ChamberRepository`], [`DetectorRepository`] and [`BatchRepository`]
//! of [`SqliteStore`]: what is polled, where, and in which run.

use async_trait::async_trait;
use chamberlain_db_span::db_port;
use chamberlain_domain::model::{
    Batch, BatchId, Chamber, ChamberId, Detector, DetectorId, HealthState, Name, OrganizationId,
    Page, PageRequest, Section, SectionId,
};
use chamberlain_domain::ports::{
    BatchRepository, ChamberFilter, ChamberRepository, ChamberWithDetectors, DetectorRepository,
    ItemError, SectionRepository, StoreError,
};
use chamberlain_domain::time::Timestamp;
use sqlx::{AssertSqlSafe, SqliteConnection};
use uuid::Uuid;

use super::layouts::{self, Change};
use super::rows::{
    batch, chamber, chamber_state_code, decode_all, detector, health_policy_json, key_kind, section,
};
use super::{
    SqlQuery, SqliteStore, after_id, chamber_in, end_read, exists, finite, limit, millis_of,
    missing_parent, not_found, section_in, touched,
};
use crate::errors::{Write, child, db, writing};

#[db_port("sqlite")]
#[async_trait]
impl SectionRepository for SqliteStore {
    async fn create(&self, section: &Section) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = create_section(w.conn(), section).await;
        w.finish(result).await
    }

    async fn get(&self, org: OrganizationId, id: SectionId) -> Result<Section, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            section_columns!(),
            " FROM sections WHERE id = ?1 AND organization_id = ?2"
        ))
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref()
            .map(section)
            .unwrap_or(Err(not_found("section")))
    }

    async fn list(
        &self,
        org: OrganizationId,
        page: PageRequest<SectionId>,
    ) -> Result<Page<Section, SectionId>, StoreError> {
        self.read_page(
            sqlx::query(concat!(
                "SELECT ",
                section_columns!(),
                " FROM sections WHERE organization_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            ))
            .bind(*org.as_uuid())
            .bind(after_id(page.after.as_ref().map(SectionId::as_uuid)))
            .bind(limit(page.size)),
            section,
            page.size,
            |s| s.id,
        )
        .await
    }

    async fn update(&self, section: &Section) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE sections SET name = ?3, description = ?4 \
             WHERE id = ?1 AND organization_id = ?2",
        )
        .bind(*section.id.as_uuid())
        .bind(*section.organization_id.as_uuid())
        .bind(section.name.as_str())
        .bind(section.description.as_str())
        .execute(w.conn())
        .await
        .map_err(writing(Write::Plain))
        .and_then(|done| touched(done, "section"));
        w.finish(result).await
    }

    async fn delete(&self, org: OrganizationId, id: SectionId) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = delete_section(w.conn(), org, id).await;
        w.finish(result).await
    }
}

async fn create_section(conn: &mut SqliteConnection, section: &Section) -> Result<(), StoreError> {
    let org_exists = exists(
        conn,
        sqlx::query("SELECT 1 FROM organizations WHERE id = ?1")
            .bind(*section.organization_id.as_uuid()),
    )
    .await?;
    if !org_exists {
        return Err(missing_parent("section", "organization"));
    }
    sqlx::query(concat!(
        "INSERT INTO sections (",
        section_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5)"
    ))
    .bind(*section.id.as_uuid())
    .bind(*section.organization_id.as_uuid())
    .bind(section.name.as_str())
    .bind(section.description.as_str())
    .bind(section.created_at.as_unix_millis())
    .execute(conn)
    .await
    .map_err(writing(child("section", "organization")))?;
    Ok(())
}

async fn delete_section(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    id: SectionId,
) -> Result<(), StoreError> {
    if !exists(conn, section_in(org, id)).await? {
        return Err(not_found("section"));
    }
    let dependents = [
        (
            "chambers",
            "SELECT 1 FROM chambers WHERE section_id = ?1 LIMIT 1",
        ),
        (
            "batches",
            "SELECT 1 FROM batches WHERE section_id = ?1 LIMIT 1",
        ),
    ];
    for (dependents, sql) in dependents {
        if exists(conn, sqlx::query(sql).bind(*id.as_uuid())).await? {
            return Err(StoreError::HasDependents {
                entity: "section",
                dependents,
            });
        }
    }
    sqlx::query("DELETE FROM sections WHERE id = ?1")
        .bind(*id.as_uuid())
        .execute(conn)
        .await
        .map_err(writing(Write::Delete {
            entity: "section",
            dependents: "chambers",
        }))?;
    Ok(())
}

fn bind_chamber<'q>(query: SqlQuery<'q>, c: &Chamber) -> Result<SqlQuery<'q>, StoreError> {
    Ok(query
        .bind(*c.id.as_uuid())
        .bind(*c.organization_id.as_uuid())
        .bind(*c.section_id.as_uuid())
        .bind(c.name.as_str())
        .bind(c.endpoint.as_str())
        .bind(c.format.as_str())
        .bind(millis_of("chamber.interval", c.interval.as_duration())?)
        .bind(millis_of("chamber.timeout", c.timeout.as_duration())?)
        .bind(chamber_state_code(c.state))
        .bind(health_policy_json(&c.health_policy)?)
        .bind(c.schedule_since.as_unix_millis())
        .bind(c.updated_at.as_unix_millis()))
}

fn bind_detector<'q>(query: SqlQuery<'q>, d: &Detector) -> Result<SqlQuery<'q>, StoreError> {
    Ok(query
        .bind(*d.id.as_uuid())
        .bind(*d.organization_id.as_uuid())
        .bind(d.name.as_str())
        .bind(d.alias.as_ref().map(Name::as_str))
        .bind(d.unit.as_str())
        .bind(key_kind(&d.key))
        .bind(d.key.to_string())
        .bind(
            d.range
                .min()
                .map(|v| finite("detector.range.min", v))
                .transpose()?,
        )
        .bind(
            d.range
                .max()
                .map(|v| finite("detector.range.max", v))
                .transpose()?,
        ))
}

async fn create_chamber(
    conn: &mut SqliteConnection,
    chamber: &Chamber,
    detectors: &[Detector],
) -> Result<(), StoreError> {
    if !exists(
        conn,
        section_in(chamber.organization_id, chamber.section_id),
    )
    .await?
    {
        return Err(missing_parent("chamber", "section"));
    }
    // Columns in bind_chamber's order, then created_at.
    let insert = sqlx::query(
        "INSERT INTO chambers (id, organization_id, section_id, name, endpoint, format, \
         interval_ms, timeout_ms, state, health_policy, schedule_since, updated_at, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    );
    bind_chamber(insert, chamber)?
        .bind(chamber.created_at.as_unix_millis())
        .execute(&mut *conn)
        .await
        .map_err(writing(child("chamber", "section")))?;
    for d in detectors {
        if d.chamber_id != chamber.id || d.organization_id != chamber.organization_id {
            return Err(missing_parent("detector", "chamber"));
        }
        insert_detector(conn, d).await?;
    }
    let ids: Vec<Uuid> = detectors.iter().map(|d| *d.id.as_uuid()).collect();
    layouts::create(conn, *chamber.id.as_uuid(), &ids).await
}

async fn insert_detector(conn: &mut SqliteConnection, d: &Detector) -> Result<(), StoreError> {
    // Columns in bind_detector's order, then chamber_id.
    let insert = sqlx::query(
        "INSERT INTO detectors (id, organization_id, name, alias, unit, key_kind, key, \
         range_min, range_max, chamber_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    );
    bind_detector(insert, d)?
        .bind(*d.chamber_id.as_uuid())
        .execute(conn)
        .await
        .map_err(writing(child("detector", "chamber")))?;
    Ok(())
}

async fn update_chamber(conn: &mut SqliteConnection, chamber: &Chamber) -> Result<(), StoreError> {
    if !exists(conn, chamber_in(chamber.organization_id, chamber.id)).await? {
        return Err(not_found("chamber"));
    }
    if !exists(
        conn,
        section_in(chamber.organization_id, chamber.section_id),
    )
    .await?
    {
        return Err(missing_parent("chamber", "section"));
    }
    let update = sqlx::query(
        "UPDATE chambers SET section_id = ?3, name = ?4, endpoint = ?5, format = ?6, \
         interval_ms = ?7, timeout_ms = ?8, state = ?9, health_policy = ?10, \
         schedule_since = ?11, updated_at = ?12 WHERE id = ?1 AND organization_id = ?2",
    );
    let done = bind_chamber(update, chamber)?
        .execute(conn)
        .await
        .map_err(writing(child("chamber", "section")))?;
    touched(done, "chamber")
}

async fn load_chamber(
    conn: &mut SqliteConnection,
    id: ChamberId,
) -> Result<Option<ChamberWithDetectors>, StoreError> {
    let Some(row) = sqlx::query(concat!(
        "SELECT ",
        chamber_columns!(),
        " FROM chambers WHERE id = ?1"
    ))
    .bind(*id.as_uuid())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?
    else {
        return Ok(None);
    };
    let detectors = sqlx::query(concat!(
        "SELECT ",
        detector_columns!(),
        " FROM detectors WHERE chamber_id = ?1 ORDER BY id"
    ))
    .bind(*id.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    Ok(Some(ChamberWithDetectors {
        chamber: chamber(&row)?,
        detectors: decode_all(&detectors, detector)?,
    }))
}

#[db_port("sqlite")]
#[async_trait]
impl ChamberRepository for SqliteStore {
    async fn create(&self, chamber: &Chamber, detectors: &[Detector]) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = create_chamber(w.conn(), chamber, detectors).await;
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::create_many", db.system = "sqlite", db.operation = "ChamberRepository::create_many", items = chambers.len()))]
    async fn create_many(&self, chambers: &[ChamberWithDetectors]) -> Result<(), ItemError> {
        let mut w = self
            .begin_write()
            .await
            .map_err(|error| ItemError { index: 0, error })?;
        let mut result = Ok(());
        // The item the transaction failed at; a failed commit is blamed on the last one.
        let mut at = chambers.len().saturating_sub(1);
        for (index, c) in chambers.iter().enumerate() {
            if let Err(e) = create_chamber(w.conn(), &c.chamber, &c.detectors).await {
                (at, result) = (index, Err(e));
                break;
            }
        }
        w.finish(result)
            .await
            .map_err(|error| ItemError { index: at, error })
    }

    async fn get(&self, org: OrganizationId, id: ChamberId) -> Result<Chamber, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            chamber_columns!(),
            " FROM chambers WHERE id = ?1 AND organization_id = ?2"
        ))
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref()
            .map(chamber)
            .unwrap_or(Err(not_found("chamber")))
    }

    async fn list(
        &self,
        org: OrganizationId,
        filter: ChamberFilter,
        page: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>, StoreError> {
        self.read_page(
            sqlx::query(concat!(
                "SELECT ",
                chamber_columns!(),
                " FROM chambers WHERE organization_id = ?1 AND id > ?2 \
              AND (?3 IS NULL OR section_id = ?3) AND (?4 IS NULL OR state = ?4) \
              AND (?6 IS NULL OR instr(lower(name), lower(?6)) > 0) \
              AND (?7 IS NULL OR COALESCE((SELECT h.state FROM chamber_health h \
                   WHERE h.chamber_id = chambers.id), 'unknown') = ?7) \
              ORDER BY id LIMIT ?5"
            ))
            .bind(*org.as_uuid())
            .bind(after_id(page.after.as_ref().map(ChamberId::as_uuid)))
            .bind(filter.section_id.map(|s| *s.as_uuid()))
            .bind(filter.state.map(chamber_state_code))
            .bind(limit(page.size))
            .bind(filter.name_contains.as_deref())
            .bind(filter.health.map(HealthState::as_str)),
            chamber,
            page.size,
            |c| c.id,
        )
        .await
    }

    async fn update(&self, chamber: &Chamber) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = update_chamber(w.conn(), chamber).await;
        w.finish(result).await
    }

    async fn delete(&self, org: OrganizationId, id: ChamberId) -> Result<(), StoreError> {
        // Detectors (and through them readings), the ledger and health go by ON DELETE CASCADE.
        let mut w = self.begin_write().await?;
        let result = sqlx::query("DELETE FROM chambers WHERE id = ?1 AND organization_id = ?2")
            .bind(*id.as_uuid())
            .bind(*org.as_uuid())
            .execute(w.conn())
            .await
            .map_err(writing(Write::Plain))
            .and_then(|done| touched(done, "chamber"));
        let result = w.finish(result).await;
        self.layouts.forget(*id.as_uuid());
        result
    }

    async fn load_for_poll(
        &self,
        id: ChamberId,
    ) -> Result<Option<ChamberWithDetectors>, StoreError> {
        let mut tx = self.begin_read().await?;
        let result = load_chamber(&mut tx, id).await;
        end_read(tx, result).await
    }

    async fn list_active(
        &self,
        page: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>, StoreError> {
        self.read_page(
            sqlx::query(concat!(
                "SELECT ",
                chamber_columns!(),
                " FROM chambers WHERE state = 'active' AND id > ?1 ORDER BY id LIMIT ?2"
            ))
            .bind(after_id(page.after.as_ref().map(ChamberId::as_uuid)))
            .bind(limit(page.size)),
            chamber,
            page.size,
            |c| c.id,
        )
        .await
    }
}

#[db_port("sqlite")]
#[async_trait]
impl DetectorRepository for SqliteStore {
    async fn add(&self, detector: &Detector) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let conn = w.conn();
        let result = match exists(
            conn,
            chamber_in(detector.organization_id, detector.chamber_id),
        )
        .await
        {
            Ok(true) => match insert_detector(conn, detector).await {
                Ok(()) => {
                    let added = Change::Added(*detector.id.as_uuid());
                    layouts::change(conn, *detector.chamber_id.as_uuid(), added).await
                }
                Err(e) => Err(e),
            },
            Ok(false) => Err(missing_parent("detector", "chamber")),
            Err(e) => Err(e),
        };
        w.finish(result).await
    }

    async fn get(&self, org: OrganizationId, id: DetectorId) -> Result<Detector, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            detector_columns!(),
            " FROM detectors WHERE id = ?1 AND organization_id = ?2"
        ))
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref()
            .map(detector)
            .unwrap_or(Err(not_found("detector")))
    }

    async fn list_for_chamber(
        &self,
        org: OrganizationId,
        chamber: ChamberId,
    ) -> Result<Vec<Detector>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            detector_columns!(),
            " FROM detectors WHERE chamber_id = ?1 AND organization_id = ?2 ORDER BY id"
        ))
        .bind(*chamber.as_uuid())
        .bind(*org.as_uuid())
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        decode_all(&rows, detector)
    }

    async fn list_for_chambers(
        &self,
        org: OrganizationId,
        chambers: &[ChamberId],
    ) -> Result<Vec<Detector>, StoreError> {
        let mut all = Vec::new();
        // Well under SQLite's limit on bound parameters per statement.
        for ids in chambers.chunks(500) {
            let marks = vec!["?"; ids.len()].join(", ");
            let sql = format!(
                "SELECT {} FROM detectors WHERE organization_id = ? AND chamber_id IN ({marks}) \
                 ORDER BY chamber_id, id",
                detector_columns!()
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(*org.as_uuid());
            for id in ids {
                query = query.bind(*id.as_uuid());
            }
            let rows = query.fetch_all(&self.readers).await.map_err(db)?;
            all.extend(decode_all(&rows, detector)?);
        }
        Ok(all)
    }

    async fn update(&self, detector: &Detector) -> Result<(), StoreError> {
        // The detector stays in its chamber: chamber_id is not updated.
        let mut w = self.begin_write().await?;
        let update = sqlx::query(
            "UPDATE detectors SET name = ?3, alias = ?4, unit = ?5, key_kind = ?6, key = ?7, \
             range_min = ?8, range_max = ?9 WHERE id = ?1 AND organization_id = ?2",
        );
        let result = match bind_detector(update, detector) {
            Ok(query) => query
                .execute(w.conn())
                .await
                .map_err(writing(Write::Plain))
                .and_then(|done| touched(done, "detector")),
            Err(e) => Err(e),
        };
        w.finish(result).await
    }

    async fn delete(&self, org: OrganizationId, id: DetectorId) -> Result<(), StoreError> {
        // Its values stay in the polls until retention, at a position of layouts that no
        // longer name it (the next version leaves a hole there): never returned again.
        let mut w = self.begin_write().await?;
        let result = delete_detector(w.conn(), org, id).await;
        w.finish(result).await
    }
}

async fn delete_detector(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    id: DetectorId,
) -> Result<(), StoreError> {
    let chamber: Option<Uuid> = sqlx::query_scalar(
        "DELETE FROM detectors WHERE id = ?1 AND organization_id = ?2 RETURNING chamber_id",
    )
    .bind(*id.as_uuid())
    .bind(*org.as_uuid())
    .fetch_optional(&mut *conn)
    .await
    .map_err(writing(Write::Plain))?;
    let chamber = chamber.ok_or_else(|| not_found("detector"))?;
    layouts::change(conn, chamber, Change::Removed(*id.as_uuid())).await
}

async fn start_batch(conn: &mut SqliteConnection, batch: &Batch) -> Result<(), StoreError> {
    if !exists(conn, section_in(batch.organization_id, batch.section_id)).await? {
        return Err(missing_parent("batch", "section"));
    }
    let open = sqlx::query("SELECT 1 FROM batches WHERE section_id = ?1 AND ended_at IS NULL")
        .bind(*batch.section_id.as_uuid());
    if exists(conn, open).await? {
        return Err(StoreError::Conflict {
            entity: "batch",
            reason: "the section already has an open batch".into(),
        });
    }
    sqlx::query(concat!(
        "INSERT INTO batches (",
        batch_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))
    .bind(*batch.id.as_uuid())
    .bind(*batch.organization_id.as_uuid())
    .bind(*batch.section_id.as_uuid())
    .bind(batch.name.as_str())
    .bind(batch.description.as_str())
    .bind(batch.started_at.as_unix_millis())
    .bind(batch.ended_at.map(Timestamp::as_unix_millis))
    .execute(conn)
    .await
    .map_err(writing(child("batch", "section")))?;
    Ok(())
}

async fn end_batch(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    id: BatchId,
    at: Timestamp,
) -> Result<Batch, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        batch_columns!(),
        " FROM batches WHERE id = ?1 AND organization_id = ?2"
    ))
    .bind(*id.as_uuid())
    .bind(*org.as_uuid())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let mut batch = row.as_ref().map(batch).unwrap_or(Err(not_found("batch")))?;
    if !batch.is_open() {
        return Err(StoreError::Conflict {
            entity: "batch",
            reason: "already ended".into(),
        });
    }
    if at < batch.started_at {
        return Err(StoreError::Conflict {
            entity: "batch",
            reason: "cannot end before it started".into(),
        });
    }
    sqlx::query("UPDATE batches SET ended_at = ?2 WHERE id = ?1")
        .bind(*id.as_uuid())
        .bind(at.as_unix_millis())
        .execute(conn)
        .await
        .map_err(writing(Write::Plain))?;
    batch.ended_at = Some(at);
    Ok(batch)
}

#[db_port("sqlite")]
#[async_trait]
impl BatchRepository for SqliteStore {
    async fn start(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = start_batch(w.conn(), batch).await;
        w.finish(result).await
    }

    async fn end(
        &self,
        org: OrganizationId,
        id: BatchId,
        at: Timestamp,
    ) -> Result<Batch, StoreError> {
        let mut w = self.begin_write().await?;
        let result = end_batch(w.conn(), org, id, at).await;
        w.finish(result).await
    }

    async fn get(&self, org: OrganizationId, id: BatchId) -> Result<Batch, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            batch_columns!(),
            " FROM batches WHERE id = ?1 AND organization_id = ?2"
        ))
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref().map(batch).unwrap_or(Err(not_found("batch")))
    }

    async fn list(
        &self,
        org: OrganizationId,
        section: Option<SectionId>,
        page: PageRequest<BatchId>,
    ) -> Result<Page<Batch, BatchId>, StoreError> {
        self.read_page(
            sqlx::query(concat!(
                "SELECT ",
                batch_columns!(),
                " FROM batches WHERE organization_id = ?1 AND id > ?2 \
              AND (?3 IS NULL OR section_id = ?3) ORDER BY id LIMIT ?4"
            ))
            .bind(*org.as_uuid())
            .bind(after_id(page.after.as_ref().map(BatchId::as_uuid)))
            .bind(section.map(|s| *s.as_uuid()))
            .bind(limit(page.size)),
            batch,
            page.size,
            |b| b.id,
        )
        .await
    }

    async fn covering(
        &self,
        section: SectionId,
        at: Timestamp,
    ) -> Result<Option<Batch>, StoreError> {
        // Windows of one section do not overlap unless a batch was started back-dated; then the
        // latest start wins.
        let row = sqlx::query(concat!(
            "SELECT ",
            batch_columns!(),
            " FROM batches WHERE section_id = ?1 AND started_at <= ?2 \
              AND (ended_at IS NULL OR ended_at > ?2) ORDER BY started_at DESC, id LIMIT 1"
        ))
        .bind(*section.as_uuid())
        .bind(at.as_unix_millis())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref().map(batch).transpose()
    }
}
