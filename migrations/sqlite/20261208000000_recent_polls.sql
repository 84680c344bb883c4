-- The newest polls in slot order (issue 26), SQLite only. Keyed by (chamber, slot), every poll
-- of a fleet lands on its own chamber's newest leaf of `polls`: each write dirties one page per
-- chamber, written whole to the WAL at each commit and copied back to its own place in the
-- file at each checkpoint (with a few thousand chambers, thousands of random page writes a
-- second), and the writer keeps every chamber's leaf in its cache. New polls go to
-- `polls_recent` instead, keyed by (slot, chamber): a write appends to its last pages. The
-- store moves them into `polls` in chamber order every few seconds of slots, so each chamber's
-- leaf is written once per move rather than once per write. The columns and checks are those
-- of `polls` (SQLite cannot create a table like another with its constraints).
--
-- The two tables split each chamber's slots at its bucket's `polls_recent_since.since`:
-- `polls` holds the slots before it, `polls_recent` the slots from it on. A write puts each
-- poll in the table of its slot; a move copies a bucket's polls before a later boundary into
-- `polls`, deletes them from `polls_recent` and raises the boundary, in one transaction. So a
-- (chamber, slot) is in one table at most, and each query reads both (UNION ALL).

CREATE TABLE polls_recent (
    chamber_id      BLOB NOT NULL REFERENCES chambers (id) ON DELETE CASCADE,
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
    CONSTRAINT polls_recent_pkey PRIMARY KEY (slot, chamber_id),
    CONSTRAINT polls_recent_values_have_a_layout CHECK ((layout_version IS NULL) = (value IS NULL)),
    CONSTRAINT polls_recent_same_width CHECK (corruption IS NULL OR length(corruption) * 8 = length(value))
) STRICT, WITHOUT ROWID;
-- A chamber over a time range (and the foreign key's cascade): a small index, ~30 bytes a poll.
CREATE INDEX polls_recent_chamber_slot_idx ON polls_recent (chamber_id, slot);
CREATE INDEX polls_recent_batch_slot_idx ON polls_recent (batch_id, slot) WHERE batch_id IS NOT NULL;

-- The boundaries between the two tables, a slot in unix milliseconds for each of 16 buckets
-- of chambers (by the first four bits of the id: each bucket is moved on its own, so that a
-- move's work is spread over several writes). They start after the newest poll stored (0 on a
-- new database), so that no poll already in `polls` can be written again to `polls_recent`.
CREATE TABLE polls_recent_since (
    bucket  INTEGER PRIMARY KEY CHECK (bucket BETWEEN 0 AND 15),
    since   INTEGER NOT NULL
) STRICT;
WITH RECURSIVE buckets (bucket) AS (SELECT 0 UNION ALL SELECT bucket + 1 FROM buckets WHERE bucket < 15)
INSERT INTO polls_recent_since (bucket, since)
SELECT bucket, (SELECT coalesce(max(slot) + 1, 0) FROM polls) FROM buckets;
