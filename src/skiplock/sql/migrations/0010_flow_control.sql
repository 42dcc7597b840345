-- 0010_flow_control: per-key concurrency and rate limits, fair claiming across
-- tenants (or fairness keys), paused queues, unique jobs.
--
-- Limits are counted from the jobs themselves, never from counter rows: a job
-- holds a slot of each of its keys exactly while it is 'running', so a crashed
-- worker's slots free when its leases are rescued, and a restart of PostgreSQL
-- or of every worker changes nothing. Starts (for rate limits) are logged in
-- limit_starts, apart from the jobs, so that retention deleting finished jobs
-- cannot reopen a window. The claim (skiplock.claim) admits a job only under a
-- transaction-level advisory lock on each of its limited keys, taken with
-- pg_try_advisory_xact_lock (a key another claimer is admitting right now is
-- skipped, never waited for), and counts with a snapshot taken after the lock:
-- that is what makes a limit exact across any number of workers. A queue
-- without limits is claimed as before, in one statement.

ALTER TABLE skiplock.jobs
    ADD COLUMN limit_keys text[],
    ADD COLUMN fair_key text COLLATE "C",
    ADD COLUMN unique_key text,
    ADD CONSTRAINT jobs_limit_keys_check
        CHECK (cardinality(limit_keys) BETWEEN 1 AND 20 AND array_position(limit_keys, NULL) IS NULL),
    ADD CONSTRAINT jobs_fair_key_check CHECK (length(fair_key) BETWEEN 1 AND 256),
    ADD CONSTRAINT jobs_unique_key_check CHECK (length(unique_key) BETWEEN 1 AND 256);

COMMENT ON COLUMN skiplock.jobs.limit_keys IS
    'Keys whose limits apply to the job (e.g. user:42, provider:openai), and the implicit '
    'keys queue:<queue>, task:<task>, tenant:<tenant>, tenant:<tenant>/task:<task> that a '
    'limit matched when the job was enqueued (or when the limit was set). NULL: none.';
COMMENT ON COLUMN skiplock.jobs.fair_key IS
    'The group a fair queue claims round-robin (the tenant unless given). NULL: not fair. '
    'Collation C: keys are walked in code point order, as the workers compare them.';
COMMENT ON COLUMN skiplock.jobs.unique_key IS
    'At most one queued or running job per (tenant, unique_key). NULL: not unique.';

-- A fair queue's claim finds its groups (a loose index scan) and each group's
-- next jobs here. Only jobs with a fair_key have an entry: no cost elsewhere.
CREATE INDEX jobs_fair_idx ON skiplock.jobs (queue, fair_key, priority, run_at, id)
    WHERE state = 'queued' AND fair_key IS NOT NULL;

-- (limit_keys: up to 16 given keys and the 4 implicit ones.)

-- Running jobs per limited key: only running jobs that carry keys have entries
-- (written when the job is claimed). fastupdate off: a pending list would be
-- read in full by every count.
CREATE INDEX jobs_limit_keys_idx ON skiplock.jobs USING gin (limit_keys)
    WITH (fastupdate = off)
    WHERE state = 'running' AND limit_keys IS NOT NULL;

-- Unique jobs: one queued or running job per key and tenant. A job keeps its
-- entry through claim, retry and rescue (the same row), and leaves it when it ends.
CREATE UNIQUE INDEX jobs_unique_idx ON skiplock.jobs (tenant, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');

-- Limits. A pattern is a key, or a key with * wildcards: each distinct key it
-- matches has its own budget ('user:*' with max_running 2: two per user).
-- Every limit matching a key applies.
CREATE TABLE skiplock.limits (
    pattern      text PRIMARY KEY,
    max_running  integer,
    max_starts   integer,
    per_seconds  double precision,
    like_pattern text NOT NULL GENERATED ALWAYS AS (
        replace(replace(replace(replace(pattern, '\', '\\'), '%', '\%'), '_', '\_'), '*', '%')
    ) STORED,
    wildcard     boolean NOT NULL GENERATED ALWAYS AS (strpos(pattern, '*') > 0) STORED,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT limits_pattern_check CHECK (pattern <> '' AND length(pattern) <= 256),
    CONSTRAINT limits_max_running_check CHECK (max_running BETWEEN 0 AND 1000000),
    CONSTRAINT limits_max_starts_check CHECK (max_starts BETWEEN 0 AND 1000000),
    CONSTRAINT limits_per_check CHECK (per_seconds > 0 AND per_seconds <= 31 * 86400),
    CONSTRAINT limits_rate_check CHECK ((max_starts IS NULL) = (per_seconds IS NULL)),
    CONSTRAINT limits_some_check CHECK (max_running IS NOT NULL OR max_starts IS NOT NULL)
);

COMMENT ON TABLE skiplock.limits IS
    'Concurrency (max_running) and rate (max_starts per per_seconds) limits per key pattern; '
    'read by every claim, so a change applies to the next claim, fleet-wide.';

-- Starts of jobs with a rate-limited key: (key, when). Appended by the claim,
-- pruned by the workers' maintenance once older than every window. A count
-- reads only the rows of the window (the index range starts at its edge), so
-- rows deleted but not yet vacuumed are never visited.
CREATE TABLE skiplock.limit_starts (
    key        text NOT NULL,
    started_at timestamptz NOT NULL,
    job_id     uuid NOT NULL
);

CREATE INDEX limit_starts_key_idx ON skiplock.limit_starts (key, started_at);

-- Pruning finds the oldest rows here: the log is appended in time order.
CREATE INDEX limit_starts_at_idx ON skiplock.limit_starts USING brin (started_at);

-- Per-queue switches. A queue without a row is not paused and not fair.
CREATE TABLE skiplock.queues (
    name       text PRIMARY KEY,
    paused     boolean NOT NULL DEFAULT false,
    fair       boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT queues_name_check CHECK (name <> '' AND length(name) <= 128)
);

-- Weights of fair keys in a fair queue (default 1): a key of weight w gets up
-- to w jobs per round.
CREATE TABLE skiplock.fair_weights (
    queue    text NOT NULL,
    fair_key text NOT NULL,
    weight   integer NOT NULL,
    PRIMARY KEY (queue, fair_key),
    CONSTRAINT fair_weights_weight_check CHECK (weight BETWEEN 1 AND 1000)
);

-- Does some limit apply to this key?
CREATE FUNCTION skiplock.key_limited(k text) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (SELECT 1 FROM skiplock.limits l WHERE l.pattern = k)
        OR EXISTS (SELECT 1 FROM skiplock.limits l WHERE l.wildcard AND k LIKE l.like_pattern)
$$;

-- The keys stored with a job: the given ones, then each implicit key
-- (queue:<queue>, task:<task>, tenant:<tenant>, tenant:<tenant>/task:<task>)
-- that a limit matches. NULL when there are none.
CREATE FUNCTION skiplock.job_limit_keys(keys text[], queue text, task text, tenant text)
RETURNS text[]
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN cardinality(a) > 0 THEN a END
    FROM (
        SELECT coalesce(keys, '{}') || ARRAY(
            SELECT i
            FROM unnest(ARRAY['queue:' || queue, 'task:' || task, 'tenant:' || tenant,
                              'tenant:' || tenant || '/task:' || task]) AS i
            WHERE skiplock.key_limited(i) AND NOT (i = ANY(coalesce(keys, '{}')))
        ) AS a
    ) s
$$;

-- A fair queue's next jobs: round-robin over its fair keys. The keys are found
-- by a loose index scan of jobs_fair_idx (one descent per key), starting after
-- `after` (the last key the calling worker was served: each worker goes round
-- all the keys, claim after claim) and wrapping around, at most n keys. Each
-- key gives up to weight × ceil(2n / keys) jobs (at most n) in claim order
-- (priority, run_at, id), twice its share so that keys with few jobs leave no
-- hole in the claim. rr is a job's round (its position in its key ÷ weight),
-- turn its key's place in the walk: the claim orders by round, priority, turn.
-- keys: the job's limit keys as locked (the latest version of the row);
-- fair_key: its key.
CREATE FUNCTION skiplock.fair_candidates(q text, n integer, after text)
RETURNS TABLE (
    id uuid, rr bigint, priority smallint, turn integer, run_at timestamptz, keys text[],
    fair_key text
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    fkeys text[];
    more text[];
BEGIN
    WITH RECURSIVE g (k, i) AS (
        (SELECT f.fair_key, 1 FROM skiplock.jobs f
         WHERE f.state = 'queued' AND f.fair_key IS NOT NULL AND f.queue = q
           AND f.fair_key > coalesce(after, '')
         ORDER BY f.fair_key LIMIT 1)
        UNION ALL
        SELECT (SELECT f.fair_key FROM skiplock.jobs f
                WHERE f.state = 'queued' AND f.fair_key IS NOT NULL AND f.queue = q
                  AND f.fair_key > g.k
                ORDER BY f.fair_key LIMIT 1), g.i + 1
        FROM g WHERE g.k IS NOT NULL AND g.i < n
    )
    SELECT array_agg(g.k ORDER BY g.i) INTO fkeys FROM g WHERE g.k IS NOT NULL;
    IF coalesce(cardinality(fkeys), 0) < n AND after IS NOT NULL THEN
        WITH RECURSIVE g (k, i) AS (
            (SELECT f.fair_key, 1 FROM skiplock.jobs f
             WHERE f.state = 'queued' AND f.fair_key IS NOT NULL AND f.queue = q
               AND f.fair_key <= after
             ORDER BY f.fair_key LIMIT 1)
            UNION ALL
            SELECT (SELECT f.fair_key FROM skiplock.jobs f
                    WHERE f.state = 'queued' AND f.fair_key IS NOT NULL AND f.queue = q
                      AND f.fair_key > g.k AND f.fair_key <= after
                    ORDER BY f.fair_key LIMIT 1), g.i + 1
            FROM g WHERE g.k IS NOT NULL AND g.i < n - coalesce(cardinality(fkeys), 0)
        )
        SELECT array_agg(g.k ORDER BY g.i) INTO more FROM g WHERE g.k IS NOT NULL;
        fkeys := coalesce(fkeys, '{}') || coalesce(more, '{}');
    END IF;
    IF coalesce(cardinality(fkeys), 0) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT c.id, (row_number() OVER (PARTITION BY c.k ORDER BY c.priority, c.run_at, c.id) - 1)
                 / c.w, c.priority, c.turn::integer, c.run_at, c.limit_keys, c.k
    FROM (
        SELECT w.k, w.turn, coalesce(fw.weight, 1) AS w, quota.n_rows
        FROM unnest(fkeys) WITH ORDINALITY AS w (k, turn)
        LEFT JOIN skiplock.fair_weights fw ON fw.queue = q AND fw.fair_key = w.k
        CROSS JOIN LATERAL (
            SELECT least(n, coalesce(fw.weight, 1) * ceil(2 * n::float8 / cardinality(fkeys))::integer)
                AS n_rows
        ) quota
    ) grp
    CROSS JOIN LATERAL (
        SELECT grp.k, grp.w, grp.turn, f.id, f.priority, f.run_at, f.limit_keys
        FROM skiplock.jobs f
        WHERE f.state = 'queued' AND f.fair_key IS NOT NULL AND f.queue = q
          AND f.fair_key >= grp.k AND f.fair_key <= grp.k
          AND f.run_at <= now() AND (f.expires_at IS NULL OR f.expires_at > now())
        -- The key as a range, and first in the order: only jobs_fair_idx gives
        -- this order without a sort. With `fair_key = k` the planner drops the key
        -- from the order and walks jobs_claim_idx (queue, priority, ...) instead,
        -- past every other key's backlog (53,000 buffers for a claim of 77).
        ORDER BY f.fair_key, f.priority, f.run_at, f.id
        LIMIT grp.n_rows
        FOR UPDATE SKIP LOCKED
    ) c;
END;
$$;

-- The claim: lease up to n due jobs of the given queues to a worker. Paused
-- queues are left out. A plain queue gives its jobs in claim order (priority,
-- run_at, id) from jobs_claim_idx; a fair queue round-robin across fair keys
-- (fair_candidates, going on after fair_after). With no limit defined
-- anywhere, that is the claim: one statement.
--
-- With limits, up to n + 16 candidates are locked (SKIP LOCKED) with their
-- keys; each limited key among them is locked with pg_try_advisory_xact_lock
-- (at most 256 keys per claim, those the first candidates carry; a key another
-- claimer holds is skipped: its jobs stay queued for the next claim); then a
-- new statement — a new snapshot, which sees every claim of those keys
-- committed before the locks were granted — counts the running jobs of each
-- key (jobs_limit_keys_idx) and the starts in each rate window
-- (limit_starts); candidates are admitted in claim order while every limited
-- key of theirs has room. When that leaves the claim short because keys were
-- full, a second round looks further — down the plain queues (at most 2,000
-- more rows read), and in fair queues at the next keys after those walked —
-- for jobs none of whose keys is full, so that full keys at the head of a
-- queue do not hold back the jobs behind them. A claim left short while keys
-- were skipped for another claimer's lock wakes the queues' workers. The admitted rows
-- are updated as by the plain claim; starts of rate-limited keys are logged,
-- and started_at is the admission time (the log's time). The claimed rows are
-- returned, running with a fresh lease token, and announced.
CREATE FUNCTION skiplock.claim(
    queues text[], n integer, lease_seconds float8, worker text, fair_after text DEFAULT NULL
)
RETURNS SETOF skiplock.jobs
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    plain text[];    -- the active plain queues, claimed in claim order
    fair text[];     -- the active fair queues, claimed round-robin
    rnd integer := 0;
    want integer;    -- jobs still wanted
    cand uuid[];     -- this round's candidates' ids, in claim order ...
    ckeys text[];    -- ... every key of every one of them, flat, in claim order ...
    cowner integer[];  -- ... and the candidate (its place in cand) that carries it
    seen uuid[] := '{}';  -- every candidate of every round
    newkeys text[];  -- limited keys first met this round
    lkeys text[] := '{}';  -- the limited keys met, locked or not
    bkeys text[] := '{}';  -- the limited keys locked, with a limit ...
    bleft integer[] := '{}';  -- ... and their room (jobs that may still start)
    fullkeys text[];  -- limited keys with no room (full, or locked by another claimer)
    refused integer := 0;  -- candidates refused this round for a key without room
    rated boolean := false;  -- some locked key has a rate limit
    skipped boolean := false;  -- a key was left out: another claimer held its lock
    walked text;     -- the last fair key round 1 walked (round 2 goes on after it)
    tried integer;
    admitted uuid[] := '{}';
    ts timestamptz;
    cid uuid;
    cpos integer[];
    i integer;
    fits boolean;
BEGIN
    IF n IS NULL OR n <= 0 THEN
        RETURN;
    END IF;
    SELECT array_agg(w.q) FILTER (WHERE NOT coalesce(s.fair, false)),
           array_agg(w.q) FILTER (WHERE s.fair)
    INTO plain, fair
    FROM unnest(queues) AS w (q)
    LEFT JOIN skiplock.queues s ON s.name = w.q
    WHERE NOT coalesce(s.paused, false);
    IF plain IS NULL AND fair IS NULL THEN
        RETURN;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM skiplock.limits) THEN
        RETURN QUERY
        WITH picked AS (
            SELECT c.id FROM (
                SELECT p.id, 0::bigint AS rr, p.priority, 0 AS turn, p.run_at
                FROM unnest(plain) AS wanted (queue)
                CROSS JOIN LATERAL (
                    SELECT j.id, j.priority, j.run_at
                    FROM skiplock.jobs j
                    WHERE j.state = 'queued' AND j.queue = wanted.queue AND j.run_at <= now()
                      AND (j.expires_at IS NULL OR j.expires_at > now())
                    ORDER BY j.priority, j.run_at, j.id
                    LIMIT n
                    FOR UPDATE SKIP LOCKED
                ) p
                UNION ALL
                SELECT f.id, f.rr, f.priority, f.turn, f.run_at
                FROM unnest(fair) AS wanted (queue)
                CROSS JOIN LATERAL skiplock.fair_candidates(wanted.queue, n, fair_after) f
            ) c
            ORDER BY c.rr, c.priority, c.turn, c.run_at, c.id
            LIMIT n
        ), claimed AS (
            UPDATE skiplock.jobs j SET
                state = 'running',
                attempt = j.attempt + 1,
                lease_token = gen_random_uuid(),
                lease_expires_at = now() + make_interval(secs => lease_seconds),
                worker_id = worker,
                started_at = now(),
                updated_at = now()
            WHERE j.id = ANY(ARRAY(SELECT picked.id FROM picked))
            RETURNING j.*
        ), announced AS (
            SELECT skiplock.announce(array_agg(ch.id), array_agg(ch.state), array_agg(ch.progress))
            FROM claimed ch
        )
        SELECT ch.* FROM claimed ch, announced;
        RETURN;
    END IF;

    LOOP
        rnd := rnd + 1;
        want := n - cardinality(admitted);
        IF rnd = 1 THEN
            -- The candidates, locked, in claim order, with their keys (read once).
            WITH c AS (
                SELECT c.id, c.keys, c.fkey, row_number() OVER (
                           ORDER BY c.rr, c.priority, c.turn, c.run_at, c.id)::integer AS ord
                FROM (
                    SELECT p.id, p.limit_keys AS keys, 0::bigint AS rr, p.priority, 0 AS turn,
                           p.run_at, NULL::text AS fkey
                    FROM unnest(plain) AS wanted (queue)
                    CROSS JOIN LATERAL (
                        SELECT j.id, j.limit_keys, j.priority, j.run_at
                        FROM skiplock.jobs j
                        WHERE j.state = 'queued' AND j.queue = wanted.queue AND j.run_at <= now()
                          AND (j.expires_at IS NULL OR j.expires_at > now())
                        ORDER BY j.priority, j.run_at, j.id
                        LIMIT want + 16
                        FOR UPDATE SKIP LOCKED
                    ) p
                    UNION ALL
                    SELECT f.id, f.keys, f.rr, f.priority, f.turn, f.run_at, f.fair_key
                    FROM unnest(fair) AS wanted (queue)
                    CROSS JOIN LATERAL skiplock.fair_candidates(wanted.queue, want + 16, fair_after) f
                ) c
                ORDER BY c.rr, c.priority, c.turn, c.run_at, c.id
                LIMIT want + 16
            ), k AS (
                SELECT c.ord, u.key FROM c CROSS JOIN LATERAL unnest(c.keys) AS u (key)
                WHERE c.keys IS NOT NULL
            )
            SELECT (SELECT array_agg(c.id ORDER BY c.ord) FROM c),
                   (SELECT array_agg(k.key ORDER BY k.ord) FROM k),
                   (SELECT array_agg(k.ord ORDER BY k.ord) FROM k),
                   (SELECT CASE WHEN bool_or(c.fkey <= fair_after)
                                THEN max(c.fkey) FILTER (WHERE c.fkey <= fair_after)
                                ELSE max(c.fkey) END
                    FROM c WHERE c.fkey IS NOT NULL)
            INTO cand, ckeys, cowner, walked;
        ELSE
            -- Further on: down the plain queues (at most 2,000 rows read past the
            -- first round's), and in fair queues the next keys after those walked,
            -- jobs none of whose keys is full, locked.
            WITH pick AS (
                SELECT s.id
                FROM unnest(plain) AS wanted (queue)
                CROSS JOIN LATERAL (
                    SELECT r.id, r.limit_keys, r.priority, r.run_at
                    FROM skiplock.jobs r
                    WHERE r.state = 'queued' AND r.queue = wanted.queue AND r.run_at <= now()
                      AND (r.expires_at IS NULL OR r.expires_at > now())
                    ORDER BY r.priority, r.run_at, r.id
                    LIMIT cardinality(seen) + 2000
                ) s
                WHERE s.id NOT IN (SELECT unnest(seen))
                  AND NOT (coalesce(s.limit_keys, '{}') && fullkeys)
                ORDER BY s.priority, s.run_at, s.id
                LIMIT want + 16
            ), taken AS (
                SELECT j.id, j.limit_keys AS keys, 0::bigint AS rr, j.priority, 0 AS turn, j.run_at
                FROM skiplock.jobs j
                WHERE j.id = ANY(ARRAY(SELECT pick.id FROM pick)) AND j.state = 'queued'
                FOR UPDATE SKIP LOCKED
            ), further AS (
                SELECT f.id, f.keys, f.rr, f.priority, f.turn, f.run_at
                FROM unnest(fair) AS wanted (queue)
                CROSS JOIN LATERAL skiplock.fair_candidates(wanted.queue, want + 256, walked) f
                WHERE f.id NOT IN (SELECT unnest(seen))
                  AND NOT (coalesce(f.keys, '{}') && fullkeys)
            ), c AS (
                SELECT x.id, x.keys, row_number() OVER (
                           ORDER BY x.rr, x.priority, x.turn, x.run_at, x.id)::integer AS ord
                FROM (SELECT * FROM taken UNION ALL SELECT * FROM further) x
                ORDER BY ord
                LIMIT want + 16
            ), k AS (
                SELECT c.ord, u.key FROM c CROSS JOIN LATERAL unnest(c.keys) AS u (key)
                WHERE c.keys IS NOT NULL
            )
            SELECT (SELECT array_agg(c.id ORDER BY c.ord) FROM c),
                   (SELECT array_agg(k.key ORDER BY k.ord) FROM k),
                   (SELECT array_agg(k.ord ORDER BY k.ord) FROM k)
            INTO cand, ckeys, cowner;
        END IF;
        EXIT WHEN cand IS NULL;
        seen := seen || cand;

        -- The limited keys first met this round, in the order the candidates
        -- carry them; those we can lock (256 per claim at most) get a budget.
        newkeys := NULL;
        IF ckeys IS NOT NULL THEN
            SELECT array_agg(d.key ORDER BY d.first) INTO newkeys
            FROM (SELECT u.key, min(u.n) AS first
                  FROM unnest(ckeys) WITH ORDINALITY AS u (key, n)
                  WHERE NOT (u.key = ANY(lkeys))
                  GROUP BY u.key) d
            WHERE EXISTS (SELECT 1 FROM skiplock.limits l
                          WHERE l.pattern = d.key OR (l.wildcard AND d.key LIKE l.like_pattern));
        END IF;
        IF newkeys IS NOT NULL THEN
            lkeys := lkeys || newkeys;
            tried := least(cardinality(newkeys), 256 - cardinality(bkeys));
            WITH locked AS (
                SELECT u.key FROM unnest(newkeys[1:256 - cardinality(bkeys)]) AS u (key)
                WHERE pg_try_advisory_xact_lock(hashtext('skiplock.limits'), hashtext(u.key))
            )
            SELECT array_agg(locked.key) INTO newkeys FROM locked;
            skipped := skipped OR coalesce(cardinality(newkeys), 0) < tried;
        END IF;
        IF newkeys IS NOT NULL THEN
            -- A new statement, a new snapshot: every claim of these keys committed
            -- before their locks were granted is seen. The running jobs of all newly
            -- locked keys are counted in one pass (jobs_limit_keys_idx), the starts
            -- per key and window only for keys with a rate limit.
            IF ts IS NULL THEN
                ts := clock_timestamp();
            END IF;
            WITH running AS (
                SELECT u.key, count(*)::integer AS c
                FROM skiplock.jobs r
                CROSS JOIN LATERAL unnest(r.limit_keys) AS u (key)
                WHERE r.state = 'running' AND r.limit_keys IS NOT NULL
                  AND r.limit_keys && newkeys AND u.key = ANY(newkeys)
                GROUP BY u.key
            ), budget AS (
                SELECT lk.key, greatest(min(least(
                           CASE WHEN l.max_running IS NULL THEN 2147483647
                                ELSE l.max_running - coalesce(rn.c, 0) END,
                           CASE WHEN l.max_starts IS NULL THEN 2147483647
                                ELSE l.max_starts - (
                                    SELECT count(*) FROM skiplock.limit_starts s
                                    WHERE s.key = lk.key
                                      AND s.started_at > ts - make_interval(secs => l.per_seconds)
                                )::integer
                           END)), 0) AS room,
                       bool_or(l.max_starts IS NOT NULL) AS by_rate
                FROM unnest(newkeys) AS lk (key)
                JOIN skiplock.limits l
                  ON l.pattern = lk.key OR (l.wildcard AND lk.key LIKE l.like_pattern)
                LEFT JOIN running rn ON rn.key = lk.key
                GROUP BY lk.key
            )
            SELECT bkeys || coalesce(array_agg(b.key), '{}'),
                   bleft || coalesce(array_agg(b.room), '{}'),
                   rated OR coalesce(bool_or(b.by_rate), false)
            INTO bkeys, bleft, rated
            FROM budget b;
        END IF;

        -- Admit in claim order: a candidate starts when every limited key of its
        -- has room left (a key locked by another claimer, or beyond the 256, has
        -- none), and then uses one place of each. Each candidate comes with the
        -- positions of its limited keys in bkeys/bleft (0: no room), so the loop
        -- does no search.
        refused := 0;
        FOR cid, cpos IN
            SELECT c.id,
                   array_agg(coalesce(b.pos, 0)::integer) FILTER (WHERE lk.key IS NOT NULL)
            FROM unnest(cand) WITH ORDINALITY AS c (id, ord)
            LEFT JOIN unnest(ckeys, cowner) AS u (key, o) ON u.o = c.ord
            LEFT JOIN unnest(lkeys) AS lk (key) ON lk.key = u.key
            LEFT JOIN unnest(bkeys) WITH ORDINALITY AS b (key, pos) ON b.key = u.key
            GROUP BY c.id, c.ord
            ORDER BY c.ord
        LOOP
            fits := true;
            IF cpos IS NOT NULL THEN
                FOREACH i IN ARRAY cpos LOOP
                    IF i = 0 OR bleft[i] <= 0 THEN
                        fits := false;
                        EXIT;
                    END IF;
                END LOOP;
                IF fits THEN
                    FOREACH i IN ARRAY cpos LOOP
                        bleft[i] := bleft[i] - 1;
                    END LOOP;
                END IF;
            END IF;
            IF fits THEN
                admitted := admitted || cid;
                EXIT WHEN cardinality(admitted) >= n;
            ELSE
                refused := refused + 1;
            END IF;
        END LOOP;

        EXIT WHEN cardinality(admitted) >= n OR refused = 0 OR rnd >= 2;
        -- Short because keys were full: look further, past the full keys' jobs.
        SELECT array_agg(lk.key) INTO fullkeys
        FROM unnest(lkeys) AS lk (key)
        LEFT JOIN unnest(bkeys, bleft) AS b (key, room) ON b.key = lk.key
        WHERE coalesce(b.room, 0) <= 0;
        fullkeys := coalesce(fullkeys, '{}');
    END LOOP;
    IF skipped AND cardinality(admitted) < n THEN
        -- Short, and keys were left out because another claimer was admitting
        -- them: once it commits they may have room, so wake the queues' workers
        -- (this one included) rather than leave them to their poll.
        PERFORM skiplock.announce(NULL::uuid[], NULL::skiplock.job_state[], NULL::real[], queues);
    END IF;
    IF cardinality(admitted) = 0 THEN
        RETURN;
    END IF;

    RETURN QUERY
    WITH claimed AS (
        UPDATE skiplock.jobs j SET
            state = 'running',
            attempt = j.attempt + 1,
            lease_token = gen_random_uuid(),
            lease_expires_at = now() + make_interval(secs => lease_seconds),
            worker_id = worker,
            started_at = coalesce(ts, now()),
            updated_at = now()
        WHERE j.id = ANY(admitted)
        RETURNING j.*
    ), logged AS (
        INSERT INTO skiplock.limit_starts (key, started_at, job_id)
        SELECT u.key, ts, ch.id
        FROM claimed ch
        CROSS JOIN LATERAL unnest(ch.limit_keys) AS u (key)
        WHERE rated AND ch.limit_keys IS NOT NULL AND u.key = ANY(bkeys)
          AND EXISTS (SELECT 1 FROM skiplock.limits l
                      WHERE l.max_starts IS NOT NULL
                        AND (l.pattern = u.key OR (l.wildcard AND u.key LIKE l.like_pattern)))
    ), announced AS (
        SELECT skiplock.announce(array_agg(ch.id), array_agg(ch.state), array_agg(ch.progress))
        FROM claimed ch
    )
    SELECT ch.* FROM claimed ch, announced;
END;
$$;

COMMENT ON FUNCTION skiplock.claim(text[], integer, float8, text, text) IS
    'Lease up to n due jobs of the given queues to worker: claim order in plain queues, '
    'round-robin over fair keys in fair queues, paused queues left out, every limit of '
    'skiplock.limits kept exactly. Returns the claimed rows (running, fresh lease token).';
