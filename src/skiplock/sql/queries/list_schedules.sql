-- list_schedules: every schedule, by name.
-- Parameters: none.
-- Result: the schedules' columns.
SELECT s.name, s.cron, s.every_seconds, s.timezone, s.task, s.args::text AS args,
       s.queue, s.tenant, s.priority, s.max_attempts, s.catch_up, s.paused,
       s.last_tick, s.next_tick, s.last_job_id, s.declared_at, s.updated_at
FROM skiplock.schedules s
ORDER BY s.name
