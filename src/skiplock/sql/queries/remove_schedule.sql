-- remove_schedule: delete a schedule (its jobs stay). A worker whose code still
-- declares it writes it again when it starts.
-- Parameters: $1 name.
-- Result: the name; no row when there was no such schedule.
DELETE FROM skiplock.schedules WHERE name = $1::text RETURNING name
