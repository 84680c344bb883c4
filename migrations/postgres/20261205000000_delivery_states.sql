-- How each transmitter's deliveries are going, as its forwarder last wrote it down: one row per
-- transmitter, replaced on each write, gone with its transmitter.
CREATE TABLE transmitter_delivery_states (
    transmitter_id     uuid PRIMARY KEY,
    organization_id    uuid NOT NULL,
    last_delivered_at  timestamptz,
    failing_since      timestamptz,
    last_error         text,
    updated_at         timestamptz NOT NULL,
    CONSTRAINT delivery_states_transmitter_fkey FOREIGN KEY (organization_id, transmitter_id)
        REFERENCES transmitters (organization_id, id) ON DELETE CASCADE
);
CREATE INDEX delivery_states_by_organization
    ON transmitter_delivery_states (organization_id, transmitter_id);
