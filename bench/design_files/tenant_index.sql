-- skiplock's tenant listing (newest first, keyset pagination): a full index, so
-- every non-HOT update of a row writes an entry in it.
CREATE INDEX jobs_tenant_created_idx ON jobs (tenant, created_at DESC, id DESC);
