-- rescue_dead_workers: the running jobs of workers whose presence lock is gone
-- (checked again here, against the registration as it is now) go back to
-- queued at once, or to failed when no attempt is left, or to cancelled when
-- their cancel was requested, like rescue_expired (skiplock.rescue, 0009), with
-- a 'WorkerDied' entry in their history (the attempt counts). Jobs whose lease
-- token is in $2 are left alone: a worker re-registering after losing its
-- presence connection keeps the jobs it still holds. Takes at most $3 rows,
-- skipping locked ones.
-- Parameters: $1 worker ids text[], $2 lease tokens to keep uuid[], $3 limit.
-- Result: (id, state, attempt, worker_id) of rescued rows, announced.
WITH dead AS (
    SELECT p.id FROM skiplock.worker_presence p WHERE p.id = ANY($1::text[]) AND p.dead
), orphaned AS (
    SELECT o.id
    FROM skiplock.jobs o
    WHERE o.state = 'running'
      AND o.worker_id IN (SELECT dead.id FROM dead)
      AND o.lease_token <> ALL($2::uuid[])
    ORDER BY o.id
    LIMIT $3
    FOR UPDATE OF o SKIP LOCKED
)
SELECT r.id, r.state, r.attempt, r.worker_id
FROM skiplock.rescue(
    ARRAY(SELECT orphaned.id FROM orphaned),
    'WorkerDied',
    'worker %s died: the database closed its connections (its presence lock is gone)'
) AS r
