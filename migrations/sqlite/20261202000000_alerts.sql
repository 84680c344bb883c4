-- Alert rules and their alerts (history kept until the rule goes), transmitters and the dead
-- letters of deliveries given up. Same tables as migrations/postgres; JSON is TEXT under
-- json_valid().

CREATE TABLE alert_rules (
    id               BLOB NOT NULL PRIMARY KEY,
    organization_id  BLOB NOT NULL,
    chamber_id       BLOB NOT NULL,
    name             TEXT NOT NULL,
    condition        TEXT NOT NULL CHECK (json_valid(condition)),
    created_at       INTEGER NOT NULL,
    CONSTRAINT alert_rules_name_key UNIQUE (chamber_id, name),
    CONSTRAINT alert_rules_org_id_key UNIQUE (organization_id, id),
    CONSTRAINT alert_rules_chamber_fkey FOREIGN KEY (organization_id, chamber_id)
        REFERENCES chambers (organization_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX alert_rules_chamber_idx ON alert_rules (organization_id, chamber_id, id);

CREATE TABLE alerts (
    id               BLOB NOT NULL PRIMARY KEY,
    organization_id  BLOB NOT NULL,
    rule_id          BLOB NOT NULL,
    chamber_id       BLOB NOT NULL,
    rule_name        TEXT NOT NULL,
    since            INTEGER NOT NULL,
    opened_at        INTEGER NOT NULL,
    resolved_at      INTEGER,
    detail           TEXT NOT NULL,
    acknowledged_by  BLOB,
    acknowledged_at  INTEGER,
    ack_comment      TEXT,
    CONSTRAINT alerts_ack_complete CHECK ((acknowledged_by IS NULL) = (acknowledged_at IS NULL)),
    CONSTRAINT alerts_rule_fkey FOREIGN KEY (organization_id, rule_id)
        REFERENCES alert_rules (organization_id, id) ON DELETE CASCADE
) STRICT;
-- A rule has at most one open alert.
CREATE UNIQUE INDEX alerts_one_open_per_rule ON alerts (rule_id) WHERE resolved_at IS NULL;
CREATE INDEX alerts_org_idx ON alerts (organization_id, id);
-- Also the child index of alerts_rule_fkey (deleting a rule).
CREATE INDEX alerts_rule_idx ON alerts (organization_id, rule_id);

CREATE TABLE transmitters (
    id                BLOB NOT NULL PRIMARY KEY,
    organization_id   BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name              TEXT NOT NULL,
    destination       TEXT NOT NULL CHECK (json_valid(destination)),
    forward_readings  INTEGER NOT NULL CHECK (forward_readings IN (0, 1)),
    forward_alerts    INTEGER NOT NULL CHECK (forward_alerts IN (0, 1)),
    created_at        INTEGER NOT NULL,
    CONSTRAINT transmitters_name_key UNIQUE (organization_id, name),
    CONSTRAINT transmitters_org_id_key UNIQUE (organization_id, id)
) STRICT;

CREATE TABLE dead_letters (
    id               BLOB NOT NULL PRIMARY KEY,
    organization_id  BLOB NOT NULL,
    transmitter_id   BLOB NOT NULL,
    delivery         TEXT NOT NULL CHECK (json_valid(delivery)),
    attempts         INTEGER NOT NULL CHECK (attempts > 0),
    last_error       TEXT NOT NULL,
    at               INTEGER NOT NULL,
    CONSTRAINT dead_letters_transmitter_fkey FOREIGN KEY (organization_id, transmitter_id)
        REFERENCES transmitters (organization_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX dead_letters_org_idx ON dead_letters (organization_id, transmitter_id, id);
