-- rescue_dead_workers: the running jobs of workers whose presence lock is gone
-- (checked again here, against the registration as it is now) go back to
-- queued at once, or to failed when no attempt is left, or to cancelled when
-- their cancel was requested, like rescue_expired, with a 'WorkerDied' entry
-- in their history (the attempt counts). Jobs whose lease token is in $2 are
-- left alone: a worker re-registering after losing its presence connection
-- keeps the jobs it still holds. Takes at most $3 rows, skipping locked ones.
-- Parameters: $1 worker ids text[], $2 lease tokens to keep uuid[], $3 limit.
-- Result: (id, state, attempt, worker_id) of rescued rows.
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
UPDATE skiplock.jobs j SET
    state = CASE WHEN j.cancel_requested THEN 'cancelled'
                 WHEN j.attempt >= j.max_attempts THEN 'failed'
                 ELSE 'queued' END::skiplock.job_state,
    finished_at = CASE WHEN j.cancel_requested OR j.attempt >= j.max_attempts THEN now() END,
    run_at = now(),
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'type', 'WorkerDied',
        'message', 'worker ' || coalesce(j.worker_id, '?')
                   || ' died: the database closed its connections (its presence lock is gone)',
        'traceback', NULL,
        'attempt', j.attempt,
        'worker', j.worker_id,
        'at', now())),
    lease_token = NULL,
    lease_expires_at = NULL,
    updated_at = now()
FROM orphaned
WHERE j.id = orphaned.id
RETURNING j.id, j.state::text AS state, j.attempt, j.worker_id
