-- retry_job: a failed or cancelled job goes back to queued, due now, with at
-- least one attempt left. A job that used all 1000 attempts a job may have
-- (jobs_attempts_check) cannot be given another: it is not retried.
-- Parameters: $1 id uuid, $2 tenant or NULL.
-- Result: the updated row, or none when the job is missing or not retryable.
-- The change is announced (skiplock.announce, 0009).
WITH changed AS (
    UPDATE skiplock.jobs j SET
        state = 'queued',
        run_at = now(),
        finished_at = NULL,
        max_attempts = greatest(j.max_attempts, least(j.attempt + 1, 1000)),
        cancel_requested = false,
        result = NULL,
        updated_at = now()
    WHERE j.id = $1::uuid
      AND ($2::text IS NULL OR j.tenant = $2::text)
      AND j.state IN ('failed', 'cancelled')
      AND j.attempt < 1000
    RETURNING j.*
), announced AS (
    SELECT skiplock.announce(array_agg(ch.id), array_agg(ch.state), array_agg(ch.progress),
        array_agg(ch.queue))
    FROM changed ch
)
SELECT ch.* FROM changed ch, announced
