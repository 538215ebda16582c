-- Schedules: cron definitions, the next fire time of each (schedule, tenant), and every run.
--
-- Times are milliseconds since the Unix epoch (BIGINT). `INTEGER PRIMARY KEY AUTOINCREMENT`
-- is the only SQLite-specific construct (PostgreSQL: `BIGINT GENERATED ALWAYS AS IDENTITY`).

CREATE TABLE schedules (
    name         TEXT PRIMARY KEY,
    -- The definition as given (config table or API body), as JSON.
    definition   TEXT NOT NULL,
    -- 1 when it comes from the config file: the config owns it (synced at start).
    from_config  INTEGER NOT NULL,
    paused       INTEGER NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- The next run of each tenant of a schedule. `fire_at` is the cron time, `due_at` that
-- plus the tenant's stagger offset. A run is claimed and the slot advanced in one
-- transaction, so a restart neither loses nor repeats a run.
CREATE TABLE schedule_slots (
    schedule  TEXT NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
    tenant    TEXT NOT NULL,
    fire_at   BIGINT NOT NULL,
    due_at    BIGINT NOT NULL,
    PRIMARY KEY (schedule, tenant)
);

CREATE INDEX schedule_slots_due ON schedule_slots (due_at);

-- Every run: fired (with the job or batch it enqueued), skipped (and why) or failed (the
-- template could not be enqueued). A fired run's outcome is its job's or batch's status.
CREATE TABLE schedule_runs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule     TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    fire_at      BIGINT NOT NULL,
    due_at       BIGINT NOT NULL,
    -- The scheduler's time when it acted.
    recorded_at  BIGINT NOT NULL,
    -- fired | skipped | failed
    outcome      TEXT NOT NULL,
    reason       TEXT,
    job_id       TEXT,
    batch_id     TEXT
);

CREATE INDEX schedule_runs_by_schedule ON schedule_runs (schedule, seq);
-- Retention: runs older than two weeks are deleted.
CREATE INDEX schedule_runs_recorded ON schedule_runs (recorded_at);
-- The last fired run of a (schedule, tenant): what `overlap = "skip"` looks at.
CREATE INDEX schedule_runs_last_fired ON schedule_runs (schedule, tenant, seq)
    WHERE outcome = 'fired';

-- Tenants holding a credential for an upstream (schedules that run for all of them).
CREATE INDEX credentials_by_upstream ON credentials (upstream, tenant);
