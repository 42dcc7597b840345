-- queue_flow: each queue with jobs queued or running, or with a switch set
-- (view skiplock.queue_flow, migration 0011), by name.
-- Parameters: none. Result: queue, paused, fair, queued, running, throttled.
SELECT f.queue, f.paused, f.fair, f.queued, f.running, f.throttled
FROM skiplock.queue_flow f
ORDER BY f.queue
