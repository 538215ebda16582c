-- The PostgreSQL store: the same tables as the SQLite migrations (see ../), in one file,
-- plus what several nodes sharing one database need: the node that holds each running job
-- and record in flight, and the nodes' heartbeats, so that the work of a node that died goes
-- back to the queue (and only that work).
--
-- Times are milliseconds since the Unix epoch (BIGINT). Booleans are BOOLEAN.

CREATE TABLE nodes (
    id       TEXT PRIMARY KEY,
    -- The database's clock (milliseconds) at the node's last heartbeat.
    seen_at  BIGINT NOT NULL
);


-- Per-tenant upstream credentials, encrypted with XChaCha20-Poly1305 (AAD: tenant \0 upstream).
CREATE TABLE credentials (
    tenant      TEXT NOT NULL,
    upstream    TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (tenant, upstream)
);

-- API tokens scoped to one tenant; only the SHA-256 of a token is kept.
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    token_sha256  BYTEA UNIQUE NOT NULL,
    created_at    TEXT NOT NULL
);

CREATE INDEX api_tokens_tenant ON api_tokens (tenant);

-- Small named values, such as the check that the secret key is the one credentials were
-- encrypted with.
CREATE TABLE meta (
    name   TEXT PRIMARY KEY,
    value  BYTEA NOT NULL
);

-- Durable jobs, their attempts, deduplication ids, batches and their records.
--
-- Statuses are lower-case text.

CREATE TABLE jobs (
    -- Arrival order: claims (throttled, sequential) and list cursors follow it.
    seq                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                 TEXT NOT NULL UNIQUE,
    queue              TEXT NOT NULL,
    -- The concurrency scope inside the queue: '' (global) or the tenant.
    scope              TEXT NOT NULL,
    upstream           TEXT NOT NULL,
    tenant             TEXT,
    lane               TEXT NOT NULL,
    method             TEXT NOT NULL,
    path               TEXT NOT NULL,
    query              TEXT,
    -- JSON array of [name, value] pairs.
    headers            TEXT NOT NULL,
    body               BYTEA,
    body_is_json       BOOLEAN NOT NULL,
    dedup_id           TEXT,
    dedup_until        BIGINT,
    callback_url       TEXT,
    max_attempts       BIGINT NOT NULL,
    idempotency_key    TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    -- queued | running | retry_pending | succeeded | failed | cancelled
    status             TEXT NOT NULL,
    attempts           BIGINT NOT NULL DEFAULT 0,
    next_attempt_at    BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    last_error         TEXT,
    response_status    BIGINT,
    response_headers   TEXT,
    response_body      BYTEA,
    -- none | pending | delivered | failed
    callback           TEXT NOT NULL,
    callback_attempts  BIGINT NOT NULL DEFAULT 0,
    next_callback_at   BIGINT NOT NULL DEFAULT 0,
    -- The node running the job (status 'running'): its jobs go back to the queue when it dies.
    node               TEXT,
    -- The node delivering the callback, until when (ms): other nodes leave it alone.
    callback_node      TEXT,
    callback_until     BIGINT
);

-- Waiting jobs by the time they become ready: parallel claims (the queue is there to skip
-- the jobs of other queues without reading them) and `next_ready_at`.
CREATE INDEX jobs_waiting ON jobs (next_attempt_at, seq, queue)
    WHERE status IN ('queued', 'retry_pending');
-- Unfinished jobs of a (queue, scope) in arrival order, covering what throttled and
-- sequential claims look at, so that they read this index alone.
CREATE INDEX jobs_unfinished ON jobs (queue, scope, seq, status, next_attempt_at)
    WHERE status IN ('queued', 'running', 'retry_pending');
-- Running jobs of a (queue, scope): the count that throttled and sequential claims check.
CREATE INDEX jobs_running ON jobs (queue, scope)
    WHERE status = 'running';
-- Final jobs whose callback is still to be delivered (a job with a callback URL is 'pending'
-- from the start; it becomes due when the job is final).
CREATE INDEX jobs_callbacks ON jobs (next_callback_at)
    WHERE callback = 'pending' AND status IN ('succeeded', 'failed', 'cancelled');
-- Listings (each in arrival order).
CREATE INDEX jobs_by_status ON jobs (status, seq);
CREATE INDEX jobs_by_tenant ON jobs (tenant, seq);
CREATE INDEX jobs_by_queue ON jobs (queue, seq);

-- Every attempt of a job (a rescheduled attempt keeps the number of the next real one).
CREATE TABLE job_attempts (
    seq                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id              TEXT NOT NULL,
    number              BIGINT NOT NULL,
    started_at          BIGINT NOT NULL,
    finished_at         BIGINT NOT NULL,
    status              BIGINT,
    wait_ms             BIGINT NOT NULL,
    -- JSON array of [name, value] pairs.
    rate_limit_headers  TEXT NOT NULL,
    error               TEXT
);

CREATE INDEX job_attempts_job ON job_attempts (job_id, seq);

-- The job that holds a deduplication id of a queue, until when.
CREATE TABLE job_dedup (
    queue     TEXT NOT NULL,
    dedup_id  TEXT NOT NULL,
    job_id    TEXT NOT NULL,
    until     BIGINT NOT NULL,
    PRIMARY KEY (queue, dedup_id)
);

CREATE TABLE batches (
    seq                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                   TEXT NOT NULL UNIQUE,
    upstream             TEXT NOT NULL,
    tenant               TEXT,
    lane                 TEXT NOT NULL,
    -- headroom_core::batch::Format as JSON.
    format               TEXT NOT NULL,
    max_batch_size       BIGINT NOT NULL,
    method               TEXT NOT NULL,
    path                 TEXT NOT NULL,
    query                TEXT,
    headers              TEXT NOT NULL,
    max_attempts         BIGINT NOT NULL,
    callback_url         TEXT,
    -- queued | running | succeeded | completed_with_failures | cancelled
    status               TEXT NOT NULL,
    -- Record counts by status, kept up to date in the transactions that move records.
    total                BIGINT NOT NULL,
    succeeded            BIGINT NOT NULL DEFAULT 0,
    failed               BIGINT NOT NULL DEFAULT 0,
    pending              BIGINT NOT NULL DEFAULT 0,
    in_flight            BIGINT NOT NULL DEFAULT 0,
    cancelled            BIGINT NOT NULL DEFAULT 0,
    calls                BIGINT NOT NULL DEFAULT 0,
    possibly_duplicated  BIGINT NOT NULL DEFAULT 0,
    -- Round robin between batches: the batch claimed longest ago goes first.
    claim_order          BIGINT NOT NULL DEFAULT 0,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

CREATE INDEX batches_active ON batches (claim_order, seq)
    WHERE status IN ('queued', 'running');

CREATE TABLE batch_records (
    batch_seq        BIGINT NOT NULL REFERENCES batches (seq),
    -- 0-based position of the record in the batch.
    idx              BIGINT NOT NULL,
    record_id        TEXT NOT NULL,
    -- The record as JSON.
    payload          BYTEA NOT NULL,
    -- pending | in_flight | succeeded | failed | cancelled
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    error            TEXT,
    -- The chunk that holds (or last held) the record.
    chunk_id         TEXT,
    -- The node sending the record (status 'in_flight').
    node             TEXT,
    PRIMARY KEY (batch_seq, idx)
);

-- A batch's records of one status by index: chunks (pending), failures, requeues (in_flight).
CREATE INDEX batch_records_status ON batch_records (batch_seq, status, idx);
-- When a batch's pending records become claimable.
CREATE INDEX batch_records_due ON batch_records (batch_seq, next_attempt_at)
    WHERE status = 'pending';

-- Schedules: cron definitions, the next fire time of each (schedule, tenant), and every run.
--

CREATE TABLE schedules (
    name         TEXT PRIMARY KEY,
    -- The definition as given (config table or API body), as JSON.
    definition   TEXT NOT NULL,
    -- 1 when it comes from the config file: the config owns it (synced at start).
    from_config  BOOLEAN NOT NULL,
    paused       BOOLEAN NOT NULL DEFAULT FALSE,
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
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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

CREATE INDEX jobs_by_node ON jobs (node) WHERE status = 'running';
CREATE INDEX batch_records_by_node ON batch_records (node) WHERE status = 'in_flight';
-- Batches with records in flight: what the heartbeat looks at every second.
CREATE INDEX batches_in_flight ON batches (seq) WHERE in_flight > 0;
