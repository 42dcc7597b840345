-- expired_jobs: the ids of running jobs whose lease expired, in the order
-- rescue_expired takes them, leaving out the ids in $2. Read-only: when
-- rescue_expired is refused even for one row, this names that row, so the
-- rescuer can leave it out and go on with the others.
-- Parameters: $1 limit, $2 ids to leave out uuid[].
-- Result: id of each expired job, oldest lease first.
SELECT e.id
FROM skiplock.jobs e
WHERE e.state = 'running' AND e.lease_expires_at < now()
  AND e.id <> ALL($2::uuid[])
ORDER BY e.lease_expires_at
LIMIT $1
