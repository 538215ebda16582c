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
