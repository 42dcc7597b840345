-- declare_schedule: a schedule declared in code (TaskRegistry.schedule), written
-- by each worker at start. The definition is the code's (the last worker to
-- start wins); the run-time state (paused, last_tick) is kept. A changed
-- cron, interval or time zone makes the next tick be computed again.
-- Parameters: $1 name, $2 cron, $3 every_seconds, $4 timezone, $5 task,
--   $6 args (JSON text), $7 queue, $8 tenant, $9 priority, $10 max_attempts,
--   $11 catch_up.
-- Result: the schedule's name.
INSERT INTO skiplock.schedules AS s (
    name, cron, every_seconds, timezone, task, args, queue, tenant, priority,
    max_attempts, catch_up
)
VALUES ($1::text, $2::text, $3::float8, $4::text, $5::text, $6::jsonb, $7::text, $8::text,
        $9::smallint, $10::integer, $11::text)
ON CONFLICT (name) DO UPDATE SET
    cron = EXCLUDED.cron,
    every_seconds = EXCLUDED.every_seconds,
    timezone = EXCLUDED.timezone,
    task = EXCLUDED.task,
    args = EXCLUDED.args,
    queue = EXCLUDED.queue,
    tenant = EXCLUDED.tenant,
    priority = EXCLUDED.priority,
    max_attempts = EXCLUDED.max_attempts,
    catch_up = EXCLUDED.catch_up,
    next_tick = CASE
        WHEN (s.cron, s.every_seconds, s.timezone)
             IS NOT DISTINCT FROM (EXCLUDED.cron, EXCLUDED.every_seconds, EXCLUDED.timezone)
        THEN s.next_tick END,
    declared_at = now(),
    updated_at = now()
RETURNING s.name
