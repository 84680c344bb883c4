-- An e-mail address is unique within an organization, not across the installation: one person
-- may belong to several labs, and no organization learns which addresses exist in another.
ALTER TABLE users DROP CONSTRAINT users_email_key;
ALTER TABLE users ADD CONSTRAINT users_organization_email_key UNIQUE (organization_id, email);
-- Signing in looks an address up across organizations.
CREATE INDEX users_email_idx ON users (email);
