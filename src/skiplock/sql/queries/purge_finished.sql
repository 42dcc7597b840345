-- purge_finished: retention: delete at most $1 finished jobs (succeeded,
-- failed or cancelled, never queued or running) that finished longer ago than
-- the age given for their state, or that finished before their expires_at and
-- it has passed (a job expired unstarted is kept like any cancelled one). Locks only
-- the rows it takes, skipping locked ones, so it never waits on workers or
-- holds many locks; call it again until it deletes fewer than $1.
-- Parameters: $1 limit, $2 succeeded age seconds float8, $3 failed age seconds
--   float8, $4 cancelled age seconds float8 (NULL: never by age for that state).
-- Result: one row, the number deleted.
WITH doomed AS (
    SELECT p.id
    FROM skiplock.jobs p
    WHERE p.finished_at IS NOT NULL
      AND p.state IN ('succeeded', 'failed', 'cancelled')
      AND (
           (p.state = 'succeeded'
            AND p.finished_at < now() - make_interval(secs => $2::float8))
        OR (p.state = 'failed'
            AND p.finished_at < now() - make_interval(secs => $3::float8))
        OR (p.state = 'cancelled'
            AND p.finished_at < now() - make_interval(secs => $4::float8))
        OR (p.expires_at < now() AND p.finished_at < p.expires_at)
      )
    LIMIT $1
    FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM skiplock.jobs j
    USING doomed
    WHERE j.id = doomed.id AND j.state IN ('succeeded', 'failed', 'cancelled')
    RETURNING j.id
)
SELECT count(*) FROM deleted
