-- Alert rules and their alerts (history kept until the rule goes), transmitters and the dead
-- letters of deliveries given up.

CREATE TABLE alert_rules (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL,
    chamber_id       uuid NOT NULL,
    name             text NOT NULL,
    condition        jsonb NOT NULL,
    created_at       timestamptz NOT NULL,
    CONSTRAINT alert_rules_name_key UNIQUE (chamber_id, name),
    CONSTRAINT alert_rules_org_id_key UNIQUE (organization_id, id),
    CONSTRAINT alert_rules_chamber_fkey FOREIGN KEY (organization_id, chamber_id)
        REFERENCES chambers (organization_id, id) ON DELETE CASCADE
);

CREATE TABLE alerts (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL,
    rule_id          uuid NOT NULL,
    chamber_id       uuid NOT NULL,
    rule_name        text NOT NULL,
    since            timestamptz NOT NULL,
    opened_at        timestamptz NOT NULL,
    resolved_at      timestamptz,
    detail           text NOT NULL,
    acknowledged_by  uuid,
    acknowledged_at  timestamptz,
    ack_comment      text,
    CONSTRAINT alerts_ack_complete CHECK ((acknowledged_by IS NULL) = (acknowledged_at IS NULL)),
    CONSTRAINT alerts_rule_fkey FOREIGN KEY (organization_id, rule_id)
        REFERENCES alert_rules (organization_id, id) ON DELETE CASCADE
);
-- A rule has at most one open alert.
CREATE UNIQUE INDEX alerts_one_open_per_rule ON alerts (rule_id) WHERE resolved_at IS NULL;
CREATE INDEX alerts_by_organization ON alerts (organization_id, id);
CREATE INDEX alerts_by_rule ON alerts (rule_id);

CREATE TABLE transmitters (
    id                uuid PRIMARY KEY,
    organization_id   uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name              text NOT NULL,
    destination       jsonb NOT NULL,
    forward_readings  boolean NOT NULL,
    forward_alerts    boolean NOT NULL,
    created_at        timestamptz NOT NULL,
    CONSTRAINT transmitters_name_key UNIQUE (organization_id, name),
    CONSTRAINT transmitters_org_id_key UNIQUE (organization_id, id)
);

CREATE TABLE dead_letters (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL,
    transmitter_id   uuid NOT NULL,
    delivery         jsonb NOT NULL,
    attempts         integer NOT NULL CHECK (attempts > 0),
    last_error       text NOT NULL,
    at               timestamptz NOT NULL,
    CONSTRAINT dead_letters_transmitter_fkey FOREIGN KEY (organization_id, transmitter_id)
        REFERENCES transmitters (organization_id, id) ON DELETE CASCADE
);
CREATE INDEX dead_letters_by_organization ON dead_letters (organization_id, id);
