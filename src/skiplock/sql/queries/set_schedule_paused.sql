-- set_schedule_paused: pause a schedule (no tick is enqueued while paused) or
-- resume it. A resumed schedule goes on from now: the ticks missed while paused
-- are not caught up (last_tick is now, the next tick is computed again).
-- Parameters: $1 name, $2 paused.
-- Result: the schedule's columns; no row when there is no such schedule.
UPDATE skiplock.schedules s SET
    paused = $2::boolean,
    last_tick = CASE WHEN s.paused AND NOT $2::boolean THEN now() ELSE s.last_tick END,
    next_tick = CASE WHEN s.paused AND NOT $2::boolean THEN NULL ELSE s.next_tick END,
    updated_at = now()
WHERE s.name = $1::text
RETURNING s.name, s.cron, s.every_seconds, s.timezone, s.task, s.args::text AS args,
          s.queue, s.tenant, s.priority, s.max_attempts, s.catch_up, s.paused,
          s.last_tick, s.next_tick, s.last_job_id, s.declared_at, s.updated_at
