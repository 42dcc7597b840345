-- remove_limit: delete the limit of a key pattern; jobs keep their keys (a key
-- no limit matches is not counted). Workers are woken: waiting jobs may start.
-- Parameters: $1 pattern. Result: the pattern, when there was such a limit.
WITH removed AS (
    DELETE FROM skiplock.limits l WHERE l.pattern = $1::text RETURNING l.pattern
)
SELECT r.pattern FROM removed r, (SELECT pg_notify('skiplock.queue', '*')) AS woken
