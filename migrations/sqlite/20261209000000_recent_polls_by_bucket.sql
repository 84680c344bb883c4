-- `polls_recent` keyed by (bucket, slot, chamber), without its chamber index (issue 26),
-- SQLite only. Keyed by (slot, chamber), a write appended its rows to the last pages, but:
--   - its index on (chamber, slot) took each poll at its chamber's place: a write of 250 polls
--     dirtied ~220 of the index's leaves, each written whole to the WAL at the commit;
--   - a move deleted one bucket's rows (a sixteenth of every page of its slots), dirtying every
--     page of 20 s of polls.
-- Keyed by (bucket, slot, chamber), each bucket's rows are together in slot order: a write
-- appends at 16 places, and a move deletes a run of whole pages (freed, not written). A query of
-- one chamber reads its bucket's recent rows (a sixteenth of the table, at most ~25 s of slots)
-- along the key instead of an index. The bucket is the chamber id's first four bits, as in
-- `polls_recent_since`.
--
-- Without the index, a foreign key's cascade would scan the whole table for each chamber
-- deleted: the trigger below deletes a chamber's recent polls along the key instead. A write
-- checks that each of its chambers exists (its current layout) in its own transaction, the
-- only writer; `polls`, where the rows move, keeps its foreign key. The columns and checks
-- are those of `polls` (SQLite cannot create a table like another with its constraints).

CREATE TABLE polls_recent_by_bucket (
    bucket          INTEGER NOT NULL CHECK (bucket BETWEEN 0 AND 15),
    chamber_id      BLOB NOT NULL,
    slot            INTEGER NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('ok', 'corrupted_values', 'timeout',
                                                     'connection_failed', 'blocked', 'http_status',
                                                     'too_large', 'malformed', 'missed', 'expired',
                                                     'cancelled')),
    detail          TEXT NOT NULL CHECK (json_valid(detail)),
    attempt         INTEGER NOT NULL CHECK (attempt >= 0),
    requested_at    INTEGER,
    recorded_at     INTEGER NOT NULL,
    latency_ms      INTEGER CHECK (latency_ms >= 0),
    lateness_ms     INTEGER NOT NULL CHECK (lateness_ms >= 0),
    layout_version  INTEGER,
    batch_id        BLOB,
    value           BLOB,
    corruption      BLOB,
    CONSTRAINT polls_recent_pkey PRIMARY KEY (bucket, slot, chamber_id),
    CONSTRAINT polls_recent_values_have_a_layout CHECK ((layout_version IS NULL) = (value IS NULL)),
    CONSTRAINT polls_recent_same_width CHECK (corruption IS NULL OR length(corruption) * 8 = length(value))
) STRICT, WITHOUT ROWID;

INSERT INTO polls_recent_by_bucket (bucket, chamber_id, slot, outcome, detail, attempt,
    requested_at, recorded_at, latency_ms, lateness_ms, layout_version, batch_id, value, corruption)
SELECT instr('0123456789ABCDEF', substr(hex(chamber_id), 1, 1)) - 1, chamber_id, slot, outcome,
    detail, attempt, requested_at, recorded_at, latency_ms, lateness_ms, layout_version, batch_id,
    value, corruption
FROM polls_recent;

DROP TABLE polls_recent;
ALTER TABLE polls_recent_by_bucket RENAME TO polls_recent;
CREATE INDEX polls_recent_batch_slot_idx ON polls_recent (batch_id, slot) WHERE batch_id IS NOT NULL;

-- Also on a chamber deleted by its organization's cascade (SQLite fires triggers on cascades).
CREATE TRIGGER polls_recent_of_a_deleted_chamber AFTER DELETE ON chambers
BEGIN
    DELETE FROM polls_recent
    WHERE bucket = instr('0123456789ABCDEF', substr(hex(OLD.id), 1, 1)) - 1
      AND chamber_id = OLD.id;
END;
