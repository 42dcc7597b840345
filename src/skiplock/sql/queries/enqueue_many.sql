-- enqueue_many: insert a batch of jobs in one statement. Rows whose
-- (tenant, idempotency_key) or id already exists are skipped; the caller reads
-- them back with get_by_idempotency_keys / get_jobs.
-- The client also runs it without the line 'ON CONFLICT DO NOTHING' (keep it a
-- line of its own) for a batch without idempotency keys sent on a pool, outside
-- any transaction: a plain insert writes less, and a taken id (a batch sent
-- again) fails the whole statement, which is then sent as it is here.
-- Parameters: $1 id uuid[], one element per job, in input order. Every other
-- column is an array of the same length, or an empty array when the whole batch
-- shares one value: unnest pads it with NULL, and the column takes the scalar
-- beside it (a batch of alike jobs sends one value, not one per job). The
-- columns that may be NULL have no scalar: empty means NULL for every job.
--   $2 queue text[],        $3 queue text
--   $4 task text[],         $5 task text
--   $6 args (JSON text)[],  $7 args jsonb
--   $8 priority int[],      $9 priority int
--   $10 max_attempts int[], $11 max_attempts int
--   $12 tenant text[],      $13 tenant text
--   $14 meta (JSON text)[], $15 meta jsonb
--   $16 request fingerprint text[], $17 request fingerprint text (JobSpec.fingerprint)
--   $18 run_at timestamptz[] (NULL: now() + delay), $19 delay seconds float8[] (NULL: 0),
--   $20 idempotency_key text[], $21 expires_at timestamptz[] (NULL: none),
--   $22 timeout seconds float8[] (NULL: the task's),
--   $23 limit keys (JSON text: an array of strings)[] (NULL: none given),
--   $24 fairness key text[] (NULL: the tenant in a fair queue, else none),
--   $25 unique key text[] (NULL: not unique)
-- Flow control (0010): the stored limit_keys are the given ones plus the
-- implicit keys a limit matches (skiplock.job_limit_keys), computed only when
-- skiplock.limits has a row (one check per statement); a job in a fair queue
-- (skiplock.queues, read once per statement) gets its tenant as fair_key
-- unless given one. A row whose unique key a queued or running job holds is
-- skipped as a conflict like the others; the client resolves it.
-- Result: one row, whatever the number of jobs (decoding a row per job cost the
-- client more than building the job): created_at, now(), the created_at of every
-- row inserted (the column's default); ids and run_ats, the id and run_at of each
-- row inserted, paired, or both NULL when every job was inserted and runs at
-- created_at (nothing to match: the common batch); keys, [id, limit_keys,
-- fair_key] (jsonb) of each inserted row that has either, NULL when none has.
-- The caller builds the rest from its specs (decoding every column back costs
-- more than the insert).
-- The queues of the inserted jobs are announced (skiplock.announce, 0009).
WITH inserted AS (
    INSERT INTO skiplock.jobs AS j
        (id, queue, task, args, priority, run_at, max_attempts, tenant, idempotency_key, meta,
         expires_at, timeout_seconds, request_fingerprint, limit_keys, fair_key, unique_key)
    SELECT
        n.id,
        coalesce(n.queue, $3::text),
        coalesce(n.task, $5::text),
        coalesce(n.args::jsonb, $7::jsonb),
        coalesce(n.priority, $9::int),
        CASE
            WHEN n.run_at IS NOT NULL THEN n.run_at
            WHEN n.delay IS NOT NULL THEN now() + make_interval(secs => n.delay)
            ELSE now()
        END,
        coalesce(n.max_attempts, $11::int),
        coalesce(n.tenant, $13::text),
        n.idempotency_key,
        coalesce(n.meta::jsonb, $15::jsonb),
        n.expires_at,
        n.timeout,
        coalesce(n.fingerprint, $17::text),
        CASE
            WHEN (SELECT EXISTS (SELECT 1 FROM skiplock.limits)) THEN skiplock.job_limit_keys(
                CASE WHEN n.limit_keys IS NOT NULL
                    THEN ARRAY(SELECT jsonb_array_elements_text(n.limit_keys::jsonb)) END,
                coalesce(n.queue, $3::text), coalesce(n.task, $5::text),
                coalesce(n.tenant, $13::text))
            WHEN n.limit_keys IS NOT NULL
                THEN ARRAY(SELECT jsonb_array_elements_text(n.limit_keys::jsonb))
        END,
        CASE
            WHEN n.fair_key IS NOT NULL THEN n.fair_key
            WHEN coalesce(n.queue, $3::text)
                 = ANY (ARRAY(SELECT q.name FROM skiplock.queues q WHERE q.fair))
                THEN coalesce(n.tenant, $13::text)
        END,
        n.unique_key
    FROM unnest(
        $1::uuid[], $2::text[], $4::text[], $6::text[], $8::int[], $10::int[], $12::text[],
        $14::text[], $16::text[], $18::timestamptz[], $19::float8[], $20::text[],
        $21::timestamptz[], $22::float8[], $23::text[], $24::text[], $25::text[]
    ) AS n (id, queue, task, args, priority, max_attempts, tenant, meta, fingerprint, run_at,
            delay, idempotency_key, expires_at, timeout, limit_keys, fair_key, unique_key)
    ON CONFLICT DO NOTHING
    RETURNING j.id, j.queue, j.run_at, j.limit_keys, j.fair_key
), announced AS (
    SELECT skiplock.announce(NULL, NULL, NULL, array_agg(i.queue)) FROM inserted i
)
SELECT
    now() AS created_at,
    CASE WHEN count(*) < cardinality($1::uuid[]) OR NOT bool_and(run_at = now())
        THEN coalesce(array_agg(id), '{}') END AS ids,
    CASE WHEN count(*) < cardinality($1::uuid[]) OR NOT bool_and(run_at = now())
        THEN coalesce(array_agg(run_at), '{}') END AS run_ats,
    jsonb_agg(jsonb_build_array(id, limit_keys, fair_key))
        FILTER (WHERE limit_keys IS NOT NULL OR fair_key IS NOT NULL) AS keys
FROM inserted, announced
