-- One row per poll (issue 25), as on PostgreSQL: a poll's ledger entry and its values in one
-- row keyed by (chamber, slot), instead of one ledger row plus one row per detector. Per poll the
-- embedded mode writes one primary-key entry (and one in the batch index when a batch is open,
-- and each write moves its chambers' latest pointers) instead of a ledger row and, per
-- detector, a row in the readings key and two indexes.
--
-- A poll's values are positions in the chamber's detector layout of the version the row names:
-- `value` holds 8 bytes a position (a little-endian IEEE 754 double; NaN where the detector has
-- no value in this poll), `corruption` 1 byte a position (0 none, else
-- CorruptionReason::number()) or NULL when nothing is corrupted. A layout is written once and
-- never changed; adding a detector appends it in a new version, removing one leaves a null at
-- its position in a new version (compacted once holes outnumber the live detectors), so no old
-- value ever shifts to another detector.

ALTER TABLE chambers ADD COLUMN layout_version INTEGER NOT NULL DEFAULT 1
    CONSTRAINT chambers_layout_version_positive CHECK (layout_version > 0);

CREATE TABLE detector_layouts (
    chamber_id  BLOB NOT NULL REFERENCES chambers (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL CHECK (version > 0),
    -- A JSON array: the detector id (32 hex digits) of each position, null where a removed
    -- detector was.
    detectors   TEXT NOT NULL CHECK (json_valid(detectors)),
    created_at  INTEGER NOT NULL,
    CONSTRAINT detector_layouts_pkey PRIMARY KEY (chamber_id, version)
) STRICT, WITHOUT ROWID;
INSERT INTO detector_layouts (chamber_id, version, detectors, created_at)
SELECT c.id, 1,
       (SELECT json_group_array(lower(hex(d.id)) ORDER BY d.id) FROM detectors d WHERE d.chamber_id = c.id),
       CAST(unixepoch('subsec') * 1000 AS INTEGER)
FROM chambers c;

-- The previous layout stays, renamed, until `chamberlain migrate` (or the embedded mode, in
-- the background) has moved its rows in resumable chunks and dropped it; the store drops it at
-- once when it holds nothing (a new installation). Its indexes keep their names.
ALTER TABLE readings RENAME TO legacy_readings;
ALTER TABLE poll_ledger RENAME TO legacy_poll_ledger;

CREATE TABLE polls (
    chamber_id      BLOB NOT NULL REFERENCES chambers (id) ON DELETE CASCADE,
    slot            INTEGER NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('ok', 'corrupted_values', 'timeout',
                                                     'connection_failed', 'blocked', 'http_status',
                                                     'too_large', 'malformed', 'missed', 'expired',
                                                     'cancelled')),
    detail          TEXT NOT NULL CHECK (json_valid(detail)),
    attempt         INTEGER NOT NULL CHECK (attempt >= 0),
    -- Also each reading's requested_at and received_at (recorded_at) and batch.
    requested_at    INTEGER,
    recorded_at     INTEGER NOT NULL,
    latency_ms      INTEGER CHECK (latency_ms >= 0),
    lateness_ms     INTEGER NOT NULL CHECK (lateness_ms >= 0),
    -- NULL, with value and corruption, for a poll without readings (failed, missed, expired…).
    layout_version  INTEGER,
    batch_id        BLOB,
    value           BLOB,
    corruption      BLOB,
    CONSTRAINT polls_pkey PRIMARY KEY (chamber_id, slot),
    CONSTRAINT polls_values_have_a_layout CHECK ((layout_version IS NULL) = (value IS NULL)),
    CONSTRAINT polls_same_width CHECK (corruption IS NULL OR length(corruption) * 8 = length(value))
) STRICT, WITHOUT ROWID;
-- "One batch over a time range": (batch, slot) and, from the primary key, the chamber.
CREATE INDEX polls_batch_slot_idx ON polls (batch_id, slot) WHERE batch_id IS NOT NULL;

-- The newest slot with values of each chamber, moved forward by every write: "the latest of
-- each chamber" is one lookup here and one in polls, however long the chamber has been failing.
CREATE TABLE chamber_latest (
    chamber_id  BLOB NOT NULL PRIMARY KEY REFERENCES chambers (id) ON DELETE CASCADE,
    slot        INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
