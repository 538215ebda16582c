-- Deduplication ids are per (queue, tenant): one tenant's id never names another tenant's job.
-- A job without a tenant dedups under '' (existing rows take their job's tenant).
ALTER TABLE job_dedup ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
UPDATE job_dedup AS d SET tenant = COALESCE(j.tenant, '') FROM jobs AS j WHERE j.id = d.job_id;
ALTER TABLE job_dedup DROP CONSTRAINT job_dedup_pkey;
ALTER TABLE job_dedup ADD PRIMARY KEY (queue, tenant, dedup_id);
ALTER TABLE job_dedup ALTER COLUMN tenant DROP DEFAULT;

-- Retention (`[jobs] retention`): what the hourly prune looks for.
CREATE INDEX job_dedup_until ON job_dedup (until);
CREATE INDEX jobs_finished ON jobs (updated_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX batches_finished ON batches (updated_at)
    WHERE status IN ('succeeded', 'completed_with_failures', 'cancelled');
