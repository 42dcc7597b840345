-- dead_workers: registered workers whose presence lock is no longer held:
-- their process died (or lost its presence connection). Cheap enough to run
-- every second on every worker: it reads only the workers table and pg_locks.
-- Parameters: none. Result: (id) of every dead worker.
SELECT p.id FROM skiplock.worker_presence p WHERE NOT p.alive
