-- One row per poll (issue 25): a poll's ledger entry and its values in one row keyed by
-- (chamber, slot), instead of one ledger row plus one row per detector. At 10,000 chambers the
-- readings key kept ~80,000 hot B-tree leaves against 128 MB of shared buffers; this layout
-- keeps one per chamber, one heap tuple and one index entry per poll.
--
-- A poll's values are arrays: position i holds the value of the detector at position i of the
-- chamber's detector layout of the version the row names. A layout is written once and never
-- changed; adding a detector appends it in a new version, removing one leaves a NULL at its
-- position in a new version (compacted once holes outnumber the live detectors), so no old
-- value ever shifts to another detector.

ALTER TABLE chambers ADD COLUMN layout_version integer NOT NULL DEFAULT 1
    CONSTRAINT chambers_layout_version_positive CHECK (layout_version > 0);

CREATE TABLE detector_layouts (
    chamber_id  uuid NOT NULL REFERENCES chambers (id) ON DELETE CASCADE,
    version     integer NOT NULL CHECK (version > 0),
    -- detectors[i] is the detector of values[i]; NULL where a removed detector was.
    detectors   uuid[] NOT NULL,
    created_at  timestamptz NOT NULL,
    CONSTRAINT detector_layouts_pkey PRIMARY KEY (chamber_id, version)
);
INSERT INTO detector_layouts (chamber_id, version, detectors, created_at)
SELECT c.id, 1, coalesce(array_agg(d.id ORDER BY d.id) FILTER (WHERE d.id IS NOT NULL), '{}'), now()
FROM chambers c LEFT JOIN detectors d ON d.chamber_id = c.id
GROUP BY c.id;

-- The previous layout stays, renamed, until `chamberlain migrate` has moved its rows (in
-- resumable chunks) and dropped it. Its partitions keep their names (readings_p…,
-- poll_ledger_p…). Its latest values (a cache of rows also in `readings`) are rebuilt as the
-- conversion writes each chamber's polls again.
ALTER TABLE readings RENAME TO legacy_readings;
ALTER TABLE poll_ledger RENAME TO legacy_poll_ledger;
DROP TABLE chamber_latest;

CREATE TABLE polls (
    chamber_id      uuid NOT NULL,
    slot            timestamptz NOT NULL,
    outcome         text NOT NULL,
    detail          jsonb NOT NULL,
    attempt         integer NOT NULL,
    -- Also each reading's requested_at and received_at (recorded_at) and batch.
    requested_at    timestamptz,
    recorded_at     timestamptz NOT NULL,
    latency_ms      bigint,
    lateness_ms     bigint NOT NULL,
    -- NULL, with value and corruption, for a poll without readings (failed, missed, expired…).
    layout_version  integer,
    batch_id        uuid,
    -- Per layout position: the measured value, else NULL (corrupted, or absent from the poll).
    value           double precision[],
    -- Per layout position: the reason code of a corrupted value (see the adapter), else NULL;
    -- the whole array NULL when nothing is corrupted.
    corruption      smallint[],
    CONSTRAINT polls_pkey PRIMARY KEY (chamber_id, slot),
    CONSTRAINT polls_values_have_a_layout CHECK ((layout_version IS NULL) = (value IS NULL)),
    CONSTRAINT polls_same_width CHECK (corruption IS NULL OR cardinality(corruption) = cardinality(value))
) PARTITION BY RANGE (slot);
-- As before, the primary key is the only index: "a chamber over a range" and "a detector over
-- a range" are one range scan of the key each; "the latest slot of each chamber" is
-- chamber_latest below.

-- The newest poll with readings of each chamber, kept current by every write (only moved
-- forward): one index lookup per chamber instead of a probe into every partition.
CREATE TABLE chamber_latest (
    chamber_id      uuid NOT NULL,
    slot            timestamptz NOT NULL,
    layout_version  integer NOT NULL,
    requested_at    timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    batch_id        uuid,
    value           double precision[] NOT NULL,
    corruption      smallint[],
    CONSTRAINT chamber_latest_pkey PRIMARY KEY (chamber_id)
);

-- A database with nothing in the old layout (a new installation) has nothing to convert.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM legacy_poll_ledger) AND NOT EXISTS (SELECT 1 FROM legacy_readings) THEN
        DROP TABLE legacy_readings, legacy_poll_ledger;
    END IF;
END $$;
