-- release_orphans: give back the jobs a worker's lost claim replies left
-- running under it. A claim that committed while its reply was lost (the
-- worker's deadline fired, or the connection died after the server committed)
-- leaves rows 'running' under this worker with lease tokens it never saw: no
-- handler runs them, and the rescuer would count the attempt when their lease
-- expires. Each goes back to queued at once with the attempt given back (like
-- a graceful release; 'cancelled' when its cancel was requested) and a
-- 'ClaimLost' entry marked "counted": false in its history.
-- Safe only while worker ids are unique among live workers, and only between
-- claims: rows of a claim still in flight would look orphaned.
-- Parameters: $1 worker id, $2 every lease token the worker holds uuid[].
-- Result: (id, state) of the rows released, announced (skiplock.announce, 0009).
WITH changed AS (
    UPDATE skiplock.jobs j SET
        state = CASE WHEN j.cancel_requested THEN 'cancelled'
                     ELSE 'queued' END::skiplock.job_state,
        attempt = j.attempt - 1,
        run_at = CASE WHEN j.cancel_requested THEN j.run_at ELSE now() END,
        finished_at = CASE WHEN j.cancel_requested THEN now() END,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'type', 'ClaimLost',
            'message', 'worker ' || $1::text || ' claimed the job but never received the'
                       || ' claim''s reply: given back without counting the attempt',
            'traceback', NULL,
            'attempt', j.attempt,
            'worker', $1::text,
            'at', now(),
            'counted', false)),
        lease_token = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    WHERE j.state = 'running' AND j.worker_id = $1::text AND j.lease_token <> ALL($2::uuid[])
    RETURNING j.id, j.state, j.progress, j.queue
), announced AS (
    SELECT skiplock.announce(array_agg(ch.id), array_agg(ch.state), array_agg(ch.progress),
        array_agg(ch.queue) FILTER (WHERE ch.state = 'queued'))
    FROM changed ch
)
SELECT ch.id, ch.state::text AS state FROM changed ch, announced
