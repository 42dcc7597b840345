-- limit_usage_summary: per limit pattern (never per key: a pattern may match
-- many keys), what the metrics export. Read at scrape time from
-- skiplock.limit_usage; every limit has a row, a limit without keys in use zeros.
-- Parameters: none. Result: pattern, keys (in use), keys_at_limit, running, queued, throttled
-- (due queued jobs carrying one of its keys at its limit).
SELECT l.pattern,
       count(u.key) AS keys,
       count(u.key) FILTER (WHERE u.at_limit) AS keys_at_limit,
       coalesce(sum(u.running), 0)::bigint AS running,
       coalesce(sum(u.queued), 0)::bigint AS queued,
       coalesce(sum(u.queued) FILTER (WHERE u.at_limit), 0)::bigint AS throttled
FROM skiplock.limits l
LEFT JOIN skiplock.limit_usage u ON u.pattern = l.pattern
GROUP BY l.pattern
ORDER BY l.pattern
