-- job_counts: how many jobs a tenant has, by queue, task and state.
-- Parameters: $1 tenant or NULL (all). Result: rows (queue, task, state, count).
SELECT j.queue, j.task, j.state::text AS state, count(*) AS count
FROM skiplock.jobs j
WHERE $1::text IS NULL OR j.tenant = $1::text
GROUP BY j.queue, j.task, j.state
ORDER BY j.queue, j.task, j.state
