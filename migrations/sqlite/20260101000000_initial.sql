-- Chamberlain schema, SQLite. Same tables and column names as migrations/postgres, so the two
-- stay easy to compare; the differences are SQLite's types and what SQLite does cheaply.
--
-- Types: ids are 16-byte BLOBs (sqlx's uuid encoding, so byte order is id order); instants are
-- INTEGER unix milliseconds, durations INTEGER milliseconds (`_ms`); enums are TEXT codes under
-- a CHECK; JSON is TEXT under json_valid(). Tables are STRICT: SQLite refuses a value of the
-- wrong type instead of storing it.
--
-- Tenancy: as in PostgreSQL, child rows reference their parent by (organization_id, id), so a
-- row can never point at another tenant's parent.
--
-- Readings and the poll ledger carry foreign keys here (PostgreSQL's partitions do not): a
-- foreign-key check in SQLite is one lookup in a small, cached index, and ON DELETE CASCADE
-- removes a chamber's or a detector's readings through the primary keys. A reading references
-- its detector by (chamber_id, detector_id), so a reading can never name a detector of another
-- chamber. The adapter still checks parents itself before writing: SQLite reports a unique
-- violation before a foreign-key one and does not say which foreign key failed, and the port's
-- error contract names the parent exactly.

CREATE TABLE organizations (
    id          BLOB NOT NULL PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    CONSTRAINT organizations_name_key UNIQUE (name)
) STRICT;

CREATE TABLE users (
    id               BLOB NOT NULL PRIMARY KEY,
    organization_id  BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email            TEXT NOT NULL,
    display_name     TEXT NOT NULL,
    role             TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    password_hash    TEXT,
    disabled         INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at       INTEGER NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email),
    CONSTRAINT users_org_id_key UNIQUE (organization_id, id)
) STRICT;

CREATE TABLE api_tokens (
    id               BLOB NOT NULL PRIMARY KEY,
    organization_id  BLOB NOT NULL,
    user_id          BLOB NOT NULL,
    name             TEXT NOT NULL,
    token_hash       BLOB NOT NULL CHECK (length(token_hash) = 32),
    role_cap         TEXT NOT NULL CHECK (role_cap IN ('admin', 'operator', 'viewer')),
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER,
    last_used_at     INTEGER,
    revoked_at       INTEGER,
    CONSTRAINT api_tokens_hash_key UNIQUE (token_hash),
    CONSTRAINT api_tokens_user_fkey FOREIGN KEY (organization_id, user_id)
        REFERENCES users (organization_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX api_tokens_org_idx ON api_tokens (organization_id, id);
-- A user's tokens in id order; also the child index of api_tokens_user_fkey (deleting a user).
CREATE INDEX api_tokens_user_idx ON api_tokens (organization_id, user_id, id);

CREATE TABLE sections (
    id               BLOB NOT NULL PRIMARY KEY,
    organization_id  BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    description      TEXT NOT NULL DEFAULT '',
    created_at       INTEGER NOT NULL,
    CONSTRAINT sections_name_key UNIQUE (organization_id, name),
    CONSTRAINT sections_org_id_key UNIQUE (organization_id, id)
) STRICT;

CREATE TABLE chambers (
    id               BLOB NOT NULL PRIMARY KEY,
    organization_id  BLOB NOT NULL,
    section_id       BLOB NOT NULL,
    name             TEXT NOT NULL,
    endpoint         TEXT NOT NULL,
    format           TEXT NOT NULL CHECK (format IN ('json', 'prometheus')),
    interval_ms      INTEGER NOT NULL CHECK (interval_ms > 0),
    timeout_ms       INTEGER NOT NULL CHECK (timeout_ms > 0 AND timeout_ms <= interval_ms),
    state            TEXT NOT NULL CHECK (state IN ('active', 'paused')),
    health_policy    TEXT NOT NULL CHECK (json_valid(health_policy)),
    schedule_since   INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    -- Also the child index of chambers_section_fkey (section_id leads it).
    CONSTRAINT chambers_name_key UNIQUE (section_id, name),
    -- Also a tenant's chambers in id order (PostgreSQL's chambers_org_idx).
    CONSTRAINT chambers_org_id_key UNIQUE (organization_id, id),
    CONSTRAINT chambers_section_fkey FOREIGN KEY (organization_id, section_id)
        REFERENCES sections (organization_id, id)
) STRICT;
CREATE INDEX chambers_active_idx ON chambers (id) WHERE state = 'active';

CREATE TABLE detectors (
    id               BLOB NOT NULL PRIMARY KEY,
    organization_id  BLOB NOT NULL,
    chamber_id       BLOB NOT NULL,
    name             TEXT NOT NULL,
    alias            TEXT,
    unit             TEXT NOT NULL DEFAULT '',
    key_kind         TEXT NOT NULL CHECK (key_kind IN ('json_pointer', 'metric')),
    key              TEXT NOT NULL,
    range_min        REAL,
    range_max        REAL,
    -- Also the child index of detectors_chamber_fkey (deleting a chamber).
    CONSTRAINT detectors_name_key UNIQUE (chamber_id, name),
    -- A chamber's detectors in id order (PostgreSQL's detectors_chamber_idx), and the parent
    -- key of readings_detector_fkey.
    CONSTRAINT detectors_chamber_id_key UNIQUE (chamber_id, id),
    CONSTRAINT detectors_chamber_fkey FOREIGN KEY (organization_id, chamber_id)
        REFERENCES chambers (organization_id, id) ON DELETE CASCADE
) STRICT;

CREATE TABLE batches (
    id               BLOB NOT NULL PRIMARY KEY,
    organization_id  BLOB NOT NULL,
    section_id       BLOB NOT NULL,
    name             TEXT NOT NULL,
    description      TEXT NOT NULL DEFAULT '',
    started_at       INTEGER NOT NULL,
    ended_at         INTEGER CONSTRAINT batches_ended_after_start CHECK (ended_at >= started_at),
    CONSTRAINT batches_section_fkey FOREIGN KEY (organization_id, section_id)
        REFERENCES sections (organization_id, id)
) STRICT;
CREATE UNIQUE INDEX batches_one_open_per_section ON batches (section_id) WHERE ended_at IS NULL;
CREATE INDEX batches_section_idx ON batches (section_id, started_at);
CREATE INDEX batches_org_idx ON batches (organization_id, id);

CREATE TABLE chamber_health (
    chamber_id            BLOB NOT NULL PRIMARY KEY REFERENCES chambers (id) ON DELETE CASCADE,
    state                 TEXT NOT NULL CHECK (state IN ('unknown', 'up', 'degraded', 'down')),
    consecutive_failures  INTEGER NOT NULL CHECK (consecutive_failures >= 0),
    failing_since         INTEGER,
    last_slot             INTEGER,
    changed_at            INTEGER NOT NULL,
    version               INTEGER NOT NULL CHECK (version > 0)
) STRICT;

-- One row per (detector, slot): a measured value, or no value and the corruption code
-- (CorruptionReason::code()). WITHOUT ROWID: the rows live in the primary key's b-tree, which
-- is "one detector over a time range".
CREATE TABLE readings (
    detector_id   BLOB NOT NULL,
    chamber_id    BLOB NOT NULL,
    slot          INTEGER NOT NULL,
    value         REAL,
    corruption    TEXT CHECK (corruption IN ('missing', 'unparsable', 'non_finite',
                                             'implausible', 'ambiguous', 'malformed_response')),
    requested_at  INTEGER NOT NULL,
    received_at   INTEGER NOT NULL,
    batch_id      BLOB,
    CONSTRAINT readings_value_or_reason CHECK ((value IS NULL) <> (corruption IS NULL)),
    CONSTRAINT readings_pkey PRIMARY KEY (detector_id, slot),
    CONSTRAINT readings_detector_fkey FOREIGN KEY (chamber_id, detector_id)
        REFERENCES detectors (chamber_id, id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;
-- "One chamber over a time range" in (slot, detector) order, and "the latest slot of a
-- chamber" (max(slot) for one chamber_id is a single seek at the end of its range).
CREATE INDEX readings_chamber_slot_idx ON readings (chamber_id, slot, detector_id);
-- "One batch over a time range" in (slot, detector) order.
CREATE INDEX readings_batch_slot_idx ON readings (batch_id, slot, detector_id)
    WHERE batch_id IS NOT NULL;

-- One entry per poll: the outcome's code, and the whole PollOutcome as JSON (serde) in detail.
CREATE TABLE poll_ledger (
    chamber_id    BLOB NOT NULL REFERENCES chambers (id) ON DELETE CASCADE,
    slot          INTEGER NOT NULL,
    outcome       TEXT NOT NULL CHECK (outcome IN ('ok', 'corrupted_values', 'timeout',
                                                   'connection_failed', 'blocked', 'http_status',
                                                   'too_large', 'malformed', 'missed', 'expired',
                                                   'cancelled')),
    detail        TEXT NOT NULL CHECK (json_valid(detail)),
    attempt       INTEGER NOT NULL CHECK (attempt >= 0),
    requested_at  INTEGER,
    recorded_at   INTEGER NOT NULL,
    latency_ms    INTEGER CHECK (latency_ms >= 0),
    lateness_ms   INTEGER NOT NULL CHECK (lateness_ms >= 0),
    CONSTRAINT poll_ledger_pkey PRIMARY KEY (chamber_id, slot)
) STRICT, WITHOUT ROWID;
