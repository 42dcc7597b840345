-- v9's fill: the queued jobs of fill_wide.sql, each also with its queue row.
INSERT INTO queue (id, queue, priority, run_at)
SELECT id, queue, priority, run_at FROM jobs;
