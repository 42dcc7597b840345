-- older_transactions: how many other client sessions of this database still
-- run a transaction (or a statement's snapshot) older than transaction $1: a
-- write they make may not have seen $1's change. The caller waits until none
-- is left.
-- Parameters: $1 transaction id (text: pg_current_xact_id() of the writer).
-- Result: one row, the count.
SELECT count(*)::integer AS older
FROM pg_stat_activity a
WHERE a.pid <> pg_backend_pid()
  AND a.datname = current_database() AND a.backend_type = 'client backend'
  AND ((a.backend_xid IS NOT NULL AND age(a.backend_xid) >= age(($1::text::bigint % 4294967296)::text::xid))
       OR (a.backend_xmin IS NOT NULL AND age(a.backend_xmin) >= age(($1::text::bigint % 4294967296)::text::xid)))
