-- dead_workers: registered workers whose presence lock is no longer held:
-- their process died (or lost its presence connection); after a server
-- restart, only those that have not registered again within 30 s. Cheap enough to run
-- every second on every worker: it reads only the workers table and pg_locks.
-- Parameters: none. Result: (id) of every dead worker.
SELECT p.id FROM skiplock.worker_presence p WHERE p.dead
