-- resolve_unique: a unique job's enqueue found its key held (its insert was
-- skipped): apply on_duplicate to the queued or running job holding
-- (tenant, unique_key), locked first, and return it.
-- Parameters: $1 tenant text, $2 unique_key text, $3 on_duplicate text
--   ('keep', 'replace' or 'extend'), $4 args jsonb, $5 meta jsonb, $6 priority int,
--   $7 run_at timestamptz (NULL: now() + delay), $8 delay seconds float8 (NULL: 0),
--   $9 max_attempts int: the new request's.
-- 'keep' changes nothing. 'replace' gives a queued holder the new args, meta,
-- priority, run_at and max_attempts; 'extend' only the new run_at. A running
-- holder is returned unchanged. A changed job's queue is announced (its run_at
-- may now be due).
-- Result: the holder's row (`stalled` as in get_job, duplicate true), none when
-- no queued or running job holds the key any more (the caller inserts again).
WITH holder AS (
    SELECT j.*
    FROM skiplock.jobs j
    WHERE j.tenant = $1::text AND j.unique_key = $2::text AND j.state IN ('queued', 'running')
    FOR UPDATE
), changed AS (
    UPDATE skiplock.jobs j SET
        args = CASE WHEN $3::text = 'replace' THEN $4::jsonb ELSE j.args END,
        meta = CASE WHEN $3::text = 'replace' THEN $5::jsonb ELSE j.meta END,
        priority = CASE WHEN $3::text = 'replace' THEN $6::int ELSE j.priority END,
        max_attempts = CASE WHEN $3::text = 'replace' THEN $9::int ELSE j.max_attempts END,
        run_at = CASE
            WHEN $7::timestamptz IS NOT NULL THEN $7::timestamptz
            WHEN $8::float8 IS NOT NULL THEN now() + make_interval(secs => $8::float8)
            ELSE now()
        END,
        updated_at = now()
    FROM holder h
    WHERE j.id = h.id AND h.state = 'queued' AND $3::text <> 'keep'
    RETURNING j.*
), announced AS (
    SELECT skiplock.announce(NULL, NULL, NULL, array_agg(c.queue)) FROM changed c
)
SELECT c.*, false AS stalled, true AS duplicate FROM changed c, announced
UNION ALL
SELECT h.*, (h.state = 'running' AND h.lease_expires_at < now()) AS stalled, true AS duplicate
FROM holder h
WHERE NOT EXISTS (SELECT 1 FROM changed)
