-- A tenant's OAuth grant for an upstream (or the upstream's own app token, tenant ":app"):
-- the tokens sealed like a credential, and beside them what is not secret — when the access
-- token expires, its scopes, whether the grant is broken and why, and the refresh lease that
-- lets one node at a time refresh it. `version` grows with every stored token, so that a
-- refresh stores its tokens only over the ones it started from.
CREATE TABLE oauth_grants (
    tenant      TEXT NOT NULL,
    upstream    TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    expires_at  INTEGER,
    scopes      TEXT NOT NULL,
    broken      TEXT,
    version     INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until INTEGER,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (tenant, upstream)
);
CREATE INDEX oauth_grants_broken ON oauth_grants (broken) WHERE broken IS NOT NULL;
