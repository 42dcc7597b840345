-- apply_limit_keys: give queued and running jobs the implicit keys
-- (queue:<queue>, task:<task>, tenant:<tenant>, tenant:<tenant>/task:<task>)
-- that a limit of pattern $1 matches, so a limit set now also holds the jobs
-- already waiting or running (explicit keys were stored at enqueue). An
-- operator's call, not the hot path: it reads every queued and running job.
-- Parameters: $1 pattern. Result: one row, the number of jobs given a key.
WITH given AS (
    UPDATE skiplock.jobs j
    SET limit_keys = skiplock.job_limit_keys(j.limit_keys, j.queue, j.task, j.tenant)
    FROM skiplock.limits l
    WHERE l.pattern = $1::text
      AND j.state IN ('queued', 'running')
      AND (('queue:' || j.queue) LIKE l.like_pattern
           OR ('task:' || j.task) LIKE l.like_pattern
           OR ('tenant:' || j.tenant) LIKE l.like_pattern
           OR ('tenant:' || j.tenant || '/task:' || j.task) LIKE l.like_pattern)
      AND skiplock.job_limit_keys(j.limit_keys, j.queue, j.task, j.tenant)
          IS DISTINCT FROM j.limit_keys
    RETURNING j.id
)
SELECT count(*)::integer AS given FROM given
