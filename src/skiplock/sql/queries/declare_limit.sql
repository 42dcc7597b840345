-- declare_limit: a limit declared in code (TaskRegistry.task(max_running=...)),
-- written only when the pattern has no limit yet: a change made since at run
-- time (CLI, Client.set_limit) is kept across worker restarts.
-- Parameters: as set_limit. Result: the limit and the writing transaction's id
-- when it was written; no row when the pattern already had one.
WITH stored AS (
    INSERT INTO skiplock.limits AS l (pattern, max_running, max_starts, per_seconds)
    VALUES ($1::text, $2::integer, $3::integer, $4::float8)
    ON CONFLICT (pattern) DO NOTHING
    RETURNING l.pattern, l.max_running, l.max_starts, l.per_seconds, l.updated_at
)
SELECT s.pattern, s.max_running, s.max_starts, s.per_seconds, s.updated_at,
       pg_current_xact_id()::text AS xid
FROM stored s, (SELECT pg_notify('skiplock.queue', '*')) AS woken
