-- Per-tenant upstream credentials, encrypted with XChaCha20-Poly1305 (AAD: tenant \0 upstream).
CREATE TABLE credentials (
    tenant      TEXT NOT NULL,
    upstream    TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (tenant, upstream)
);

-- API tokens scoped to one tenant; only the SHA-256 of a token is kept.
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    token_sha256  BLOB UNIQUE NOT NULL,
    created_at    TEXT NOT NULL
);

CREATE INDEX api_tokens_tenant ON api_tokens (tenant);

-- Small named values, such as the check that the secret key is the one credentials were
-- encrypted with.
CREATE TABLE meta (
    name   TEXT PRIMARY KEY,
    value  BLOB NOT NULL
);
