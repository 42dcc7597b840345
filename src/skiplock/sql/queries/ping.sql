-- ping: the database answers (readiness probes).
-- Parameters: none. Result: 1.
SELECT 1
