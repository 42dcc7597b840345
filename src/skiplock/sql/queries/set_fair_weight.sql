-- set_fair_weight: the weight of a fair key in a fair queue (jobs per round;
-- default 1); NULL removes it (back to 1).
-- Parameters: $1 queue, $2 fair key, $3 weight integer or NULL.
-- Result: one row per weight stored (none when removed).
WITH removed AS (
    DELETE FROM skiplock.fair_weights w
    WHERE $3::integer IS NULL AND w.queue = $1::text AND w.fair_key = $2::text
), stored AS (
    INSERT INTO skiplock.fair_weights AS w (queue, fair_key, weight)
    SELECT $1::text, $2::text, $3::integer WHERE $3::integer IS NOT NULL
    ON CONFLICT (queue, fair_key) DO UPDATE SET weight = excluded.weight
    RETURNING w.queue, w.fair_key, w.weight
)
SELECT st.queue, st.fair_key, st.weight FROM stored st
