-- v7: skiplock's statement-level AFTER UPDATE trigger with transition tables,
-- calling the migrated function itself (skiplock.announce_updated, as of the
-- latest migration): a few NOTIFYs per statement on channel public.job.
CREATE TRIGGER jobs_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.announce_updated();
