-- 0001_jobs: the jobs table, its indexes, and the triggers that announce changes.
--
-- The word `skiplock` in this file is the schema; the runner substitutes the
-- configured schema name. Channels are derived from TG_TABLE_SCHEMA:
--   <schema>.queue   payload: comma-separated queue names with newly claimable jobs
--   <schema>.job     payload: JSON array of [id, state, progress] for changed jobs
--   <schema>.cancel  payload: comma-separated ids of running jobs asked to cancel

CREATE TYPE skiplock.job_state AS ENUM ('queued', 'running', 'succeeded', 'failed', 'cancelled');

CREATE TABLE skiplock.jobs (
    id               uuid PRIMARY KEY,
    queue            text NOT NULL,
    task             text NOT NULL,
    args             jsonb NOT NULL,
    state            skiplock.job_state NOT NULL DEFAULT 'queued',
    priority         smallint NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),
    attempt          integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 3,
    lease_token      uuid,
    lease_expires_at timestamptz,
    worker_id        text,
    progress         real,
    progress_message text,
    eta              timestamptz,
    result           jsonb,
    errors           jsonb NOT NULL DEFAULT '[]',
    tenant           text NOT NULL DEFAULT 'default',
    idempotency_key  text,
    meta             jsonb NOT NULL DEFAULT '{}',
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    CONSTRAINT jobs_queue_check CHECK (queue <> '' AND length(queue) <= 128),
    CONSTRAINT jobs_task_check CHECK (task <> '' AND length(task) <= 256),
    CONSTRAINT jobs_tenant_check CHECK (tenant <> '' AND length(tenant) <= 256),
    CONSTRAINT jobs_idempotency_key_check CHECK (length(idempotency_key) BETWEEN 1 AND 256),
    CONSTRAINT jobs_attempts_check CHECK (attempt >= 0 AND max_attempts BETWEEN 1 AND 1000),
    CONSTRAINT jobs_progress_check CHECK (progress BETWEEN 0 AND 100),
    CONSTRAINT jobs_errors_check CHECK (jsonb_typeof(errors) = 'array'),
    CONSTRAINT jobs_meta_check CHECK (jsonb_typeof(meta) = 'object'),
    -- finished_at is set exactly when the job is in a terminal state
    CONSTRAINT jobs_finished_check CHECK (
        (state IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL)
    ),
    -- a lease exists exactly while the job runs
    CONSTRAINT jobs_lease_check CHECK (
        (state = 'running') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)
    )
);

-- The claim walks this index in claim order, over claimable rows only.
CREATE INDEX jobs_claim_idx ON skiplock.jobs (queue, priority, run_at, id)
    WHERE state = 'queued';

-- The rescuer finds expired leases here.
CREATE INDEX jobs_lease_idx ON skiplock.jobs (lease_expires_at)
    WHERE state = 'running';

-- One job per (tenant, idempotency key).
CREATE UNIQUE INDEX jobs_idempotency_idx ON skiplock.jobs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Listing a tenant's jobs, newest first, with keyset pagination.
CREATE INDEX jobs_tenant_created_idx ON skiplock.jobs (tenant, created_at DESC, id DESC);

-- Announce newly inserted claimable jobs: one NOTIFY per statement.
CREATE FUNCTION skiplock.announce_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    queues text;
BEGIN
    SELECT string_agg(DISTINCT queue, ',') INTO queues FROM new_jobs WHERE state = 'queued';
    IF queues IS NOT NULL THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.queue', queues);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_inserted AFTER INSERT ON skiplock.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.announce_inserted();

-- Announce state, progress and cancel-request changes: a few NOTIFYs per
-- statement (chunks of at most 100 jobs keep payloads far below 8000 bytes),
-- never one per row, and never the result itself.
CREATE FUNCTION skiplock.announce_updated() RETURNS trigger
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
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.queue', queues);
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

CREATE TRIGGER jobs_updated AFTER UPDATE ON skiplock.jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.announce_updated();
