-- list_limits: every limit, by pattern.
-- Parameters: none. Result: pattern, max_running, max_starts, per_seconds, updated_at.
SELECT l.pattern, l.max_running, l.max_starts, l.per_seconds, l.updated_at
FROM skiplock.limits l
ORDER BY l.pattern
