-- Deduplication ids are per (queue, tenant): one tenant's id never names another tenant's job.
-- A job without a tenant dedups under '' (existing rows take their job's tenant).
CREATE TABLE job_dedup_by_tenant (
    queue     TEXT NOT NULL,
    tenant    TEXT NOT NULL,
    dedup_id  TEXT NOT NULL,
    job_id    TEXT NOT NULL,
    until     BIGINT NOT NULL,
    PRIMARY KEY (queue, tenant, dedup_id)
);

INSERT INTO job_dedup_by_tenant (queue, tenant, dedup_id, job_id, until)
SELECT d.queue, COALESCE(j.tenant, ''), d.dedup_id, d.job_id, d.until
FROM job_dedup AS d LEFT JOIN jobs AS j ON j.id = d.job_id;

DROP TABLE job_dedup;
ALTER TABLE job_dedup_by_tenant RENAME TO job_dedup;

-- Retention (`[jobs] retention`): what the hourly prune looks for.
CREATE INDEX job_dedup_until ON job_dedup (until);
CREATE INDEX jobs_finished ON jobs (updated_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX batches_finished ON batches (updated_at)
    WHERE status IN ('succeeded', 'completed_with_failures', 'cancelled');
