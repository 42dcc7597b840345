-- due_schedules: the schedules whose next tick has come (or is not computed
-- yet), locked for the calling transaction; those another worker is handling
-- right now are skipped. Run inside the transaction that enqueues their ticks
-- and advances them (advance_schedule).
-- Parameters: $1 at most this many.
-- Result: the schedules' columns, and now() (the database's clock).
SELECT s.name, s.cron, s.every_seconds, s.timezone, s.task, s.args::text AS args,
       s.queue, s.tenant, s.priority, s.max_attempts, s.catch_up, s.paused,
       s.last_tick, s.next_tick, s.last_job_id, s.declared_at, s.updated_at,
       now() AS now
FROM skiplock.schedules s
WHERE NOT s.paused AND (s.next_tick IS NULL OR s.next_tick <= now())
ORDER BY s.next_tick NULLS FIRST, s.name
LIMIT $1
FOR UPDATE SKIP LOCKED
