-- The queued jobs every run starts from (bench.rows of them, set by the runner),
-- in claim order, with time-ordered ids like skiplock's; the other columns take
-- their defaults.
INSERT INTO jobs (id, queue, task, args)
SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'default', 'noop', '{}'
FROM generate_series(1, current_setting('bench.rows')::bigint) AS i;
