-- apply_fair_keys: in fair queues (all of them, or $1), give the queued jobs
-- without a fair key their tenant as one, so the fair claim (which reads only
-- jobs_fair_idx) sees them: the jobs queued before the queue was made fair, or
-- enqueued by a transaction that had not seen the switch yet. Reads the queued
-- jobs of fair queues; at most $2 rows per call.
-- Parameters: $1 queue text (NULL: every fair queue), $2 limit.
-- Result: one row, the number of jobs given a fair key.
WITH due AS (
    SELECT j.id
    FROM skiplock.jobs j
    JOIN skiplock.queues s ON s.name = j.queue AND s.fair
    WHERE j.state = 'queued' AND j.fair_key IS NULL
      AND ($1::text IS NULL OR j.queue = $1::text)
    LIMIT $2
    FOR UPDATE OF j SKIP LOCKED
), given AS (
    UPDATE skiplock.jobs j SET fair_key = j.tenant
    FROM due WHERE j.id = due.id AND j.state = 'queued'
    RETURNING j.queue
), announced AS (
    SELECT skiplock.announce(NULL, NULL, NULL, array_agg(DISTINCT g.queue)) FROM given g
)
SELECT count(*)::integer AS given FROM given, announced
