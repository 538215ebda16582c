-- The event log: every rate-limit event (throttled response, retry, backoff, budget pause,
-- breaker transition, retry exhaustion, job failure), kept for the retention (default 14
-- days) and searchable by level, upstream, tenant, queue and time.
--
-- Times are milliseconds since the Unix epoch (BIGINT). `INTEGER PRIMARY KEY AUTOINCREMENT`
-- is the only SQLite-specific construct (PostgreSQL: `BIGINT GENERATED ALWAYS AS IDENTITY`).

CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         BIGINT NOT NULL,
    -- debug, info, warn, error; `level_rank` (0 to 3) orders them for "at or above".
    level      TEXT NOT NULL,
    level_rank INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    upstream   TEXT,
    tenant     TEXT,
    queue      TEXT,
    -- Method and path, never the query.
    endpoint   TEXT,
    job_id     TEXT,
    attempt    INTEGER,
    status     INTEGER,
    wait_ms    BIGINT,
    outcome    TEXT NOT NULL,
    -- The rate-limit headers of the answer, as a JSON array of [name, value].
    headers    TEXT NOT NULL,
    message    TEXT NOT NULL
);

CREATE INDEX events_at ON events (at);
CREATE INDEX events_upstream ON events (upstream, seq);
CREATE INDEX events_tenant ON events (tenant, seq);
CREATE INDEX events_queue ON events (queue, seq);
