-- enqueue_many: insert a batch of jobs in one statement. Rows whose
-- (tenant, idempotency_key) or id already exists are skipped; the caller reads
-- them back with get_by_idempotency_keys / get_jobs.
-- Parameters (arrays of equal length, one element per job):
--   $1 id uuid[], $2 queue text[], $3 task text[], $4 args (JSON text)[],
--   $5 priority int[], $6 run_at timestamptz[] (NULL: now() + delay),
--   $7 delay seconds float8[] (NULL: 0), $8 max_attempts int[], $9 tenant text[],
--   $10 idempotency_key text[], $11 meta (JSON text)[], $12 expires_at
--   timestamptz[] (NULL: none), $13 timeout seconds float8[] (NULL: the task's),
--   $14 request fingerprint text[] (JobSpec.fingerprint)
-- Result: id, run_at and created_at of the inserted rows; the caller builds the
-- rest from its specs (decoding every column back costs more than the insert).
-- Announces the queues of the inserted jobs (skiplock.announce, 0009).
WITH inserted AS (
    INSERT INTO skiplock.jobs AS j
        (id, queue, task, args, priority, run_at, max_attempts, tenant, idempotency_key, meta,
         expires_at, timeout_seconds, request_fingerprint)
    SELECT
        n.id, n.queue, n.task, n.args::jsonb, n.priority,
        coalesce(n.run_at, now() + make_interval(secs => coalesce(n.delay, 0))),
        n.max_attempts, n.tenant, n.idempotency_key, n.meta::jsonb, n.expires_at, n.timeout,
        n.fingerprint
    FROM unnest(
        $1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::timestamptz[],
        $7::float8[], $8::int[], $9::text[], $10::text[], $11::text[], $12::timestamptz[],
        $13::float8[], $14::text[]
    ) AS n (id, queue, task, args, priority, run_at, delay, max_attempts, tenant,
            idempotency_key, meta, expires_at, timeout, fingerprint)
    ON CONFLICT DO NOTHING
    RETURNING j.id, j.queue, j.run_at, j.created_at
), announced AS (
    SELECT skiplock.announce(NULL, NULL, NULL, array_agg(i.queue)) FROM inserted i
)
SELECT i.id, i.run_at, i.created_at FROM inserted i, announced
