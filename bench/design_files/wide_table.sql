-- The wide table of designs v2–v8: skiplock's own job columns, taken from the
-- migrated skiplock.jobs (names, types, NOT NULLs and defaults; no CHECK
-- constraints, indexes or triggers: each design adds its own), with its primary key.
CREATE TABLE jobs (LIKE skiplock.jobs INCLUDING DEFAULTS);
ALTER TABLE jobs ADD PRIMARY KEY (id);
