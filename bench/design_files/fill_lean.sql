-- The queued jobs every run of the lean design starts from (bench.rows of them).
INSERT INTO lean.jobs (queue, task, payload)
SELECT 'default', 'noop', 'null' FROM generate_series(1, current_setting('bench.rows')::bigint);
