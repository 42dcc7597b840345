-- rescue_expired: jobs whose lease expired (their worker died, froze or lost
-- the database) go back to queued, or to failed when no attempt is left, or to
-- cancelled when their cancel was requested. Uses the database clock only.
-- Takes at most $1 rows, skipping locked ones, so several rescuers never block
-- each other, and leaves out the ids in $2: rows whose rescue the database
-- refused (a trigger, a constraint), which would fail every batch they are in.
-- Parameters: $1 limit, $2 ids to leave out uuid[].
-- Result: (id, state, attempt, worker_id) of rescued rows.
WITH expired AS (
    SELECT e.id
    FROM skiplock.jobs e
    WHERE e.state = 'running' AND e.lease_expires_at < now()
      AND e.id <> ALL($2::uuid[])
    ORDER BY e.lease_expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE skiplock.jobs j SET
    state = CASE WHEN j.cancel_requested THEN 'cancelled'
                 WHEN j.attempt >= j.max_attempts THEN 'failed'
                 ELSE 'queued' END::skiplock.job_state,
    finished_at = CASE WHEN j.cancel_requested OR j.attempt >= j.max_attempts THEN now() END,
    run_at = now(),
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'type', 'LeaseExpired',
        'message', 'the lease expired: worker ' || coalesce(j.worker_id, '?')
                   || ' stopped renewing it (crashed, frozen or cut off)',
        'traceback', NULL,
        'attempt', j.attempt,
        'worker', j.worker_id,
        'at', now())),
    lease_token = NULL,
    lease_expires_at = NULL,
    updated_at = now()
FROM expired
WHERE j.id = expired.id
RETURNING j.id, j.state::text AS state, j.attempt, j.worker_id
