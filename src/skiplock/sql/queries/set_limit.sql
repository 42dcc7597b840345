-- set_limit: create or change the limit of a key pattern (skiplock.limits,
-- migration 0010); the next claim anywhere applies it. Workers are woken
-- ('*' on <schema>.queue): a raised limit may let waiting jobs start.
-- Parameters: $1 pattern, $2 max_running int (NULL: none), $3 max_starts int
-- (NULL: none), $4 per_seconds float8 (with max_starts).
-- Result: the limit as stored, and the writing transaction's id (the caller
-- waits for older transactions before it gives queued jobs implicit keys).
WITH stored AS (
    INSERT INTO skiplock.limits AS l (pattern, max_running, max_starts, per_seconds)
    VALUES ($1::text, $2::integer, $3::integer, $4::float8)
    ON CONFLICT (pattern) DO UPDATE SET
        max_running = excluded.max_running,
        max_starts = excluded.max_starts,
        per_seconds = excluded.per_seconds,
        updated_at = now()
    RETURNING l.pattern, l.max_running, l.max_starts, l.per_seconds, l.updated_at
)
SELECT s.pattern, s.max_running, s.max_starts, s.per_seconds, s.updated_at,
       pg_current_xact_id()::text AS xid
FROM stored s, (SELECT pg_notify('skiplock.queue', '*')) AS woken
