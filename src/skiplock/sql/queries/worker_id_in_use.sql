-- worker_id_in_use: whether a live process holds worker id $1. Locks the
-- registration row (if any) until the end of the registering transaction.
-- Parameters: $1 worker id.
-- Result: no row when the id is not registered; else (in_use): true while the
--   registered process holds its presence lock, false when it is dead.
SELECT (SELECT p.alive FROM skiplock.worker_presence p WHERE p.id = w.id) AS in_use
FROM skiplock.workers w
WHERE w.id = $1::text
FOR UPDATE OF w
