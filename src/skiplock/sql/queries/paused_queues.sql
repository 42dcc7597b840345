-- paused_queues: which of the given queues are paused (a worker's check, each
-- poll, for the jobs it holds but has not started).
-- Parameters: $1 queues text[]. Result: the paused ones' names.
SELECT s.name FROM skiplock.queues s WHERE s.paused AND s.name = ANY($1::text[])
