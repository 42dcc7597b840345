-- 0011_flow_views: what flow control is doing, for operators (read-only views).
--
-- limit_usage: one row per (limit pattern, key in use). The keys in use are the
-- keys of due queued jobs, of running jobs, and the keys with starts in a rate
-- window, that a limit matches. Queued rows are read through jobs_claim_idx
-- (partial: queued rows), running rows through jobs_lease_idx or
-- jobs_limit_keys_idx (both partial: running rows), starts through limit_starts_at_idx (the widest window) and, per key,
-- limit_starts_key_idx: the cost follows the active rows and the window, never
-- the finished rows. No new index: no write cost.
--
-- queue_flow: per queue, its switches and how many of its due jobs wait on a
-- key at its limit.

CREATE VIEW skiplock.limit_usage AS
WITH queued AS (
    SELECT k AS key, count(*) AS n
    FROM skiplock.jobs j
    CROSS JOIN LATERAL unnest(j.limit_keys) AS k
    WHERE j.state = 'queued' AND j.limit_keys IS NOT NULL AND j.run_at <= now()
    GROUP BY k
), running AS (
    SELECT k AS key, count(*) AS n
    FROM skiplock.jobs j
    CROSS JOIN LATERAL unnest(j.limit_keys) AS k
    WHERE j.state = 'running' AND j.limit_keys IS NOT NULL
    GROUP BY k
), started AS (
    SELECT DISTINCT s.key
    FROM skiplock.limit_starts s
    WHERE s.started_at > now() - make_interval(
        secs => (SELECT max(l.per_seconds) FROM skiplock.limits l))
), used AS (
    SELECT queued.key FROM queued
    UNION
    SELECT running.key FROM running
    UNION
    SELECT started.key FROM started
)
SELECT
    l.pattern,
    u.key,
    l.max_running,
    coalesce(r.n, 0)::bigint AS running,
    l.max_starts,
    l.per_seconds,
    st.starts,
    coalesce(q.n, 0)::bigint AS queued,
    (l.max_running IS NOT NULL AND coalesce(r.n, 0) >= l.max_running)
        OR (l.max_starts IS NOT NULL AND st.starts >= l.max_starts) AS at_limit
FROM used u
JOIN skiplock.limits l ON l.pattern = u.key OR (l.wildcard AND u.key LIKE l.like_pattern)
LEFT JOIN running r ON r.key = u.key
LEFT JOIN queued q ON q.key = u.key
CROSS JOIN LATERAL (
    SELECT CASE WHEN l.max_starts IS NOT NULL THEN (
        SELECT count(*) FROM skiplock.limit_starts s
        WHERE s.key = u.key AND s.started_at > now() - make_interval(secs => l.per_seconds))
    END AS starts
) st;

COMMENT ON VIEW skiplock.limit_usage IS
    'One row per (limit pattern, key in use: a key of a due queued job, of a running job, or '
    'with starts in the rate window, that the pattern matches): the limit, running = jobs '
    'running with the key, starts = starts in the current window (NULL without a rate limit), '
    'queued = due queued jobs carrying the key, at_limit = no room left (its queued jobs wait).';

CREATE VIEW skiplock.queue_flow AS
WITH blocked AS (
    SELECT coalesce(array_agg(DISTINCT u.key), '{}') AS keys
    FROM skiplock.limit_usage u
    WHERE u.at_limit
), counts AS (
    SELECT c.queue, sum(c.queued)::bigint AS queued, sum(c.running)::bigint AS running,
           sum(c.throttled)::bigint AS throttled
    FROM (
        SELECT j.queue, count(*) AS queued, 0 AS running,
               count(*) FILTER (
                   WHERE j.limit_keys IS NOT NULL
                     AND j.limit_keys && (SELECT b.keys FROM blocked b)) AS throttled
        FROM skiplock.jobs j
        WHERE j.state = 'queued' AND j.run_at <= now()
        GROUP BY j.queue
        UNION ALL
        SELECT j.queue, 0, count(*), 0
        FROM skiplock.jobs j
        WHERE j.state = 'running'
        GROUP BY j.queue
    ) c
    GROUP BY c.queue
)
SELECT
    coalesce(c.queue, s.name) AS queue,
    coalesce(s.paused, false) AS paused,
    coalesce(s.fair, false) AS fair,
    coalesce(c.queued, 0)::bigint AS queued,
    coalesce(c.running, 0)::bigint AS running,
    coalesce(c.throttled, 0)::bigint AS throttled
FROM counts c
FULL JOIN skiplock.queues s ON s.name = c.queue;

COMMENT ON VIEW skiplock.queue_flow IS
    'Per queue with jobs or switches: paused, fair, queued = due queued jobs, running, '
    'throttled = due queued jobs carrying a key at its limit (see limit_usage).';
