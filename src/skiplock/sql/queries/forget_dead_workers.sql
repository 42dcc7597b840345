-- forget_dead_workers: delete the registrations of dead workers (presence lock
-- not held, checked again here) that no running job names any more.
-- Parameters: $1 worker ids text[]. Result: (id) of the rows deleted.
DELETE FROM skiplock.workers w
USING skiplock.worker_presence p
WHERE w.id = ANY($1::text[])
  AND p.id = w.id
  AND p.lock_key = w.lock_key
  AND p.dead
  AND NOT EXISTS (
      SELECT FROM skiplock.jobs j WHERE j.state = 'running' AND j.worker_id = w.id
  )
RETURNING w.id
