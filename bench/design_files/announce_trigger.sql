-- v7: skiplock's statement-level AFTER UPDATE trigger with transition tables,
-- as migration 0008 made it (0009 replaced it by skiplock.announce, called by
-- the statements): a few NOTIFYs per statement on channel public.job.
CREATE FUNCTION announce_updated() RETURNS trigger
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

CREATE TRIGGER jobs_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION announce_updated();
