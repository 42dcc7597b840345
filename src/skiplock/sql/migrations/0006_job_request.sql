-- 0006_job_request: each lease column constrained on its own.
--
-- jobs_lease_check (0001) tied the state to the PAIR (lease_token,
-- lease_expires_at): a queued or finished row could still carry a token
-- (with a NULL expiry), while the writes fenced by the token alone
-- (complete_jobs, update_progress, heartbeat_jobs) rely on "a token means
-- running". Rows the old check let through are cleaned first (a lease on a row
-- that is not running is no lease), then one check per column replaces it.
-- Adding a CHECK scans the table once under its ACCESS EXCLUSIVE lock.

UPDATE skiplock.jobs SET lease_token = NULL, lease_expires_at = NULL
WHERE state <> 'running' AND (lease_token IS NOT NULL OR lease_expires_at IS NOT NULL);

ALTER TABLE skiplock.jobs
    DROP CONSTRAINT jobs_lease_check,
    -- a lease token exists exactly while the job runs
    ADD CONSTRAINT jobs_lease_token_check CHECK ((state = 'running') = (lease_token IS NOT NULL)),
    -- ...and so does its expiry
    ADD CONSTRAINT jobs_lease_expires_check
        CHECK ((state = 'running') = (lease_expires_at IS NOT NULL)),
    -- a running job names its worker (the last worker stays named after it ends)
    ADD CONSTRAINT jobs_running_worker_check CHECK (state <> 'running' OR worker_id IS NOT NULL);
