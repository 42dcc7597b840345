-- limit_usage: the keys in use under each limit (view skiplock.limit_usage,
-- migration 0011), by pattern then key.
-- Parameters: $1 pattern or NULL (all), $2 true: only keys at their limit,
-- $3 most rows or NULL (all).
-- Result: pattern, key, max_running, running, max_starts, per_seconds, starts,
-- queued, at_limit.
SELECT u.pattern, u.key, u.max_running, u.running, u.max_starts, u.per_seconds, u.starts,
       u.queued, u.at_limit
FROM skiplock.limit_usage u
WHERE ($1::text IS NULL OR u.pattern = $1::text)
  AND (NOT $2::boolean OR u.at_limit)
ORDER BY u.pattern, u.key
LIMIT $3::bigint
