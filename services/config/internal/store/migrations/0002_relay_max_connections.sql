-- A relay's limit of SMTP connections over all sender replicas; 0 means
-- the sender's default.
ALTER TABLE relays ADD COLUMN max_connections INTEGER NOT NULL DEFAULT 0;
