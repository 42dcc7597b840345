-- v9, a queue table beside the jobs: a job is queued iff it has a row in the
-- narrow `queue` table, whose index is the only claim index. `jobs` keeps
-- every column with indexes only on columns that neither the claim nor the
-- completion changes (its key; the tenant listing, added by the runner), so
-- both UPDATEs of `jobs` can be HOT, given room on the page: fillfactor 50
-- (at 70–85 too few new versions found room: claims update ~100 neighbouring
-- rows, a page holds ~40). The lease columns stay in `jobs`, unindexed (an
-- expired-lease rescue would need another way to find them).
ALTER TABLE jobs SET (fillfactor = 50);
CREATE TABLE queue (
    id uuid PRIMARY KEY,
    queue text NOT NULL,
    priority smallint NOT NULL,
    run_at timestamptz NOT NULL
);
CREATE INDEX queue_claim_idx ON queue (queue, priority, run_at, id);
