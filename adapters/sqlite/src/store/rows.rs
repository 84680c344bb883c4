//! Reading rows back: every value goes through the domain's constructors; one that does not
//! parse is a corruption naming its table and column. One decoder per table, with its columns.

use std::fmt;
use std::time::Duration;

use chamberlain_domain::model::{
    ApiToken, ApiTokenId, Batch, BatchId, Chamber, ChamberHealth, ChamberId, ChamberState,
    CorruptionReason, Description, Detector, DetectorId, DetectorKey, Email, EndpointUrl, Finite,
    HealthPolicy, HealthState, LedgerEntry, Name, Organization, OrganizationId, PlausibleRange,
    PollId, PollInterval, PollOutcome, PollTimeout, Reading, ReadingValue, ResponseFormat, Role,
    Section, SectionId, TokenHash, Unit, User, UserId,
};
use chamberlain_domain::ports::StoreError;
use chamberlain_domain::time::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{Decode, Row, Sqlite, Type};
use uuid::Uuid;

use super::millis_of;
use crate::errors::corrupt;

pub(super) struct Cols<'r> {
    row: &'r SqliteRow,
    table: &'static str,
}

impl<'r> Cols<'r> {
    pub(super) fn new(row: &'r SqliteRow, table: &'static str) -> Self {
        Self { row, table }
    }

    pub(super) fn get<T>(&self, column: &'static str) -> Result<T, StoreError>
    where
        T: Decode<'r, Sqlite> + Type<Sqlite>,
    {
        self.row
            .try_get(column)
            .map_err(|e| corrupt(self.table, column, e))
    }

    pub(super) fn parse<T, V, E>(
        &self,
        column: &'static str,
        f: impl FnOnce(T) -> Result<V, E>,
    ) -> Result<V, StoreError>
    where
        T: Decode<'r, Sqlite> + Type<Sqlite>,
        E: fmt::Display,
    {
        f(self.get(column)?).map_err(|e| corrupt(self.table, column, e))
    }

    pub(super) fn uuid(&self, column: &'static str) -> Result<Uuid, StoreError> {
        self.get(column)
    }

    pub(super) fn at(&self, column: &'static str) -> Result<Timestamp, StoreError> {
        self.get::<i64>(column).map(Timestamp::from_unix_millis)
    }

    pub(super) fn opt_at(&self, column: &'static str) -> Result<Option<Timestamp>, StoreError> {
        Ok(self
            .get::<Option<i64>>(column)?
            .map(Timestamp::from_unix_millis))
    }

    pub(super) fn name(&self, column: &'static str) -> Result<Name, StoreError> {
        self.parse(column, Name::parse)
    }

    pub(super) fn count<T>(&self, column: &'static str) -> Result<T, StoreError>
    where
        T: TryFrom<i64>,
        T::Error: fmt::Display,
    {
        self.parse(column, |v: i64| T::try_from(v))
    }

    pub(super) fn millis(&self, column: &'static str) -> Result<Duration, StoreError> {
        self.count::<u64>(column).map(Duration::from_millis)
    }

    pub(super) fn opt_millis(&self, column: &'static str) -> Result<Option<Duration>, StoreError> {
        self.parse(column, |v: Option<i64>| {
            v.map(|ms| u64::try_from(ms).map(Duration::from_millis))
                .transpose()
        })
    }
}

pub(super) fn decode_all<T>(
    rows: &[SqliteRow],
    f: fn(&SqliteRow) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(f).collect()
}

macro_rules! organization_columns {
    () => {
        "id, name, created_at"
    };
}

pub(super) fn organization(row: &SqliteRow) -> Result<Organization, StoreError> {
    let c = Cols::new(row, "organizations");
    Ok(Organization {
        id: OrganizationId::from_uuid(c.uuid("id")?),
        name: c.name("name")?,
        created_at: c.at("created_at")?,
    })
}

macro_rules! section_columns {
    () => {
        "id, organization_id, name, description, created_at"
    };
}

pub(super) fn section(row: &SqliteRow) -> Result<Section, StoreError> {
    let c = Cols::new(row, "sections");
    Ok(Section {
        id: SectionId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        name: c.name("name")?,
        description: c.parse("description", Description::parse)?,
        created_at: c.at("created_at")?,
    })
}

macro_rules! chamber_columns {
    () => {
        "id, organization_id, section_id, name, endpoint, format, interval_ms, timeout_ms, \
         state, health_policy, schedule_since, created_at, updated_at"
    };
}

pub(super) fn chamber(row: &SqliteRow) -> Result<Chamber, StoreError> {
    let c = Cols::new(row, "chambers");
    let interval = c.parse("interval_ms", |ms: i64| {
        u64::try_from(ms)
            .map_err(|e| e.to_string())
            .and_then(|ms| PollInterval::try_from(ms).map_err(|e| e.to_string()))
    })?;
    Ok(Chamber {
        id: ChamberId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        section_id: SectionId::from_uuid(c.uuid("section_id")?),
        name: c.name("name")?,
        endpoint: c.parse("endpoint", EndpointUrl::parse)?,
        format: c.parse("format", ResponseFormat::parse)?,
        interval,
        timeout: c.parse("timeout_ms", |ms: i64| {
            u64::try_from(ms).map_err(|e| e.to_string()).and_then(|ms| {
                PollTimeout::new(Duration::from_millis(ms), interval).map_err(|e| e.to_string())
            })
        })?,
        state: c.parse("state", chamber_state)?,
        health_policy: c.parse("health_policy", health_policy)?,
        schedule_since: c.at("schedule_since")?,
        created_at: c.at("created_at")?,
        updated_at: c.at("updated_at")?,
    })
}

pub(super) const fn chamber_state_code(state: ChamberState) -> &'static str {
    match state {
        ChamberState::Active => "active",
        ChamberState::Paused => "paused",
    }
}

fn chamber_state(code: &str) -> Result<ChamberState, String> {
    match code {
        "active" => Ok(ChamberState::Active),
        "paused" => Ok(ChamberState::Paused),
        other => Err(format!("unknown state {other:?}")),
    }
}

/// The health policy as JSON: `{"degraded_after", "down_after_failures", "down_after_ms"}`.
pub(super) fn health_policy_json(policy: &HealthPolicy) -> Result<String, StoreError> {
    Ok(serde_json::json!({
        "degraded_after": policy.degraded_after(),
        "down_after_failures": policy.down_after_failures(),
        "down_after_ms": millis_of("chamber.health_policy.down_after", policy.down_after())?,
    })
    .to_string())
}

fn health_policy(json: &str) -> Result<HealthPolicy, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let number = |key: &str| {
        value
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| format!("{key} is missing or not a whole number"))
    };
    let count =
        |key: &str| number(key).and_then(|n| u32::try_from(n).map_err(|e| format!("{key}: {e}")));
    HealthPolicy::new(
        count("degraded_after")?,
        count("down_after_failures")?,
        Duration::from_millis(number("down_after_ms")?),
    )
    .map_err(|e| e.to_string())
}

macro_rules! detector_columns {
    () => {
        "id, organization_id, chamber_id, name, alias, unit, key_kind, key, range_min, range_max"
    };
}

pub(super) fn detector(row: &SqliteRow) -> Result<Detector, StoreError> {
    let c = Cols::new(row, "detectors");
    let format = c.parse("key_kind", |kind: &str| match kind {
        "json_pointer" => Ok(ResponseFormat::Json),
        "metric" => Ok(ResponseFormat::Prometheus),
        other => Err(format!("unknown key kind {other:?}")),
    })?;
    Ok(Detector {
        id: DetectorId::from_uuid(c.uuid("id")?),
        chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        name: c.name("name")?,
        alias: c.parse("alias", |alias: Option<&str>| {
            alias.map(Name::parse).transpose()
        })?,
        unit: c.parse("unit", Unit::parse)?,
        key: c.parse("key", |key: &str| DetectorKey::parse(format, key))?,
        range: PlausibleRange::new(c.get("range_min")?, c.get("range_max")?)
            .map_err(|e| corrupt("detectors", "range_min", e))?,
    })
}

pub(super) const fn key_kind(key: &DetectorKey) -> &'static str {
    match key {
        DetectorKey::JsonPointer(_) => "json_pointer",
        DetectorKey::Metric(_) => "metric",
    }
}

macro_rules! batch_columns {
    () => {
        "id, organization_id, section_id, name, description, started_at, ended_at"
    };
}

pub(super) fn batch(row: &SqliteRow) -> Result<Batch, StoreError> {
    let c = Cols::new(row, "batches");
    Ok(Batch {
        id: BatchId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        section_id: SectionId::from_uuid(c.uuid("section_id")?),
        name: c.name("name")?,
        description: c.parse("description", Description::parse)?,
        started_at: c.at("started_at")?,
        ended_at: c.opt_at("ended_at")?,
    })
}

macro_rules! health_columns {
    () => {
        "chamber_id, state, consecutive_failures, failing_since, last_slot, changed_at, version"
    };
}

pub(super) fn health(row: &SqliteRow) -> Result<ChamberHealth, StoreError> {
    let c = Cols::new(row, "chamber_health");
    Ok(ChamberHealth {
        chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
        state: c.parse("state", |code: &str| match code {
            "unknown" => Ok(HealthState::Unknown),
            "up" => Ok(HealthState::Up),
            "degraded" => Ok(HealthState::Degraded),
            "down" => Ok(HealthState::Down),
            other => Err(format!("unknown state {other:?}")),
        })?,
        consecutive_failures: c.count("consecutive_failures")?,
        failing_since: c.opt_at("failing_since")?,
        last_slot: c.opt_at("last_slot")?,
        changed_at: c.at("changed_at")?,
        version: c.count("version")?,
    })
}

macro_rules! reading_columns {
    () => {
        "detector_id, chamber_id, slot, value, corruption, requested_at, received_at, batch_id"
    };
}

pub(super) fn reading(row: &SqliteRow) -> Result<Reading, StoreError> {
    let c = Cols::new(row, "readings");
    let value = match (
        c.get::<Option<f64>>("value")?,
        c.get::<Option<&str>>("corruption")?,
    ) {
        (Some(v), None) => {
            ReadingValue::Measured(Finite::new(v).map_err(|e| corrupt("readings", "value", e))?)
        }
        (None, Some(code)) => {
            ReadingValue::Corrupted(CorruptionReason::from_code(code).ok_or_else(|| {
                corrupt("readings", "corruption", format!("unknown code {code:?}"))
            })?)
        }
        _ => {
            return Err(corrupt(
                "readings",
                "value",
                "must hold either a value or a corruption code",
            ));
        }
    };
    Ok(Reading {
        detector_id: DetectorId::from_uuid(c.uuid("detector_id")?),
        chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
        slot: c.at("slot")?,
        value,
        requested_at: c.at("requested_at")?,
        received_at: c.at("received_at")?,
        batch_id: c.get::<Option<Uuid>>("batch_id")?.map(BatchId::from_uuid),
    })
}

macro_rules! ledger_columns {
    () => {
        "chamber_id, slot, outcome, detail, attempt, requested_at, recorded_at, latency_ms, \
         lateness_ms"
    };
}

/// Every column of a row of `polls` (and of `polls_recent`).
macro_rules! poll_columns {
    () => {
        concat!(
            ledger_columns!(),
            ", layout_version, batch_id, value, corruption"
        )
    };
}

/// The bucket of `polls_recent` (the first four bits of the id, as `recent::bucket_of`) of a
/// chamber id given as SQL: `polls_recent`'s key starts with it, and a query of one chamber
/// names it to read only its bucket's rows.
macro_rules! recent_bucket_of {
    ($id:expr) => {
        concat!(
            "(instr('0123456789ABCDEF', substr(hex(",
            $id,
            "), 1, 1)) - 1)"
        )
    };
}

pub(super) fn ledger_entry(row: &SqliteRow) -> Result<LedgerEntry, StoreError> {
    let c = Cols::new(row, "polls");
    let outcome: PollOutcome = c.parse("detail", |json: &str| serde_json::from_str(json))?;
    let code: &str = c.get("outcome")?;
    if code != outcome.code() {
        return Err(corrupt(
            "polls",
            "outcome",
            format!("{code:?} does not match the detail ({})", outcome.code()),
        ));
    }
    Ok(LedgerEntry {
        poll: PollId {
            chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
            slot: c.at("slot")?,
        },
        outcome,
        attempt: c.count("attempt")?,
        requested_at: c.opt_at("requested_at")?,
        recorded_at: c.at("recorded_at")?,
        latency: c.opt_millis("latency_ms")?,
        lateness: c.millis("lateness_ms")?,
    })
}

macro_rules! user_columns {
    () => {
        "id, organization_id, email, display_name, role, password_hash, disabled, created_at"
    };
}

pub(super) fn user(row: &SqliteRow) -> Result<User, StoreError> {
    let c = Cols::new(row, "users");
    Ok(User {
        id: UserId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        email: c.parse("email", Email::parse)?,
        display_name: c.name("display_name")?,
        role: c.parse("role", Role::parse)?,
        password_hash: c.get("password_hash")?,
        disabled: c.parse("disabled", |v: i64| match v {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("{other} is not 0 or 1")),
        })?,
        created_at: c.at("created_at")?,
    })
}

macro_rules! token_columns {
    () => {
        "id, organization_id, user_id, name, token_hash, role_cap, created_at, expires_at, \
         last_used_at, revoked_at"
    };
}

pub(super) fn token(row: &SqliteRow) -> Result<ApiToken, StoreError> {
    let c = Cols::new(row, "api_tokens");
    Ok(ApiToken {
        id: ApiTokenId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        user_id: UserId::from_uuid(c.uuid("user_id")?),
        name: c.name("name")?,
        hash: c.parse("token_hash", |bytes: &[u8]| {
            <[u8; 32]>::try_from(bytes)
                .map(TokenHash)
                .map_err(|_| format!("{} bytes instead of 32", bytes.len()))
        })?,
        role_cap: c.parse("role_cap", Role::parse)?,
        created_at: c.at("created_at")?,
        expires_at: c.opt_at("expires_at")?,
        last_used_at: c.opt_at("last_used_at")?,
        revoked_at: c.opt_at("revoked_at")?,
    })
}
