-- 0004_view_plans: the monitoring views read through the existing indexes,
-- however many finished rows the table holds.
--
-- queue_overview reads queued rows through jobs_claim_idx and running rows
-- through jobs_lease_idx (both partial) instead of filtering the whole table;
-- throughput_per_minute and task_stats name the terminal states, which
-- finished_at IS NOT NULL already implies, so that jobs_state_finished_idx
-- (state, finished_at) serves their time window. No new index: no write cost.
--
-- stuck_jobs compares a running job with its task's p95 run time over the
-- last 24 hours (was 7 days), read through jobs_state_finished_idx for the
-- tasks that have running jobs only, instead of sorting the whole table.

CREATE OR REPLACE VIEW skiplock.queue_overview AS
SELECT
    s.queue,
    sum(s.queued_due)::bigint AS queued_due,
    sum(s.scheduled)::bigint AS scheduled,
    sum(s.running)::bigint AS running,
    extract(epoch FROM now() - min(s.oldest_due))::float8 AS oldest_wait_seconds
FROM (
    SELECT
        j.queue,
        count(*) FILTER (WHERE j.run_at <= now()) AS queued_due,
        count(*) FILTER (WHERE j.run_at > now()) AS scheduled,
        0 AS running,
        min(j.run_at) FILTER (WHERE j.run_at <= now()) AS oldest_due
    FROM skiplock.jobs j
    WHERE j.state = 'queued'
    GROUP BY j.queue
    UNION ALL
    SELECT j.queue, 0, 0, count(*), NULL
    FROM skiplock.jobs j
    WHERE j.state = 'running'
    GROUP BY j.queue
) AS s
GROUP BY s.queue;

CREATE OR REPLACE VIEW skiplock.throughput_per_minute AS
SELECT
    date_trunc('minute', j.finished_at) AS minute,
    j.task,
    j.state::text AS outcome,
    count(*) AS jobs
FROM skiplock.jobs j
WHERE j.state IN ('succeeded', 'failed', 'cancelled')
  AND j.finished_at > now() - interval '24 hours'
GROUP BY 1, 2, 3;

CREATE OR REPLACE VIEW skiplock.task_stats AS
SELECT
    j.task,
    w.period,
    count(*) AS finished,
    count(*) FILTER (WHERE j.state = 'succeeded') AS succeeded,
    count(*) FILTER (WHERE j.state = 'failed') AS failed,
    count(*) FILTER (WHERE j.state = 'cancelled') AS cancelled,
    (count(*) FILTER (WHERE j.state = 'failed'))::float8 / count(*) AS failure_rate,
    percentile_cont(0.5) WITHIN GROUP (
        ORDER BY extract(epoch FROM j.started_at - j.run_at)::float8) AS wait_p50,
    percentile_cont(0.95) WITHIN GROUP (
        ORDER BY extract(epoch FROM j.started_at - j.run_at)::float8) AS wait_p95,
    percentile_cont(0.5) WITHIN GROUP (
        ORDER BY extract(epoch FROM j.finished_at - j.started_at)::float8) AS run_p50,
    percentile_cont(0.95) WITHIN GROUP (
        ORDER BY extract(epoch FROM j.finished_at - j.started_at)::float8) AS run_p95
FROM (VALUES ('1h', interval '1 hour'), ('24h', interval '24 hours'), ('7d', interval '7 days'))
    AS w (period, span)
JOIN skiplock.jobs j
    ON j.state IN ('succeeded', 'failed', 'cancelled') AND j.finished_at > now() - w.span
GROUP BY j.task, w.period;

CREATE OR REPLACE VIEW skiplock.stuck_jobs AS
WITH run_p95 AS (
    SELECT f.task,
           percentile_cont(0.95) WITHIN GROUP (
               ORDER BY extract(epoch FROM f.finished_at - f.started_at)::float8) AS seconds
    FROM skiplock.jobs f
    WHERE f.state IN ('succeeded', 'failed')
      AND f.started_at IS NOT NULL
      AND f.finished_at > now() - interval '24 hours'
      AND f.task IN (SELECT r.task FROM skiplock.jobs r WHERE r.state = 'running')
    GROUP BY f.task
)
SELECT
    j.id,
    j.queue,
    j.task,
    j.tenant,
    j.worker_id,
    j.attempt,
    j.started_at,
    j.lease_expires_at,
    extract(epoch FROM now() - j.started_at)::float8 AS running_seconds,
    p.seconds AS task_run_p95,
    CASE WHEN j.lease_expires_at < now() THEN 'lease_expired' ELSE 'slow' END AS reason
FROM skiplock.jobs j
LEFT JOIN run_p95 p ON p.task = j.task
WHERE j.state = 'running'
  AND (j.lease_expires_at < now()
       OR now() - j.started_at
          > greatest(3 * p.seconds, p.seconds + 60) * interval '1 second');

COMMENT ON VIEW skiplock.stuck_jobs IS
    'Running jobs that look stuck: reason lease_expired (their worker stopped '
    'renewing the lease; the rescuer will requeue them) or slow (running longer '
    'than 3 times, and at least 60 s more than, the p95 run time of their task '
    'over the last 24 hours).';
