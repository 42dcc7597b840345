-- job_window_stats: per task, jobs finished in the last $2 seconds: counts by
-- outcome and p50/p95 of wait (run_at → started_at) and run (started_at →
-- finished_at) seconds.
-- Parameters: $1 tenant or NULL (all), $2 window seconds float8.
-- Result: rows (task, succeeded, failed, cancelled, wait_p50, wait_p95,
--   run_p50, run_p95).
SELECT
    j.task,
    count(*) FILTER (WHERE j.state = 'succeeded') AS succeeded,
    count(*) FILTER (WHERE j.state = 'failed') AS failed,
    count(*) FILTER (WHERE j.state = 'cancelled') AS cancelled,
    percentile_cont(0.5) WITHIN GROUP (
        ORDER BY extract(epoch FROM j.started_at - j.run_at)) AS wait_p50,
    percentile_cont(0.95) WITHIN GROUP (
        ORDER BY extract(epoch FROM j.started_at - j.run_at)) AS wait_p95,
    percentile_cont(0.5) WITHIN GROUP (
        ORDER BY extract(epoch FROM j.finished_at - j.started_at)) AS run_p50,
    percentile_cont(0.95) WITHIN GROUP (
        ORDER BY extract(epoch FROM j.finished_at - j.started_at)) AS run_p95
FROM skiplock.jobs j
WHERE j.finished_at IS NOT NULL
  AND j.finished_at > now() - make_interval(secs => $2::float8)
  AND ($1::text IS NULL OR j.tenant = $1::text)
GROUP BY j.task
ORDER BY j.task
