-- get_schedule: one schedule.
-- Parameters: $1 name.
-- Result: the schedule's columns; no row when there is no such schedule.
SELECT s.name, s.cron, s.every_seconds, s.timezone, s.task, s.args::text AS args,
       s.queue, s.tenant, s.priority, s.max_attempts, s.catch_up, s.paused,
       s.last_tick, s.next_tick, s.last_job_id, s.declared_at, s.updated_at
FROM skiplock.schedules s
WHERE s.name = $1::text
