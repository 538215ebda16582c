-- An operator's change to one tenant's budget at one upstream (limits, headroom, concurrency,
-- a pause), as JSON: seen by every node, listed with /v1/budgets.
CREATE TABLE budget_overrides (
    upstream TEXT NOT NULL,
    tenant TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (upstream, tenant)
);
