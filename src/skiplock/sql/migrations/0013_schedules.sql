-- 0013_schedules: periodic jobs. A schedule is declared in code (a worker writes
-- its definition at start) and runs on any number of workers: each one looks
-- at the due schedules every schedule_poll seconds, takes each row with
-- FOR UPDATE SKIP LOCKED, enqueues the job of each due tick and moves last_tick
-- forward in the same transaction. A tick's job exists exactly when last_tick
-- has passed it, so no tick is enqueued twice, whatever the number of workers
-- and whatever crashes; the job's idempotency key (schedule:<name>:<tick>) is a
-- second guard. Ticks are computed by the workers from the cron expression in
-- the schedule's time zone (or every `every_seconds`, aligned to the epoch), by
-- the database's clock.

CREATE TABLE skiplock.schedules (
    name          text PRIMARY KEY,
    cron          text,
    every_seconds double precision,
    timezone      text NOT NULL DEFAULT 'UTC',
    task          text NOT NULL,
    args          jsonb NOT NULL DEFAULT '{}',
    queue         text NOT NULL DEFAULT 'default',
    tenant        text NOT NULL DEFAULT 'default',
    priority      smallint NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT 3,
    catch_up      text NOT NULL DEFAULT 'once',
    paused        boolean NOT NULL DEFAULT false,
    last_tick     timestamptz,
    next_tick     timestamptz,
    last_job_id   uuid,
    declared_at   timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_name_check CHECK (name <> '' AND length(name) <= 128),
    CONSTRAINT schedules_when_check CHECK ((cron IS NULL) <> (every_seconds IS NULL)),
    CONSTRAINT schedules_every_check CHECK (every_seconds >= 0.01 AND every_seconds <= 366 * 86400),
    CONSTRAINT schedules_cron_check CHECK (length(cron) BETWEEN 1 AND 256),
    CONSTRAINT schedules_catch_up_check CHECK (catch_up IN ('skip', 'once', 'all')),
    CONSTRAINT schedules_task_check CHECK (task <> '' AND length(task) <= 200),
    CONSTRAINT schedules_args_check CHECK (jsonb_typeof(args) = 'object')
);

COMMENT ON TABLE skiplock.schedules IS
    'Periodic jobs: one job per tick of cron (in timezone) or every every_seconds; '
    'last_tick is the last tick handled (enqueued, or skipped by catch_up), next_tick the '
    'next one due. paused: no tick is enqueued; a resumed schedule goes on from the next tick '
    '(the ticks missed while paused are not caught up).';

-- The workers' look at due schedules: only rows whose next tick has come.
CREATE INDEX schedules_due_idx ON skiplock.schedules (next_tick) WHERE NOT paused;
