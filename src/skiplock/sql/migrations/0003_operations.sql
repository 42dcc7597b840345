-- 0003_operations: per-job expiry for retention, and views for monitoring.
--
-- Retention (query purge_finished) deletes finished jobs older than a per-state
-- age, or whose expires_at has passed; queued and running jobs are never
-- deleted. The views below are plain SQL views, cheap enough to run by hand or
-- from a dashboard every few seconds; all times are from the database clock.

ALTER TABLE skiplock.jobs ADD COLUMN expires_at timestamptz;

COMMENT ON COLUMN skiplock.jobs.expires_at IS
    'Optional deadline: once finished and past it, retention may delete the job.';

-- Retention finds finished rows by state and age here.
CREATE INDEX jobs_state_finished_idx ON skiplock.jobs (state, finished_at)
    WHERE finished_at IS NOT NULL;

-- ...and finished rows whose own deadline passed here.
CREATE INDEX jobs_expires_idx ON skiplock.jobs (expires_at)
    WHERE expires_at IS NOT NULL AND finished_at IS NOT NULL;

CREATE VIEW skiplock.queue_overview AS
SELECT
    j.queue,
    count(*) FILTER (WHERE j.state = 'queued' AND j.run_at <= now()) AS queued_due,
    count(*) FILTER (WHERE j.state = 'queued' AND j.run_at > now()) AS scheduled,
    count(*) FILTER (WHERE j.state = 'running') AS running,
    extract(epoch FROM now() - min(j.run_at) FILTER (
        WHERE j.state = 'queued' AND j.run_at <= now()))::float8 AS oldest_wait_seconds
FROM skiplock.jobs j
WHERE j.state IN ('queued', 'running')
GROUP BY j.queue;

COMMENT ON VIEW skiplock.queue_overview IS
    'Per queue: jobs queued and due now, queued for later (scheduled), running, '
    'and how many seconds the oldest due job has waited (NULL when none waits).';

CREATE VIEW skiplock.throughput_per_minute AS
SELECT
    date_trunc('minute', j.finished_at) AS minute,
    j.task,
    j.state::text AS outcome,
    count(*) AS jobs
FROM skiplock.jobs j
WHERE j.finished_at IS NOT NULL AND j.finished_at > now() - interval '24 hours'
GROUP BY 1, 2, 3;

COMMENT ON VIEW skiplock.throughput_per_minute IS
    'Jobs finished per minute over the last 24 hours, by task and outcome '
    '(succeeded, failed, cancelled). Minutes without jobs have no row.';

CREATE VIEW skiplock.task_stats AS
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
JOIN skiplock.jobs j ON j.finished_at IS NOT NULL AND j.finished_at > now() - w.span
GROUP BY j.task, w.period;

COMMENT ON VIEW skiplock.task_stats IS
    'Per task and period (1h, 24h, 7d) of finished jobs: counts by outcome, '
    'failure rate (failed / finished), p50/p95 wait seconds (run_at to started_at; '
    'NULL for jobs cancelled before starting) and run seconds (started_at to finished_at).';

CREATE VIEW skiplock.jobs_per_tenant AS
SELECT
    j.tenant,
    count(*) FILTER (WHERE j.state = 'queued') AS queued,
    count(*) FILTER (WHERE j.state = 'running') AS running,
    count(*) FILTER (WHERE j.state = 'succeeded') AS succeeded,
    count(*) FILTER (WHERE j.state = 'failed') AS failed,
    count(*) FILTER (WHERE j.state = 'cancelled') AS cancelled,
    count(*) AS total
FROM skiplock.jobs j
GROUP BY j.tenant;

COMMENT ON VIEW skiplock.jobs_per_tenant IS
    'Per tenant: how many jobs are in each state, and in all (counts the whole table).';

CREATE VIEW skiplock.stuck_jobs AS
WITH run_p95 AS (
    SELECT f.task,
           percentile_cont(0.95) WITHIN GROUP (
               ORDER BY extract(epoch FROM f.finished_at - f.started_at)::float8) AS seconds
    FROM skiplock.jobs f
    WHERE f.state IN ('succeeded', 'failed')
      AND f.started_at IS NOT NULL
      AND f.finished_at > now() - interval '7 days'
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
    'over the last 7 days).';
