-- rescue_expired: jobs whose lease expired (their worker died, froze or lost
-- the database) go back to queued, or to failed when no attempt is left, or to
-- cancelled when their cancel was requested (skiplock.rescue, 0009), with a
-- 'LeaseExpired' entry in their history. Uses the database clock only.
-- Takes at most $1 rows, skipping locked ones, so several rescuers never block
-- each other, and leaves out the ids in $2: rows whose rescue the database
-- refused (a trigger, a constraint), which would fail every batch they are in.
-- Parameters: $1 limit, $2 ids to leave out uuid[].
-- Result: (id, state, attempt, worker_id) of rescued rows, announced.
WITH expired AS (
    SELECT e.id
    FROM skiplock.jobs e
    WHERE e.state = 'running' AND e.lease_expires_at < now()
      AND e.id <> ALL($2::uuid[])
    ORDER BY e.lease_expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
SELECT r.id, r.state, r.attempt, r.worker_id
FROM skiplock.rescue(
    ARRAY(SELECT expired.id FROM expired),
    'LeaseExpired',
    'the lease expired: worker %s stopped renewing it (crashed, frozen or cut off)'
) AS r
