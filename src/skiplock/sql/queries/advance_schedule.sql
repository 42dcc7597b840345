-- advance_schedule: after enqueueing a schedule's due ticks (same transaction,
-- the row locked by due_schedules), record the last tick handled and the next.
-- Parameters: $1 name, $2 last_tick, $3 next_tick, $4 the last job enqueued
--   (NULL: none this time, the previous one is kept).
-- Result: none.
UPDATE skiplock.schedules SET
    last_tick = $2::timestamptz,
    next_tick = $3::timestamptz,
    last_job_id = coalesce($4::uuid, last_job_id),
    updated_at = now()
WHERE name = $1::text
