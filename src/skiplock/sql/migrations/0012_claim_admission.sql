-- 0012_claim_admission: the claim under limits, at the cost of a plain claim
-- plus a few milliseconds per thousand jobs.
--
-- What 0010's claim spent its time on, with 1,000 distinct limited keys and a
-- claim of 1,000 (measured, docs/performance.md):
-- * it locked at most 256 keys per claim: a claim of 1,000 jobs over 1,000 keys
--   admitted about 256 in its first round, and every claim took the second round;
-- * membership tests against arrays of hundreds of keys (`key = ANY(keys)`,
--   `keys && full`) compare element by element, and PL/pgSQL's generic plans keep
--   them so: 1,000 running jobs × 1,000 keys was a million string comparisons per
--   count; plans with an unnest inside a nested loop rebuilt a hash per row;
-- * the UPDATE of the admitted ids, given as a constant array of hundreds of
--   ids, could be planned as a scan of the whole table.
--
-- Now: up to 1,024 keys are locked per claim (a lock table too full for them
-- gives the locks back and tries with half as many, down to 16); candidates are
-- n + n/4 (at least 16) so that the refused ones are replaced in one round; sets
-- of keys are jsonb objects (a lookup is a binary search, whatever the plan);
-- the limits matching a key are read once, with the key; running jobs are
-- counted through jobs_limit_keys_idx for up to 64 keys and by one pass over the
-- running jobs beyond; rooms, places and the keys met are computed in one
-- statement; the admission loop walks the flat arrays by index; the second
-- round runs only when the first got less than half of n; the UPDATE reads the
-- ids through a subquery's array (jobs_pkey). The
-- semantics are 0010's: limits kept exactly, claim order, no waiting on a lock.

CREATE OR REPLACE FUNCTION skiplock.claim(
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
    extra integer;   -- candidates locked beyond want, in place of those refused
    cand uuid[];     -- this round's candidates' ids, in claim order ...
    ckeys text[];    -- ... every key of every one of them, flat, in claim order ...
    cowner integer[];  -- ... and the candidate (its place in cand) that carries it
    nkeys integer;
    seen uuid[] := '{}';  -- every candidate of every round
    allnew text[];   -- limited keys first met this round ...
    trying text[];   -- ... those of them this claim tries to lock ...
    newkeys text[];  -- ... and those it locked
    minruns integer[];  -- per key of allnew: the least max_running of its limits ...
    byrate boolean[];   -- ... and whether one of them limits its starts
    lockset jsonb;   -- newkeys as a set (key -> true)
    rmap jsonb;      -- running jobs per newly locked key
    met jsonb := '{}';  -- every limited key met -> its place in bleft (0: no room:
                        -- locked by another claimer, or beyond the locks a claim takes)
    bleft integer[] := '{}';  -- room left (jobs that may still start) per locked key
    nlocked integer := 0;
    cap integer;     -- how many keys to try to lock
    fullmap jsonb;   -- limited keys with no room left, as a set
    refused integer := 0;  -- candidates refused this round for a key without room
    rated boolean := false;  -- some locked key has a rate limit
    skipped boolean := false;  -- a key was left out: another claimer held its lock
    walked text;     -- the last fair key round 1 walked (round 2 goes on after it)
    admitted uuid[] := '{}';
    nadm integer := 0;
    ts timestamptz;
    p integer;       -- place in ckeys
    o integer;       -- place in cand
    q integer;
    first integer;
    pos integer;
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
        want := n - nadm;
        extra := greatest(16, want / 4);
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
                        LIMIT want + extra
                        FOR UPDATE SKIP LOCKED
                    ) p
                    UNION ALL
                    SELECT f.id, f.keys, f.rr, f.priority, f.turn, f.run_at, f.fair_key
                    FROM unnest(fair) AS wanted (queue)
                    CROSS JOIN LATERAL skiplock.fair_candidates(wanted.queue, want + extra, fair_after) f
                ) c
                ORDER BY c.rr, c.priority, c.turn, c.run_at, c.id
                LIMIT want + extra
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
                  AND NOT coalesce(fullmap ?| s.limit_keys, false)
                ORDER BY s.priority, s.run_at, s.id
                LIMIT want + extra
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
                  AND NOT coalesce(fullmap ?| f.keys, false)
            ), c AS (
                SELECT x.id, x.keys, row_number() OVER (
                           ORDER BY x.rr, x.priority, x.turn, x.run_at, x.id)::integer AS ord
                FROM (SELECT * FROM taken UNION ALL SELECT * FROM further) x
                ORDER BY ord
                LIMIT want + extra
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
        nkeys := coalesce(cardinality(ckeys), 0);

        -- The limited keys first met this round, in the order the candidates
        -- carry them, each with the least max_running of the limits matching it
        -- and whether one of them is a rate limit (membership tests go through
        -- jsonb objects: a binary search, whatever plan the statement gets).
        allnew := NULL;
        newkeys := NULL;
        lockset := '{}';
        IF nkeys > 0 THEN
            SELECT array_agg(m.key ORDER BY m.first), array_agg(m.minrun ORDER BY m.first),
                   array_agg(m.by_rate ORDER BY m.first)
            INTO allnew, minruns, byrate
            FROM (SELECT d.key, d.first, min(l.max_running) AS minrun,
                         bool_or(l.max_starts IS NOT NULL) AS by_rate
                  FROM (SELECT u.key, min(u.n) AS first
                        FROM unnest(ckeys) WITH ORDINALITY AS u (key, n)
                        WHERE NOT met ? u.key
                        GROUP BY u.key) d
                  JOIN skiplock.limits l
                    ON l.pattern = d.key OR (l.wildcard AND d.key LIKE l.like_pattern)
                  GROUP BY d.key, d.first) m;
        END IF;
        IF allnew IS NOT NULL THEN
            -- Lock those the first candidates carry, 1,024 per claim at most (a
            -- lock is an entry in the server's shared lock table until the claim
            -- commits, a few milliseconds). When the table is full (out of shared
            -- memory: max_locks_per_transaction), the block's locks are given
            -- back and half as many are tried, down to 16; then none.
            cap := 1024 - nlocked;
            LOOP
                trying := allnew[1:cap];
                EXIT WHEN coalesce(cardinality(trying), 0) = 0;
                BEGIN
                    SELECT array_agg(u.key), coalesce(jsonb_object_agg(u.key, true), '{}')
                    INTO newkeys, lockset
                    FROM unnest(trying) AS u (key)
                    WHERE pg_try_advisory_xact_lock(hashtext('skiplock.limits'), hashtext(u.key));
                    EXIT;
                EXCEPTION WHEN out_of_memory THEN
                    newkeys := NULL;
                    lockset := '{}';
                    cap := CASE WHEN cap > 16 THEN cap / 2 ELSE 0 END;
                END;
            END LOOP;
            skipped := skipped OR coalesce(cardinality(newkeys), 0) < coalesce(cardinality(trying), 0);

            -- A new statement, a new snapshot: every claim of the locked keys
            -- committed before their locks were granted is seen. Running jobs per
            -- key: for a few keys through jobs_limit_keys_idx, for many by one pass
            -- over the running jobs (a set lookup per key they carry).
            rmap := '{}';
            IF newkeys IS NOT NULL THEN
                IF ts IS NULL THEN
                    ts := clock_timestamp();
                END IF;
                IF cardinality(newkeys) <= 64 THEN
                    SELECT coalesce(jsonb_object_agg(x.key, x.c), '{}') INTO rmap
                    FROM (SELECT u.key, count(*) AS c
                          FROM skiplock.jobs r
                          CROSS JOIN LATERAL unnest(r.limit_keys) AS u (key)
                          WHERE r.state = 'running' AND r.limit_keys IS NOT NULL
                            AND r.limit_keys && newkeys AND u.key = ANY(newkeys)
                          GROUP BY u.key) x;
                ELSE
                    SELECT coalesce(jsonb_object_agg(x.key, x.c), '{}') INTO rmap
                    FROM (SELECT u.key, count(*) AS c
                          FROM skiplock.jobs r
                          CROSS JOIN LATERAL unnest(r.limit_keys) AS u (key)
                          WHERE r.state = 'running' AND r.limit_keys IS NOT NULL
                            AND lockset ?| r.limit_keys AND lockset ? u.key
                          GROUP BY u.key) x;
                END IF;
            END IF;

            -- Every key met is remembered in met: a locked key with its place in
            -- bleft and its room (under each limit matching it: max_running less
            -- its running jobs, max_starts less its starts in the window), the
            -- others (another claimer's, beyond the locks) with place 0, no room.
            SELECT met || jsonb_object_agg(x.key, CASE WHEN x.locked THEN x.place ELSE 0 END),
                   bleft || coalesce(array_agg(x.room ORDER BY x.i) FILTER (WHERE x.locked), '{}'),
                   nlocked + (count(*) FILTER (WHERE x.locked))::integer,
                   rated OR coalesce(bool_or(x.by_rate) FILTER (WHERE x.locked), false)
            INTO met, bleft, nlocked, rated
            FROM (
                SELECT u.key, u.i, u.by_rate, lockset ? u.key AS locked,
                       nlocked + (count(*) FILTER (WHERE lockset ? u.key) OVER (ORDER BY u.i))::integer
                           AS place,
                       CASE WHEN lockset ? u.key THEN greatest(least(
                           coalesce(u.minrun - coalesce((rmap ->> u.key)::integer, 0), 2147483647),
                           CASE WHEN u.by_rate THEN (
                               SELECT min(l.max_starts - (
                                          SELECT count(*) FROM skiplock.limit_starts s
                                          WHERE s.key = u.key
                                            AND s.started_at > ts - make_interval(secs => l.per_seconds)
                                      )::integer)
                               FROM skiplock.limits l
                               WHERE l.max_starts IS NOT NULL
                                 AND (l.pattern = u.key OR (l.wildcard AND u.key LIKE l.like_pattern))
                           ) END), 0) END AS room
                FROM unnest(allnew, minruns, byrate) WITH ORDINALITY AS u (key, minrun, by_rate, i)
            ) x;
        END IF;

        -- Admit in claim order: a candidate starts when every limited key of its
        -- has room left, and then uses one place of each. A candidate's keys are
        -- the run of ckeys whose owner is its place.
        refused := 0;
        p := 1;
        FOR o IN 1 .. cardinality(cand) LOOP
            fits := true;
            first := p;
            WHILE p <= nkeys AND cowner[p] = o LOOP
                IF fits THEN
                    pos := (met ->> ckeys[p])::integer;
                    IF pos = 0 OR bleft[pos] <= 0 THEN
                        fits := false;
                    END IF;
                END IF;
                p := p + 1;
            END LOOP;
            IF fits THEN
                FOR q IN first .. p - 1 LOOP
                    pos := (met ->> ckeys[q])::integer;
                    IF pos IS NOT NULL THEN
                        bleft[pos] := bleft[pos] - 1;
                    END IF;
                END LOOP;
                nadm := nadm + 1;
                admitted[nadm] := cand[o];
                EXIT WHEN nadm >= n;
            ELSE
                refused := refused + 1;
            END IF;
        END LOOP;

        -- A claim that got half of what it asked for is done (the next claim
        -- goes on); one left shorter because keys were full looks further, past
        -- the full keys' jobs, once.
        EXIT WHEN nadm * 2 >= n OR refused = 0 OR rnd >= 2;
        SELECT coalesce(jsonb_object_agg(m.key, true), '{}') INTO fullmap
        FROM jsonb_each_text(met) AS m (key, place)
        WHERE m.place::integer = 0 OR bleft[m.place::integer] <= 0;
    END LOOP;
    IF skipped AND nadm < n THEN
        -- Short, and keys were left out because another claimer was admitting
        -- them: once it commits they may have room, so wake the queues' workers
        -- (this one included) rather than leave them to their poll.
        PERFORM skiplock.announce(NULL::uuid[], NULL::skiplock.job_state[], NULL::real[], queues);
    END IF;
    IF nadm = 0 THEN
        RETURN;
    END IF;

    -- The ids as a subquery's array: the planner reads them through jobs_pkey
    -- whatever their number (a constant array of hundreds of ids can make it
    -- choose a scan of the whole table).
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
        WHERE j.id = ANY(ARRAY(SELECT unnest(admitted)))
        RETURNING j.*
    ), logged AS (
        INSERT INTO skiplock.limit_starts (key, started_at, job_id)
        SELECT u.key, ts, ch.id
        FROM claimed ch
        CROSS JOIN LATERAL unnest(ch.limit_keys) AS u (key)
        WHERE rated AND ch.limit_keys IS NOT NULL AND (met ->> u.key)::integer > 0
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
