-- expire_jobs: queued jobs past their expires_at (database clock) never start:
-- at most $1 of them end 'cancelled', with an 'Expired' entry appended to their
-- error history (they did not fail: no error is shown). Running jobs are left
-- alone (they started in time). Locks only the rows it takes, skipping locked
-- ones; call it again until it ends fewer than $1.
-- Parameters: $1 limit. Result: one row, the number expired (each announced:
-- skiplock.announce, 0009).
WITH due AS (
    SELECT e.id
    FROM skiplock.jobs e
    WHERE e.state = 'queued' AND e.expires_at IS NOT NULL AND e.expires_at < now()
    ORDER BY e.expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
),
expired AS (
    UPDATE skiplock.jobs j SET
        state = 'cancelled',
        finished_at = now(),
        eta = NULL,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'type', 'Expired',
            'message', 'the job expired at ' || j.expires_at || ' before it started',
            'traceback', NULL,
            'attempt', j.attempt,
            'worker', NULL,
            'at', now())),
        updated_at = now()
    FROM due
    WHERE j.id = due.id AND j.state = 'queued'
    RETURNING j.id, j.state, j.progress
), announced AS (
    SELECT skiplock.announce(array_agg(ch.id), array_agg(ch.state), array_agg(ch.progress))
    FROM expired ch
)
SELECT count(*) FROM expired, announced
