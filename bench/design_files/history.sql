-- v5/v6, the split: finished jobs move to a history table with the same columns,
-- which carries the indexes that only finished jobs need (tenant listing,
-- retention by finished_at); the hot table keeps queued and running jobs.
CREATE TABLE history (LIKE jobs INCLUDING DEFAULTS);
ALTER TABLE history ADD PRIMARY KEY (id);
CREATE INDEX history_tenant_created_idx ON history (tenant, created_at DESC, id DESC);
CREATE INDEX history_finished_idx ON history (finished_at);
