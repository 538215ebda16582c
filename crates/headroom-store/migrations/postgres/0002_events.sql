-- The event log (see the SQLite migration 0004_events.sql for what each column holds).
CREATE TABLE events (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         BIGINT NOT NULL,
    level      TEXT NOT NULL,
    level_rank BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    upstream   TEXT,
    tenant     TEXT,
    queue      TEXT,
    endpoint   TEXT,
    job_id     TEXT,
    attempt    BIGINT,
    status     BIGINT,
    wait_ms    BIGINT,
    outcome    TEXT NOT NULL,
    headers    TEXT NOT NULL,
    message    TEXT NOT NULL
);

CREATE INDEX events_at ON events (at);
CREATE INDEX events_upstream ON events (upstream, seq);
CREATE INDEX events_tenant ON events (tenant, seq);
CREATE INDEX events_queue ON events (queue, seq);
