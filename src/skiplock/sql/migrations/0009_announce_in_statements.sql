-- 0009_announce_in_statements: the statements that change jobs announce the
-- changes themselves; the jobs table has no trigger any more.
--
-- The AFTER INSERT and AFTER UPDATE triggers (0005, 0008) read transition
-- tables: PostgreSQL copies every inserted or updated row into them (both the
-- old and the new version for an UPDATE), then the update trigger joined the
-- two to find what changed. On a claim or a completion of 1,000 jobs that is
-- 2,000 row copies and a hash join, for notifications whose content the
-- statement already knows. Measured with pgbench on the real schema
-- (bench/designs, docs/performance.md): the update trigger alone cost 15–20 %
-- of the rows per second of claim + completion.
--
-- Now each statement that changes a job's state, progress or cancel request
-- (sql/queries: enqueue_many, claim_jobs, complete_jobs, update_progress,
-- cancel_job, retry_job, rescue_expired, rescue_dead_workers,
-- release_orphans, expire_jobs) passes what it changed to announce(), the one
-- place that turns changes into notifications: same channels, same payloads,
-- same order as the triggers sent:
--   '<schema>.job'    json arrays of [id, state, progress], at most 100 jobs each;
--   '<schema>.queue'  the queues with a job (back) in 'queued', comma-separated
--                     ('*' when that list is too long for a NOTIFY);
--   '<schema>.cancel' ids of running jobs with a new cancel request, at most 200
--                     each, comma-separated.
-- NOTIFY is delivered at commit, so nothing is announced for a statement that
-- rolls back. A change made by hand (psql) is not announced: the status API
-- re-reads the jobs it watches every 2 s, and workers poll.
--
-- No plan here depends on row counts: announce() reads only its arrays, by
-- position, and joins nothing.

CREATE FUNCTION skiplock.announce(
    ids uuid[],
    states skiplock.job_state[],
    progress real[],
    queued_queues text[] DEFAULT NULL,
    cancelling uuid[] DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    n integer := coalesce(cardinality(ids), 0);
    c integer := coalesce(cardinality(cancelling), 0);
    sent integer := 0;
    queues text;
    payload text;
BEGIN
    FOR lo IN 1 .. n BY 100 LOOP
        SELECT json_agg(json_build_array(ids[i], states[i], progress[i]))::text INTO payload
        FROM generate_series(lo, least(lo + 99, n)) AS i;
        PERFORM pg_notify('skiplock.job', payload);
        sent := sent + 1;
    END LOOP;
    SELECT string_agg(DISTINCT q, ',') INTO queues FROM unnest(queued_queues) AS q;
    IF queues IS NOT NULL THEN
        PERFORM pg_notify('skiplock.queue',
                          CASE WHEN octet_length(queues) > 7000 THEN '*' ELSE queues END);
        sent := sent + 1;
    END IF;
    FOR lo IN 1 .. c BY 200 LOOP
        PERFORM pg_notify('skiplock.cancel',
                          array_to_string(cancelling[lo : least(lo + 199, c)], ','));
        sent := sent + 1;
    END LOOP;
    RETURN sent;
END;
$$;

COMMENT ON FUNCTION skiplock.announce(uuid[], skiplock.job_state[], real[], text[], uuid[]) IS
    'Send the notifications for changed jobs: [id, state, progress] on <schema>.job '
    '(100 per payload), the queues with jobs now queued on <schema>.queue, running jobs '
    'with a new cancel request on <schema>.cancel (200 per payload). Returns how many '
    'notifications it sent. Called by the statements that change jobs.';

DROP TRIGGER jobs_inserted ON skiplock.jobs;
DROP TRIGGER jobs_updated ON skiplock.jobs;
DROP FUNCTION skiplock.announce_inserted();
DROP FUNCTION skiplock.announce_updated();

-- What happens to a job whose attempt was lost (its lease expired, or its
-- worker died), in one place for both rescues (rescue_expired.sql and
-- rescue_dead_workers.sql select the rows and lock them; this writes them):
-- back to queued, due now; or failed when no attempt is left; or cancelled
-- when its cancel was requested. The attempt counts. An entry of type `kind`
-- is appended to its error history, `message` with %s replaced by the worker's
-- id. The changes are announced. Returns (id, state, attempt, worker_id) of
-- the rows written.
CREATE FUNCTION skiplock.rescue(ids uuid[], kind text, message text)
RETURNS TABLE (id uuid, state text, attempt integer, worker_id text)
LANGUAGE sql VOLATILE
AS $$
    WITH changed AS (
        UPDATE skiplock.jobs j SET
            state = CASE WHEN j.cancel_requested THEN 'cancelled'
                         WHEN j.attempt >= j.max_attempts THEN 'failed'
                         ELSE 'queued' END::skiplock.job_state,
            finished_at = CASE WHEN j.cancel_requested OR j.attempt >= j.max_attempts
                               THEN now() END,
            run_at = now(),
            errors = j.errors || jsonb_build_array(jsonb_build_object(
                'type', kind,
                'message', format(message, coalesce(j.worker_id, '?')),
                'traceback', NULL,
                'attempt', j.attempt,
                'worker', j.worker_id,
                'at', now())),
            lease_token = NULL,
            lease_expires_at = NULL,
            updated_at = now()
        WHERE j.id = ANY(ids)
        RETURNING j.id, j.state, j.progress, j.queue, j.attempt, j.worker_id
    ), announced AS (
        SELECT skiplock.announce(array_agg(ch.id), array_agg(ch.state), array_agg(ch.progress),
            array_agg(ch.queue) FILTER (WHERE ch.state = 'queued'))
        FROM changed ch
    )
    SELECT ch.id, ch.state::text, ch.attempt, ch.worker_id FROM changed ch, announced
$$;

-- The request fingerprint's check (0006) matched '^[0-9a-f]{64}$': a regular
-- expression with a counted repetition, about 6 µs of CPU per inserted row
-- (measured: 200,000 rows, 1.3 s against 0.15 s). The same rule — 64
-- characters, each a lowercase hex digit — checked as a length and a
-- one-class expression costs under 1 µs. Every existing row met the old check,
-- so it meets this one.
ALTER TABLE skiplock.jobs
    DROP CONSTRAINT jobs_request_fingerprint_check,
    ADD CONSTRAINT jobs_request_fingerprint_check
        CHECK (length(request_fingerprint) = 64 AND request_fingerprint !~ '[^0-9a-f]');
