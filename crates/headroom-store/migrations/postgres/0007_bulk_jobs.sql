-- Asynchronous bulk jobs (Salesforce Bulk API 2.0 ingest): a batch whose `mode` is 'async'
-- sends each chunk of records as one job of the API, which lives across many calls (create,
-- upload, close, polls, results). Its phase is stored between the calls so that any node
-- resumes it after a crash: `lease_owner`/`lease_until` name who is making its next call.
ALTER TABLE batches ADD COLUMN mode TEXT NOT NULL DEFAULT 'sync';

CREATE TABLE bulk_jobs (
    chunk_id     TEXT PRIMARY KEY,
    batch_seq    BIGINT NOT NULL REFERENCES batches (seq),
    records      BIGINT NOT NULL,
    -- The API's id for the job, once created.
    job_id       TEXT,
    -- create, upload, close, poll, results, done
    phase        TEXT NOT NULL,
    -- The API's last word on the job's state, and why it failed.
    state        TEXT,
    error        TEXT,
    polls        BIGINT NOT NULL DEFAULT 0,
    -- Calls made for this job, counted into the batch's calls when it is done.
    calls        BIGINT NOT NULL DEFAULT 0,
    -- Jobs opened and then given up after a crash (never closed: none of their data was
    -- processed), space-separated.
    abandoned    TEXT NOT NULL DEFAULT '',
    next_at      BIGINT NOT NULL,
    lease_owner  TEXT,
    -- PostgreSQL: the node of the holder; its lease ends when the node stops answering.
    lease_node   TEXT,
    lease_until  BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX bulk_jobs_due ON bulk_jobs (next_at) WHERE phase <> 'done';
CREATE INDEX bulk_jobs_batch ON bulk_jobs (batch_seq);

-- Bulk exports (Salesforce Bulk API 2.0 query jobs): the job is created, polled, and its
-- results read a page at a time; each page is stored with the locator of the next in one
-- transaction, so that a crash resumes at the first page not stored (pages are never
-- stored twice). Leased for each step as bulk_jobs are.
CREATE TABLE exports (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    upstream     TEXT NOT NULL,
    tenant       TEXT,
    lane         TEXT NOT NULL,
    method       TEXT NOT NULL,
    path         TEXT NOT NULL,
    headers      TEXT NOT NULL,
    -- The query job to create, as JSON.
    job          TEXT NOT NULL,
    page_size    BIGINT NOT NULL,
    -- queued, running, succeeded, failed, cancelled
    status       TEXT NOT NULL,
    -- create, poll, page, done
    phase        TEXT NOT NULL,
    job_id       TEXT,
    state        TEXT,
    error        TEXT,
    -- The next page's locator (none: the first page, or no more after the last).
    locator      TEXT,
    pages        BIGINT NOT NULL DEFAULT 0,
    records      BIGINT NOT NULL DEFAULT 0,
    polls        BIGINT NOT NULL DEFAULT 0,
    calls        BIGINT NOT NULL DEFAULT 0,
    next_at      BIGINT NOT NULL,
    lease_owner  TEXT,
    lease_node   TEXT,
    lease_until  BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX exports_due ON exports (next_at) WHERE phase <> 'done';
CREATE INDEX exports_by_tenant ON exports (tenant, seq);

CREATE TABLE export_pages (
    export_seq   BIGINT NOT NULL REFERENCES exports (seq),
    -- From 1.
    page         BIGINT NOT NULL,
    records      BIGINT NOT NULL,
    body         BYTEA NOT NULL,
    PRIMARY KEY (export_seq, page)
);
