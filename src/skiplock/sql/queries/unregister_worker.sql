-- unregister_worker: a worker stopping gracefully deletes its registration
-- (then closes its presence connection, which releases the lock).
-- Parameters: $1 worker id, $2 its lock key (a newer registration of the id stays).
-- Result: none.
DELETE FROM skiplock.workers WHERE id = $1::text AND lock_key = $2::integer
