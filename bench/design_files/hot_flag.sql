-- v4, the HOT attempt: the claim index's predicate is a boolean that only the
-- claim changes, so the completion touches no indexed column (nor a predicate's)
-- and can be a HOT update; fillfactor 80 leaves room on each page for the new
-- row versions. No lease index (its predicate would be on state again).
ALTER TABLE jobs ADD COLUMN queued boolean NOT NULL DEFAULT true, SET (fillfactor = 80);
CREATE INDEX jobs_claim_idx ON jobs (queue, priority, run_at, id) WHERE queued;
