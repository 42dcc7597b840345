-- register_worker: (re-)register worker $1 under a fresh lock key and take its
-- presence lock, a session-level advisory lock held until the connection
-- closes. Run in a transaction: other sessions see the row only once the lock
-- is already held, so a worker never looks dead while registering.
-- Parameters: $1 worker id, $2 host, $3 pid.
-- Result: (lock_key, locked); locked is false only if the fresh key's lock is
--   somehow held already (the sequence wrapped onto a live worker's key).
WITH registered AS (
    INSERT INTO skiplock.workers AS w (id, host, pid)
    VALUES ($1::text, $2::text, $3::integer)
    ON CONFLICT (id) DO UPDATE SET
        lock_key = nextval('skiplock.worker_lock_key_seq'),
        host = excluded.host,
        pid = excluded.pid,
        started_at = now()
    RETURNING w.lock_key
)
SELECT r.lock_key, pg_try_advisory_lock(hashtext('skiplock.workers'), r.lock_key) AS locked
FROM registered r
