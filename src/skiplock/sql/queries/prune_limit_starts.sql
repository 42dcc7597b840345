-- prune_limit_starts: delete logged starts older than every rate window (the
-- longest per_seconds of skiplock.limits; all of them when no limit has a
-- rate), at most $1 rows per call (through limit_starts_at_idx, a BRIN index:
-- the log is appended in time order).
-- Parameters: $1 limit. Result: one row, the number deleted.
WITH old AS (
    SELECT s.ctid
    FROM skiplock.limit_starts s
    WHERE s.started_at < now() - make_interval(secs => coalesce(
        (SELECT max(l.per_seconds) FROM skiplock.limits l), 0))
    LIMIT $1
), deleted AS (
    DELETE FROM skiplock.limit_starts s USING old WHERE s.ctid = old.ctid RETURNING 1
)
SELECT count(*)::integer AS deleted FROM deleted
