-- cancel_job: a queued job becomes cancelled at once; a running job gets its
-- cancel flag set (announced on <schema>.cancel: its worker stops the handler).
-- Parameters: $1 id uuid, $2 tenant or NULL.
-- Result: the updated row (with `stalled`, as get_job), or none when the job is
-- missing or already finished.
WITH changed AS (
    UPDATE skiplock.jobs j SET
        state = CASE WHEN j.state = 'queued' THEN 'cancelled'::skiplock.job_state ELSE j.state END,
        finished_at = CASE WHEN j.state = 'queued' THEN now() ELSE j.finished_at END,
        cancel_requested = true,
        updated_at = now()
    WHERE j.id = $1::uuid
      AND ($2::text IS NULL OR j.tenant = $2::text)
      AND j.state IN ('queued', 'running')
    RETURNING j.*, (j.state = 'running' AND j.lease_expires_at < now()) AS stalled
), announced AS (
    SELECT skiplock.announce(array_agg(ch.id), array_agg(ch.state), array_agg(ch.progress), NULL,
        array_agg(ch.id) FILTER (WHERE ch.state = 'running'))
    FROM changed ch
)
SELECT ch.* FROM changed ch, announced
