//! Between rows and domain values: every value read back goes through the domain's
//! constructors, so a stored row can never produce an invalid entity.

use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{
    ApiToken, ApiTokenId, Batch, BatchId, Chamber, ChamberHealth, ChamberId, ChamberState,
    CorruptionReason, Description, Detector, DetectorId, DetectorKey, Email, EndpointUrl, Finite,
    HealthPolicy, HealthState, LedgerEntry, Name, Organization, OrganizationId, PlausibleRange,
    PollId, PollInterval, PollOutcome, PollTimeout, Reading, ReadingValue, ResponseFormat, Role,
    Section, SectionId, TokenHash, Unit, User, UserId,
};
use chamberlain_domain::ports::StoreError;
use sqlx::Row;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::errors::corrupt;

/// An instant as PostgreSQL stores it. Instants beyond what `timestamptz` holds (the open ends
/// of "all time" queries) are clamped to its first day (4713 BC) and to year 9999.
pub(crate) fn ts(t: Timestamp) -> OffsetDateTime {
    let earliest = time::Date::from_calendar_date(-4712, time::Month::January, 1)
        .map_or(time::PrimitiveDateTime::MIN, time::Date::midnight)
        .assume_utc();
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_unix_millis()) * 1_000_000).map_or(
        if t.as_unix_millis() < 0 {
            earliest
        } else {
            time::PrimitiveDateTime::MAX.assume_utc()
        },
        |at| at.max(earliest),
    )
}

pub(crate) fn from_ts(t: OffsetDateTime) -> Timestamp {
    Timestamp::from_unix_millis(
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
    )
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Reading corruption reasons as stored: a small code per reason (readings are the big table).
pub(crate) fn corruption_code(r: CorruptionReason) -> i16 {
    i16::from(r.number())
}

fn corruption_from_code(code: i16) -> Option<CorruptionReason> {
    u8::try_from(code)
        .ok()
        .and_then(CorruptionReason::from_number)
}

pub(crate) fn reading_value(
    value: Option<f64>,
    corruption: Option<i16>,
) -> Result<ReadingValue, StoreError> {
    match (value, corruption) {
        (Some(v), None) => Finite::new(v)
            .map(ReadingValue::Measured)
            .map_err(|e| corrupt("readings", "value", e)),
        (None, Some(code)) => corruption_from_code(code)
            .map(ReadingValue::Corrupted)
            .ok_or_else(|| corrupt("readings", "corruption", code)),
        _ => Err(corrupt(
            "readings",
            "value",
            "both or neither of value and corruption",
        )),
    }
}

pub(crate) fn split_value(v: &ReadingValue) -> (Option<f64>, Option<i16>) {
    match v {
        ReadingValue::Measured(f) => (Some(f.get()), None),
        ReadingValue::Corrupted(r) => (None, Some(corruption_code(*r))),
    }
}

/// Typed column access that reports the table and column on failure.
pub(crate) struct Cols<'r> {
    pub row: &'r PgRow,
    pub table: &'static str,
}

impl<'r> Cols<'r> {
    pub fn get<T>(&self, column: &'static str) -> Result<T, StoreError>
    where
        T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        self.row
            .try_get(column)
            .map_err(|e| corrupt(self.table, column, e))
    }

    pub fn ts(&self, column: &'static str) -> Result<Timestamp, StoreError> {
        self.get::<OffsetDateTime>(column).map(from_ts)
    }

    pub fn opt_ts(&self, column: &'static str) -> Result<Option<Timestamp>, StoreError> {
        Ok(self.get::<Option<OffsetDateTime>>(column)?.map(from_ts))
    }

    pub fn name(&self, column: &'static str) -> Result<Name, StoreError> {
        Name::parse(&self.get::<String>(column)?).map_err(|e| corrupt(self.table, column, e))
    }

    pub fn uuid(&self, column: &'static str) -> Result<Uuid, StoreError> {
        self.get(column)
    }

    pub fn parse<T, E: std::fmt::Display>(
        &self,
        column: &'static str,
        f: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, StoreError> {
        f(&self.get::<String>(column)?).map_err(|e| corrupt(self.table, column, e))
    }
}

pub(crate) fn organization(row: &PgRow) -> Result<Organization, StoreError> {
    let c = Cols {
        row,
        table: "organizations",
    };
    Ok(Organization {
        id: OrganizationId::from_uuid(c.uuid("id")?),
        name: c.name("name")?,
        created_at: c.ts("created_at")?,
    })
}

pub(crate) fn section(row: &PgRow) -> Result<Section, StoreError> {
    let c = Cols {
        row,
        table: "sections",
    };
    Ok(Section {
        id: SectionId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        name: c.name("name")?,
        description: c.parse("description", Description::parse)?,
        created_at: c.ts("created_at")?,
    })
}

pub(crate) const CHAMBER_COLUMNS: &str = "id, organization_id, section_id, name, endpoint, format, interval_ms, timeout_ms, state, health_policy, schedule_since, created_at, updated_at";

pub(crate) fn state_str(s: ChamberState) -> &'static str {
    match s {
        ChamberState::Active => "active",
        ChamberState::Paused => "paused",
    }
}

pub(crate) fn chamber(row: &PgRow) -> Result<Chamber, StoreError> {
    let c = Cols {
        row,
        table: "chambers",
    };
    let interval_ms: i64 = c.get("interval_ms")?;
    let interval = u64::try_from(interval_ms)
        .map_err(|e| corrupt("chambers", "interval_ms", e))
        .and_then(|ms| {
            PollInterval::try_from(ms).map_err(|e| corrupt("chambers", "interval_ms", e))
        })?;
    let timeout_ms: i64 = c.get("timeout_ms")?;
    let timeout = PollTimeout::new(
        Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0)),
        interval,
    )
    .map_err(|e| corrupt("chambers", "timeout_ms", e))?;
    let state = match c.get::<String>("state")?.as_str() {
        "active" => ChamberState::Active,
        "paused" => ChamberState::Paused,
        other => return Err(corrupt("chambers", "state", other)),
    };
    let policy: sqlx::types::Json<HealthPolicy> = c.get("health_policy")?;
    Ok(Chamber {
        id: ChamberId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        section_id: SectionId::from_uuid(c.uuid("section_id")?),
        name: c.name("name")?,
        endpoint: c.parse("endpoint", EndpointUrl::parse)?,
        format: c.parse("format", ResponseFormat::parse)?,
        interval,
        timeout,
        state,
        health_policy: policy.0,
        schedule_since: c.ts("schedule_since")?,
        created_at: c.ts("created_at")?,
        updated_at: c.ts("updated_at")?,
    })
}

pub(crate) fn key_kind(k: &DetectorKey) -> &'static str {
    match k {
        DetectorKey::JsonPointer(_) => "json_pointer",
        DetectorKey::Metric(_) => "metric",
    }
}

pub(crate) const DETECTOR_COLUMNS: &str =
    "id, organization_id, chamber_id, name, alias, unit, key_kind, key, range_min, range_max";

pub(crate) fn detector(row: &PgRow) -> Result<Detector, StoreError> {
    let c = Cols {
        row,
        table: "detectors",
    };
    let format = match c.get::<String>("key_kind")?.as_str() {
        "json_pointer" => ResponseFormat::Json,
        "metric" => ResponseFormat::Prometheus,
        other => return Err(corrupt("detectors", "key_kind", other)),
    };
    let alias = match c.get::<Option<String>>("alias")? {
        Some(a) => Some(Name::parse(&a).map_err(|e| corrupt("detectors", "alias", e))?),
        None => None,
    };
    Ok(Detector {
        id: DetectorId::from_uuid(c.uuid("id")?),
        chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        name: c.name("name")?,
        alias,
        unit: c.parse("unit", Unit::parse)?,
        key: c.parse("key", |k| DetectorKey::parse(format, k))?,
        range: PlausibleRange::new(c.get("range_min")?, c.get("range_max")?)
            .map_err(|e| corrupt("detectors", "range_min", e))?,
    })
}

pub(crate) const BATCH_COLUMNS: &str =
    "id, organization_id, section_id, name, description, started_at, ended_at";

pub(crate) fn batch(row: &PgRow) -> Result<Batch, StoreError> {
    let c = Cols {
        row,
        table: "batches",
    };
    Ok(Batch {
        id: BatchId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        section_id: SectionId::from_uuid(c.uuid("section_id")?),
        name: c.name("name")?,
        description: c.parse("description", Description::parse)?,
        started_at: c.ts("started_at")?,
        ended_at: c.opt_ts("ended_at")?,
    })
}

pub(crate) const READING_COLUMNS: &str =
    "detector_id, chamber_id, slot, value, corruption, requested_at, received_at, batch_id";

pub(crate) fn reading(row: &PgRow) -> Result<Reading, StoreError> {
    let c = Cols {
        row,
        table: "readings",
    };
    Ok(Reading {
        detector_id: DetectorId::from_uuid(c.uuid("detector_id")?),
        chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
        slot: c.ts("slot")?,
        value: reading_value(c.get("value")?, c.get("corruption")?)?,
        requested_at: c.ts("requested_at")?,
        received_at: c.ts("received_at")?,
        batch_id: c.get::<Option<Uuid>>("batch_id")?.map(BatchId::from_uuid),
    })
}

pub(crate) const LEDGER_COLUMNS: &str =
    "chamber_id, slot, detail, attempt, requested_at, recorded_at, latency_ms, lateness_ms";

pub(crate) fn ledger_entry(row: &PgRow) -> Result<LedgerEntry, StoreError> {
    let c = Cols {
        row,
        table: "poll_ledger",
    };
    let outcome: sqlx::types::Json<PollOutcome> = c.get("detail")?;
    let attempt: i32 = c.get("attempt")?;
    let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
    Ok(LedgerEntry {
        poll: PollId {
            chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
            slot: c.ts("slot")?,
        },
        outcome: outcome.0,
        attempt: u32::try_from(attempt).map_err(|e| corrupt("poll_ledger", "attempt", e))?,
        requested_at: c.opt_ts("requested_at")?,
        recorded_at: c.ts("recorded_at")?,
        latency: c.get::<Option<i64>>("latency_ms")?.map(ms),
        lateness: ms(c.get("lateness_ms")?),
    })
}

pub(crate) fn health_state_str(s: HealthState) -> &'static str {
    s.as_str()
}

pub(crate) fn health(row: &PgRow) -> Result<ChamberHealth, StoreError> {
    let c = Cols {
        row,
        table: "chamber_health",
    };
    let state = match c.get::<String>("state")?.as_str() {
        "unknown" => HealthState::Unknown,
        "up" => HealthState::Up,
        "degraded" => HealthState::Degraded,
        "down" => HealthState::Down,
        other => return Err(corrupt("chamber_health", "state", other)),
    };
    let failures: i32 = c.get("consecutive_failures")?;
    let version: i64 = c.get("version")?;
    Ok(ChamberHealth {
        chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
        state,
        consecutive_failures: u32::try_from(failures)
            .map_err(|e| corrupt("chamber_health", "consecutive_failures", e))?,
        failing_since: c.opt_ts("failing_since")?,
        last_slot: c.opt_ts("last_slot")?,
        changed_at: c.ts("changed_at")?,
        version: u64::try_from(version).map_err(|e| corrupt("chamber_health", "version", e))?,
    })
}

pub(crate) const USER_COLUMNS: &str =
    "id, organization_id, email, display_name, role, password_hash, disabled, created_at";

pub(crate) fn user(row: &PgRow) -> Result<User, StoreError> {
    let c = Cols {
        row,
        table: "users",
    };
    Ok(User {
        id: UserId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        email: c.parse("email", Email::parse)?,
        display_name: c.name("display_name")?,
        role: c.parse("role", Role::parse)?,
        password_hash: c.get("password_hash")?,
        disabled: c.get("disabled")?,
        created_at: c.ts("created_at")?,
    })
}

pub(crate) const TOKEN_COLUMNS: &str = "id, organization_id, user_id, name, token_hash, role_cap, created_at, expires_at, last_used_at, revoked_at";

pub(crate) fn token(row: &PgRow) -> Result<ApiToken, StoreError> {
    let c = Cols {
        row,
        table: "api_tokens",
    };
    let hash: Vec<u8> = c.get("token_hash")?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| corrupt("api_tokens", "token_hash", "not 32 bytes"))?;
    Ok(ApiToken {
        id: ApiTokenId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        user_id: UserId::from_uuid(c.uuid("user_id")?),
        name: c.name("name")?,
        hash: TokenHash(hash),
        role_cap: c.parse("role_cap", Role::parse)?,
        created_at: c.ts("created_at")?,
        expires_at: c.opt_ts("expires_at")?,
        last_used_at: c.opt_ts("last_used_at")?,
        revoked_at: c.opt_ts("revoked_at")?,
    })
}
