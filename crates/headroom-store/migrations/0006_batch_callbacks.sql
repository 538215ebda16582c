-- A batch's `callback_url` is called once the batch is final, as a job's is: its delivery state,
-- tries and next time (and, on PostgreSQL, the node delivering it).
ALTER TABLE batches ADD COLUMN callback TEXT NOT NULL DEFAULT 'none';
ALTER TABLE batches ADD COLUMN callback_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN next_callback_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN callback_node TEXT;
ALTER TABLE batches ADD COLUMN callback_until BIGINT;
-- Batches still under way get their callback when they end; finished ones are not called late.
UPDATE batches SET callback = 'pending'
    WHERE callback_url IS NOT NULL AND status IN ('queued', 'running');
CREATE INDEX batches_callbacks ON batches (next_callback_at) WHERE callback = 'pending';
