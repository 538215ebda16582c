-- Durable jobs, their attempts, deduplication ids, batches and their records.
--
-- Times are milliseconds since the Unix epoch (BIGINT). Statuses are lower-case text. The only
-- SQLite-specific construct is `INTEGER PRIMARY KEY AUTOINCREMENT` for the arrival sequences
-- (PostgreSQL: `BIGINT GENERATED ALWAYS AS IDENTITY`); partial indexes exist in both.

CREATE TABLE jobs (
    -- Arrival order: claims (throttled, sequential) and list cursors follow it.
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
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
    body               BLOB,
    body_is_json       INTEGER NOT NULL,
    dedup_id           TEXT,
    dedup_until        BIGINT,
    callback_url       TEXT,
    max_attempts       INTEGER NOT NULL,
    idempotency_key    TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    -- queued | running | retry_pending | succeeded | failed | cancelled
    status             TEXT NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at    BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    last_error         TEXT,
    response_status    INTEGER,
    response_headers   TEXT,
    response_body      BLOB,
    -- none | pending | delivered | failed
    callback           TEXT NOT NULL,
    callback_attempts  INTEGER NOT NULL DEFAULT 0,
    next_callback_at   BIGINT NOT NULL DEFAULT 0
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
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id              TEXT NOT NULL,
    number              INTEGER NOT NULL,
    started_at          BIGINT NOT NULL,
    finished_at         BIGINT NOT NULL,
    status              INTEGER,
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
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    id                   TEXT NOT NULL UNIQUE,
    upstream             TEXT NOT NULL,
    tenant               TEXT,
    lane                 TEXT NOT NULL,
    -- headroom_core::batch::Format as JSON.
    format               TEXT NOT NULL,
    max_batch_size       INTEGER NOT NULL,
    method               TEXT NOT NULL,
    path                 TEXT NOT NULL,
    query                TEXT,
    headers              TEXT NOT NULL,
    max_attempts         INTEGER NOT NULL,
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
    payload          BLOB NOT NULL,
    -- pending | in_flight | succeeded | failed | cancelled
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    error            TEXT,
    -- The chunk that holds (or last held) the record.
    chunk_id         TEXT,
    PRIMARY KEY (batch_seq, idx)
);

-- A batch's records of one status by index: chunks (pending), failures, requeues (in_flight).
CREATE INDEX batch_records_status ON batch_records (batch_seq, status, idx);
-- When a batch's pending records become claimable.
CREATE INDEX batch_records_due ON batch_records (batch_seq, next_attempt_at)
    WHERE status = 'pending';
