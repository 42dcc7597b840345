-- enqueue_one: insert one job, as enqueue_many.sql does for a batch (the same
-- columns, values and result), with one plain parameter per column: for a
-- single row this costs PostgreSQL less than unnest's function scan.
-- The client also runs it without the line 'ON CONFLICT DO NOTHING' (keep it a
-- line of its own), as it does enqueue_many.sql: see there.
-- Parameters: $1 id uuid, $2 queue text, $3 task text, $4 args jsonb,
--   $5 priority int, $6 run_at timestamptz (NULL: now() + delay),
--   $7 delay seconds float8 (NULL: 0), $8 max_attempts int, $9 tenant text,
--   $10 idempotency_key text, $11 meta jsonb, $12 expires_at timestamptz (NULL: none),
--   $13 timeout seconds float8 (NULL: the task's), $14 request fingerprint text,
--   $15 limit keys text[] (NULL: none given), $16 fairness key text (NULL: the
--   tenant in a fair queue, else none), $17 unique key text (NULL: not unique)
-- limit_keys and fair_key are stored as enqueue_many.sql stores them.
-- Result: id, run_at, created_at, limit_keys and fair_key of the row, none when
-- it was skipped. Its queue is announced (skiplock.announce, 0009).
WITH inserted AS (
    INSERT INTO skiplock.jobs AS j
        (id, queue, task, args, priority, run_at, max_attempts, tenant, idempotency_key, meta,
         expires_at, timeout_seconds, request_fingerprint, limit_keys, fair_key, unique_key)
    VALUES (
        $1::uuid, $2::text, $3::text, $4::jsonb, $5::int,
        CASE
            WHEN $6::timestamptz IS NOT NULL THEN $6::timestamptz
            WHEN $7::float8 IS NOT NULL THEN now() + make_interval(secs => $7::float8)
            ELSE now()
        END,
        $8::int, $9::text, $10::text, $11::jsonb, $12::timestamptz, $13::float8, $14::text,
        CASE WHEN (SELECT EXISTS (SELECT 1 FROM skiplock.limits))
            THEN skiplock.job_limit_keys($15::text[], $2::text, $3::text, $9::text)
            ELSE $15::text[]
        END,
        coalesce($16::text, (SELECT $9::text FROM skiplock.queues q WHERE q.name = $2::text AND q.fair)),
        $17::text
    )
    ON CONFLICT DO NOTHING
    RETURNING j.id, j.queue, j.run_at, j.created_at, j.limit_keys, j.fair_key
), announced AS (
    SELECT skiplock.announce(NULL, NULL, NULL, array_agg(i.queue)) FROM inserted i
)
SELECT i.id, i.run_at, i.created_at, i.limit_keys, i.fair_key FROM inserted i, announced
