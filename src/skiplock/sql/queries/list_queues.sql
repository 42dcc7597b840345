-- list_queues: the queues with switches (a queue without a row is neither
-- paused nor fair), by name. Parameters: none.
-- Result: name, paused, fair, updated_at.
SELECT s.name, s.paused, s.fair, s.updated_at
FROM skiplock.queues s
ORDER BY s.name
