-- claim_jobs: lease up to $2 due jobs from the given queues, in claim order
-- (priority, run_at, id), skipping rows other workers hold locked.
-- Each queue is read on its own walk of jobs_claim_idx (an index scan with
-- `queue = ANY(...)` cannot return rows in claim order, so PostgreSQL before 17
-- would sort every queued row); the walks are merged and cut to $2. A worker
-- on several queues may briefly lock up to $2 rows per queue: the surplus is
-- released at commit, and other workers skip it meanwhile.
-- The UPDATE finds its rows through the primary key (`= ANY(ARRAY(...))`), never
-- a hash join over the whole table.
-- Parameters: $1 queues text[], $2 limit, $3 lease seconds float8, $4 worker id.
-- A job past its expires_at is never claimed (expire_jobs ends it).
-- Result: the claimed rows, now running with a fresh lease token, announced
-- (skiplock.announce, 0009).
WITH picked AS (
    SELECT c.id
    FROM unnest($1::text[]) AS wanted (queue)
    CROSS JOIN LATERAL (
        SELECT q.id, q.priority, q.run_at
        FROM skiplock.jobs q
        WHERE q.state = 'queued' AND q.queue = wanted.queue AND q.run_at <= now()
          AND (q.expires_at IS NULL OR q.expires_at > now())
        ORDER BY q.priority, q.run_at, q.id
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) c
    ORDER BY c.priority, c.run_at, c.id
    LIMIT $2
), claimed AS (
    UPDATE skiplock.jobs j SET
        state = 'running',
        attempt = j.attempt + 1,
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => $3::float8),
        worker_id = $4::text,
        started_at = now(),
        updated_at = now()
    WHERE j.id = ANY(ARRAY(SELECT picked.id FROM picked))
    RETURNING j.*
), announced AS (
    SELECT skiplock.announce(array_agg(ch.id), array_agg(ch.state), array_agg(ch.progress))
    FROM claimed ch
)
SELECT ch.* FROM claimed ch, announced
