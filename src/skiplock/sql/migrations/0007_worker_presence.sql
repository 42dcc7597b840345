-- 0007_worker_presence: workers register themselves, so that a dead worker's
-- jobs are rescued as soon as PostgreSQL sees its connection close, not only
-- when their lease expires.
--
-- Each worker, for its whole life, holds a session-level advisory lock on a
-- dedicated connection: pg_advisory_lock(hashtext('skiplock.workers'),
-- lock_key), the first half of the key naming this schema's worker
-- registrations, the second the worker's lock_key below. A process that dies
-- (kill -9, OOM, a crash) closes its connections, the server drops the lock,
-- and any worker's rescuer (reading only this table and pg_locks, about every
-- second) re-queues the dead worker's running jobs with their attempt counted.
-- The lease stays for what the database cannot see: a hung but connected
-- worker, or a network partition. A worker that cannot hold such a lock (one
-- behind PgBouncer in transaction mode with no direct connection) does not
-- register, and its jobs rely on the lease alone.

-- Lock keys come from a sequence, never from a hash of the id: two live
-- workers never share one. int4 keys, cycling after 2^31 - 1 registrations.
CREATE SEQUENCE skiplock.worker_lock_key_seq AS integer MINVALUE 1 CYCLE;

CREATE TABLE skiplock.workers (
    id            text PRIMARY KEY,
    lock_key      integer NOT NULL UNIQUE
                  DEFAULT nextval('skiplock.worker_lock_key_seq'),
    host          text NOT NULL,
    pid           integer NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now()
);

ALTER SEQUENCE skiplock.worker_lock_key_seq OWNED BY skiplock.workers.lock_key;

COMMENT ON TABLE skiplock.workers IS
    'Registered workers: each holds pg_advisory_lock(hashtext(''skiplock.workers''), lock_key) '
    'on a dedicated connection while alive. A registered worker whose lock is not held is '
    'dead: rescuers re-queue its running jobs at once and delete its row.';
COMMENT ON COLUMN skiplock.workers.lock_key IS
    'Second key of the worker''s session advisory lock (pg_locks.objid, objsubid 2).';
COMMENT ON COLUMN skiplock.workers.started_at IS
    'When this registration was made (the worker''s start, or its last reconnect).';

-- Every registered worker, whether its presence lock is held now (alive), and
-- whether it is taken for dead: not alive, unless its registration is older
-- than the server's last start and that start is less than 30 s ago. A
-- restart ends every session at once: the workers live on, reconnect and
-- register anew within seconds (backoff at most 5 s), keeping their jobs;
-- one that does not come back within 30 s is dead. The rescuers read `dead`.
CREATE VIEW skiplock.worker_presence AS
SELECT p.id, p.host, p.pid, p.started_at, p.lock_key, p.alive,
       NOT p.alive AND NOT (p.started_at < pg_postmaster_start_time()
                            AND now() < pg_postmaster_start_time() + interval '30 seconds')
           AS dead
FROM (
    SELECT w.id, w.host, w.pid, w.started_at, w.lock_key,
           EXISTS (
               SELECT FROM pg_locks l
               WHERE l.locktype = 'advisory'
                 AND l.database = (SELECT d.oid FROM pg_database d
                                   WHERE d.datname = current_database())
                 AND l.classid = hashtext('skiplock.workers')::oid
                 AND l.objid = w.lock_key::oid
                 AND l.objsubid = 2
                 AND l.granted
           ) AS alive
    FROM skiplock.workers w
) p;

COMMENT ON VIEW skiplock.worker_presence IS
    'Registered workers, whether each is alive (holds its presence lock) and whether it is '
    'taken for dead (not alive, and not within 30 s of a server restart it registered '
    'before). A dead one''s running jobs are re-queued by the next rescuer, within about a '
    'second.';
