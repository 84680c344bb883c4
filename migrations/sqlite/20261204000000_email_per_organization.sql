-- no-transaction
-- An e-mail address is unique within an organization, not across the installation: one person
-- may belong to several labs, and no organization learns which addresses exist in another.
--
-- SQLite cannot drop a table constraint, so the table is rebuilt (SQLite's documented
-- procedure: foreign keys off outside the transaction, so dropping the old table neither
-- cascades to api_tokens nor fails; all of it in one transaction; the keys checked before
-- commit).
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
CREATE TABLE users_rebuilt (
    id               BLOB NOT NULL PRIMARY KEY,
    organization_id  BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email            TEXT NOT NULL,
    display_name     TEXT NOT NULL,
    role             TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    password_hash    TEXT,
    disabled         INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at       INTEGER NOT NULL,
    CONSTRAINT users_organization_email_key UNIQUE (organization_id, email),
    CONSTRAINT users_org_id_key UNIQUE (organization_id, id)
) STRICT;
INSERT INTO users_rebuilt (id, organization_id, email, display_name, role, password_hash,
                           disabled, created_at)
    SELECT id, organization_id, email, display_name, role, password_hash, disabled, created_at
    FROM users;
DROP TABLE users;
ALTER TABLE users_rebuilt RENAME TO users;
-- Signing in looks an address up across organizations.
CREATE INDEX users_email_idx ON users (email);
COMMIT;
PRAGMA foreign_keys = ON;
