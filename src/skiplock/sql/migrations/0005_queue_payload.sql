-- 0005_queue_payload: a NOTIFY payload must stay under 8000 bytes, or the
-- statement that sends it fails. The list of queues with new claimable jobs
-- could exceed it (many long queue names in one enqueue_many, or one batch of
-- retries): an INSERT of valid jobs then failed. A list too long to send is
-- announced as '*', which wakes every worker.
--
-- Both functions are as 0001 wrote them but for that CASE.

CREATE OR REPLACE FUNCTION skiplock.announce_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    queues text;
BEGIN
    SELECT string_agg(DISTINCT queue, ',') INTO queues FROM new_jobs WHERE state = 'queued';
    IF queues IS NOT NULL THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.queue',
                          CASE WHEN octet_length(queues) > 7000 THEN '*' ELSE queues END);
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION skiplock.announce_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload text;
    queues text;
    ids text;
BEGIN
    FOR payload IN
        SELECT json_agg(json_build_array(c.id, c.state, c.progress))::text
        FROM (
            SELECT n.id, n.state, n.progress, (row_number() OVER () - 1) / 100 AS chunk
            FROM new_jobs n JOIN old_jobs o ON o.id = n.id
            WHERE n.state IS DISTINCT FROM o.state
               OR n.progress IS DISTINCT FROM o.progress
               OR n.progress_message IS DISTINCT FROM o.progress_message
               OR n.eta IS DISTINCT FROM o.eta
               OR n.cancel_requested IS DISTINCT FROM o.cancel_requested
        ) c
        GROUP BY c.chunk
    LOOP
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.job', payload);
    END LOOP;

    SELECT string_agg(DISTINCT n.queue, ',') INTO queues
    FROM new_jobs n JOIN old_jobs o ON o.id = n.id
    WHERE n.state = 'queued' AND o.state <> 'queued';
    IF queues IS NOT NULL THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.queue',
                          CASE WHEN octet_length(queues) > 7000 THEN '*' ELSE queues END);
    END IF;

    FOR ids IN
        SELECT string_agg(c.id::text, ',')
        FROM (
            SELECT n.id, (row_number() OVER () - 1) / 200 AS chunk
            FROM new_jobs n JOIN old_jobs o ON o.id = n.id
            WHERE n.state = 'running' AND n.cancel_requested AND NOT o.cancel_requested
        ) c
        GROUP BY c.chunk
    LOOP
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.cancel', ids);
    END LOOP;
    RETURN NULL;
END;
$$;
