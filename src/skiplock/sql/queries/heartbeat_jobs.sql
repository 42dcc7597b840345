-- heartbeat_jobs: extend the leases of all of a worker's in-flight jobs.
-- Parameters: $1 ids uuid[], $2 lease tokens uuid[] (pairs by position),
--   $3 lease seconds float8.
-- Result: (id, cancel_requested) for every lease still held; a missing id is
--   a lost lease.
UPDATE skiplock.jobs j SET
    lease_expires_at = now() + make_interval(secs => $3::float8)
FROM unnest($1::uuid[], $2::uuid[]) AS h (id, lease_token)
WHERE j.id = h.id AND j.lease_token = h.lease_token AND j.state = 'running'
RETURNING j.id, j.cancel_requested
