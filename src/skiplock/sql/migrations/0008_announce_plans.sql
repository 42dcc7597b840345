-- 0008_announce_plans: the update trigger's plan no longer depends on the
-- row count of a connection's first UPDATE.
--
-- PL/pgSQL plans each query of a function once per connection and keeps the
-- plan. announce_updated joined the old and new transition tables in three
-- queries; planned while the connection's first UPDATE touched one row, each
-- join became a nested loop, and stayed one for later 1,000-row claims and
-- completions (quadratic: ~260 ms instead of ~54 ms per 1,000-row statement).
--
-- Now the function joins the two tables once, and with nested loops and merge
-- joins disabled for the function (SET clauses below), so the cached plan is
-- always a hash join: linear in the rows whatever count it was planned for,
-- and as cheap as a nested loop for one row. The joined rows that matter are
-- kept in a MATERIALIZED CTE, from which one statement makes every payload, in
-- the order the old function sent them: state/progress/cancel-request changes
-- on '<schema>.job' (json arrays of [id, state, progress], at most 100 jobs
-- each), then the queues with jobs back in 'queued' on '<schema>.queue' ('*'
-- if that list is too long for a NOTIFY), then the running jobs with a new
-- cancel request on '<schema>.cancel' (at most 200 ids each). Same channels,
-- same payloads, same conditions as 0005.
--
-- announce_inserted reads one transition table, joins nothing, and stays.

CREATE OR REPLACE FUNCTION skiplock.announce_updated() RETURNS trigger
LANGUAGE plpgsql
SET enable_nestloop = off
SET enable_mergejoin = off
AS $$
DECLARE
    note record;
BEGIN
    FOR note IN
        WITH changed AS MATERIALIZED (
            SELECT n.id, n.queue, n.state, n.progress,
                   n.state = 'queued' AND o.state <> 'queued' AS requeued,
                   n.state = 'running' AND n.cancel_requested AND NOT o.cancel_requested
                       AS cancelling
            FROM new_jobs n JOIN old_jobs o ON o.id = n.id
            WHERE n.state IS DISTINCT FROM o.state
               OR n.progress IS DISTINCT FROM o.progress
               OR n.progress_message IS DISTINCT FROM o.progress_message
               OR n.eta IS DISTINCT FROM o.eta
               OR n.cancel_requested IS DISTINCT FROM o.cancel_requested
        )
        SELECT 1 AS step, 'job' AS channel,
               json_agg(json_build_array(c.id, c.state, c.progress))::text AS payload
        FROM (
            SELECT id, state, progress, (row_number() OVER () - 1) / 100 AS chunk
            FROM changed
        ) c
        GROUP BY c.chunk
        UNION ALL
        SELECT 2, 'queue', CASE WHEN octet_length(q.queues) > 7000 THEN '*' ELSE q.queues END
        FROM (SELECT string_agg(DISTINCT queue, ',') AS queues FROM changed WHERE requeued) q
        WHERE q.queues IS NOT NULL
        UNION ALL
        SELECT 3, 'cancel', string_agg(c.id::text, ',')
        FROM (
            SELECT id, (row_number() OVER () - 1) / 200 AS chunk
            FROM changed
            WHERE cancelling
        ) c
        GROUP BY c.chunk
        ORDER BY step
    LOOP
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.' || note.channel, note.payload);
    END LOOP;
    RETURN NULL;
END;
$$;
