//! Driver errors to the domain's [`StoreError`]: no sqlx error crosses the port.

use chamberlain_domain::ports::StoreError;

/// What a constraint violation means, by constraint name (see the migration).
fn constraint_error(constraint: &str) -> Option<StoreError> {
    let dup = |entity, field| Some(StoreError::Duplicate { entity, field });
    let parent = |entity, parent| Some(StoreError::MissingParent { entity, parent });
    match constraint {
        "organizations_name_key" => dup("organization", "name"),
        "organizations_pkey" => dup("organization", "id"),
        "users_organization_email_key" | "users_pkey" => dup("user", "email"),
        "users_organization_id_fkey" => parent("user", "organization"),
        "api_tokens_hash_key" | "api_tokens_pkey" => dup("token", "hash"),
        "api_tokens_user_fkey" => parent("token", "user"),
        "sections_name_key" | "sections_pkey" => dup("section", "name"),
        "sections_organization_id_fkey" => parent("section", "organization"),
        "chambers_name_key" | "chambers_pkey" => dup("chamber", "name"),
        "chambers_section_fkey" => parent("chamber", "section"),
        "detectors_name_key" | "detectors_pkey" => dup("detector", "name"),
        "detectors_chamber_fkey" => parent("detector", "chamber"),
        "batches_section_fkey" => parent("batch", "section"),
        "batches_one_open_per_section" => Some(StoreError::Conflict {
            entity: "batch",
            reason: "the section already has an open batch".into(),
        }),
        "chamber_health_chamber_id_fkey" => parent("health", "chamber"),
        "alert_rules_name_key" | "alert_rules_pkey" => dup("alert_rule", "name"),
        "alert_rules_chamber_fkey" => parent("alert_rule", "chamber"),
        "alerts_rule_fkey" => parent("alert", "alert_rule"),
        "alerts_one_open_per_rule" | "alerts_pkey" => Some(StoreError::Conflict {
            entity: "alert",
            reason: "the rule already has an open alert".into(),
        }),
        "transmitters_name_key" | "transmitters_pkey" => dup("transmitter", "name"),
        "transmitters_organization_id_fkey" => parent("transmitter", "organization"),
        "dead_letters_transmitter_fkey" => parent("dead_letter", "transmitter"),
        "delivery_states_transmitter_fkey" => parent("delivery_state", "transmitter"),
        _ => None,
    }
}

/// Whether the error is PostgreSQL's "no partition of relation ... found for row".
/// Whether a statement named a table that does not exist (any more).
pub(crate) fn is_undefined_table(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01"))
}

pub(crate) fn is_missing_partition(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23514") && db.constraint().is_none()
            && db.message().contains("no partition"))
}

/// Whether PostgreSQL aborted the transaction to break a deadlock or a serialization conflict:
/// running it again is the remedy.
pub(crate) fn is_retryable_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// Maps any sqlx error. Constraint violations become the variant their constraint stands for;
/// everything else (I/O, pool timeouts, statement timeouts, a server going away) becomes
/// `Unavailable`, which callers may retry.
pub(crate) fn store_error(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && let Some(mapped) = db.constraint().and_then(constraint_error)
    {
        return mapped;
    }
    let message = match &e {
        sqlx::Error::Database(db) => {
            format!(
                "postgres error {}: {}",
                db.code().unwrap_or_default(),
                db.message()
            )
        }
        sqlx::Error::PoolTimedOut => "timed out waiting for a database connection".into(),
        sqlx::Error::PoolClosed => "the database pool is closed".into(),
        other => format!("database: {other}"),
    };
    StoreError::Unavailable { message }
}

/// A row that does not decode into domain types: the database holds something the domain
/// never wrote. Reported as `Unavailable` naming the table and column, never a panic.
pub(crate) fn corrupt(table: &str, column: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        message: format!("unreadable value in {table}.{column}: {detail}"),
    }
}
