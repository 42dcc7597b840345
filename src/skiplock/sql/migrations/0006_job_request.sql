-- 0006_job_request: what a job row may hold, and what an enqueue request sets.
--   1. each lease column constrained on its own (and a running job's worker);
--   2. expiry (expires_at, from 0003) and a per-job timeout (timeout_seconds);
--   3. the request fingerprint that idempotency compares.
--
-- 1. jobs_lease_check (0001) tied the state to the PAIR (lease_token,
-- lease_expires_at): a queued or finished row could still carry a token
-- (with a NULL expiry), while the writes fenced by the token alone
-- (complete_jobs, update_progress, heartbeat_jobs) rely on "a token means
-- running". Rows the old check let through are cleaned first (a lease on a row
-- that is not running is no lease), then one check per column replaces it.
-- Adding a CHECK scans the table once under its ACCESS EXCLUSIVE lock.

UPDATE skiplock.jobs SET lease_token = NULL, lease_expires_at = NULL
WHERE state <> 'running' AND (lease_token IS NOT NULL OR lease_expires_at IS NOT NULL);

-- Claims always named their worker; a running row written by hand without one
-- gets a placeholder rather than failing the migration.
UPDATE skiplock.jobs SET worker_id = '?'
WHERE state = 'running' AND worker_id IS NULL;

ALTER TABLE skiplock.jobs
    DROP CONSTRAINT jobs_lease_check,
    -- a lease token exists exactly while the job runs
    ADD CONSTRAINT jobs_lease_token_check CHECK ((state = 'running') = (lease_token IS NOT NULL)),
    -- ...and so does its expiry
    ADD CONSTRAINT jobs_lease_expires_check
        CHECK ((state = 'running') = (lease_expires_at IS NOT NULL)),
    -- a running job names its worker (the last worker stays named after it ends)
    ADD CONSTRAINT jobs_running_worker_check CHECK (state <> 'running' OR worker_id IS NOT NULL);

-- 2. Expiry and a per-job timeout, set at enqueue (JobSpec.expires_at, .timeout).
--
-- expires_at (0003) could not be set by anything. Its meaning now: a job not
-- started by then never starts (claim_jobs skips it; expire_jobs ends it
-- 'cancelled' with an 'Expired' entry in its history); a job that finished
-- before it is deleted by retention once it passes; a job that finished at or
-- after it is kept for its state's retention age like any other.
COMMENT ON COLUMN skiplock.jobs.expires_at IS
    'Optional deadline set at enqueue: a job not started by then never starts (it ends '
    'cancelled, with an Expired entry in errors); a job finished before it is deleted by '
    'retention once it passes.';

-- timeout_seconds: how long one attempt may run, instead of the task's timeout.
ALTER TABLE skiplock.jobs
    ADD COLUMN timeout_seconds float8,
    ADD CONSTRAINT jobs_timeout_check
        CHECK (timeout_seconds > 0 AND timeout_seconds < 'Infinity'::float8);

COMMENT ON COLUMN skiplock.jobs.timeout_seconds IS
    'Optional per-job timeout in seconds for one attempt; overrides the task''s timeout.';

-- expire_jobs finds queued jobs past their expiry here.
CREATE INDEX jobs_queued_expiry_idx ON skiplock.jobs (expires_at)
    WHERE state = 'queued' AND expires_at IS NOT NULL;

-- 3. request_fingerprint: SHA-256 (hex) of the canonical request that made the job
-- (JobSpec.fingerprint, computed by the client: every field but the id, with a
-- delay as given rather than the run_at it makes). The same idempotency key
-- with another fingerprint is a conflict. Jobs enqueued before this migration
-- have NULL, and their key is compared on task and args as before.
ALTER TABLE skiplock.jobs
    ADD COLUMN request_fingerprint text,
    ADD CONSTRAINT jobs_request_fingerprint_check
        CHECK (request_fingerprint ~ '^[0-9a-f]{64}$');

COMMENT ON COLUMN skiplock.jobs.request_fingerprint IS
    'SHA-256 (hex) of the canonical enqueue request; NULL for jobs made before 0006.';
