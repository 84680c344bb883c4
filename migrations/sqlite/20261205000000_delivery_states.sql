-- How each transmitter's deliveries are going, as its forwarder last wrote it down: one row per
-- transmitter, replaced on each write, gone with its transmitter.
CREATE TABLE transmitter_delivery_states (
    transmitter_id     BLOB NOT NULL PRIMARY KEY,
    organization_id    BLOB NOT NULL,
    last_delivered_at  INTEGER,
    failing_since      INTEGER,
    last_error         TEXT,
    updated_at         INTEGER NOT NULL,
    CONSTRAINT delivery_states_transmitter_fkey FOREIGN KEY (organization_id, transmitter_id)
        REFERENCES transmitters (organization_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX delivery_states_org_idx ON transmitter_delivery_states (organization_id, transmitter_id);
