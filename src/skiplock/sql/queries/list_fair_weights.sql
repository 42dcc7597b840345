-- list_fair_weights: the fair keys' weights that are not the default (1).
-- Parameters: none. Result: queue, fair_key, weight, by queue and key.
SELECT w.queue, w.fair_key, w.weight FROM skiplock.fair_weights w ORDER BY w.queue, w.fair_key
