-- v7: skiplock's statement-level AFTER UPDATE trigger with transition tables,
-- as migration 0008 left it (bench/designs.py runs 0008's text first, which
-- makes skiplock.announce_updated() again: 0009 dropped it): a few NOTIFYs per
-- statement on channel public.job.
CREATE TRIGGER jobs_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.announce_updated();
