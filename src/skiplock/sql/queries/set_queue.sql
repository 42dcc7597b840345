-- set_queue: pause or resume a queue, make it fair or plain (skiplock.queues,
-- migration 0010); NULL keeps a switch as it is. A paused queue is left out of
-- every claim from the next one on; workers drop the jobs of it they claimed
-- but have not started (NOTIFY '<schema>.flow' 'paused:<queue>'). Resuming
-- wakes the workers of the queue ('<schema>.queue').
-- Parameters: $1 queue, $2 paused boolean, $3 fair boolean.
-- Result: the queue's switches as stored, and the writing transaction's id
-- (the caller waits for older transactions before it backfills fair keys).
WITH stored AS (
    INSERT INTO skiplock.queues AS s (name, paused, fair)
    VALUES ($1::text, coalesce($2::boolean, false), coalesce($3::boolean, false))
    ON CONFLICT (name) DO UPDATE SET
        paused = coalesce($2::boolean, s.paused),
        fair = coalesce($3::boolean, s.fair),
        updated_at = now()
    RETURNING s.name, s.paused, s.fair, s.updated_at
)
SELECT st.name, st.paused, st.fair, st.updated_at, pg_current_xact_id()::text AS xid,
       CASE WHEN st.paused THEN pg_notify('skiplock.flow', 'paused:' || st.name)
            ELSE pg_notify('skiplock.queue', st.name) END AS woken
FROM stored st
