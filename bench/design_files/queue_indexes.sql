-- skiplock's two queue indexes: the claim walks the first in claim order over
-- claimable rows only; the rescuer finds expired leases in the second.
CREATE INDEX jobs_claim_idx ON jobs (queue, priority, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE state = 'running';
