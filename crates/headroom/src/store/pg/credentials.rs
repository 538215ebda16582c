//! Credentials, API tokens and small named values.

use anyhow::Context;
use sqlx::Row;

use super::super::{now_rfc3339, CredentialInfo, SealedCredential, TokenInfo};
use super::pg;
use super::PgStore as Store;

impl Store {
    // ---- credentials -------------------------------------------------------------------

    /// Inserts or replaces the sealed credential of (tenant, upstream).
    pub async fn put_credential(
        &self,
        tenant: &str,
        upstream: &str,
        sealed: &SealedCredential,
    ) -> anyhow::Result<()> {
        sqlx::query(&pg(
            "INSERT INTO credentials (tenant, upstream, nonce, ciphertext, updated_at) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (tenant, upstream) DO UPDATE SET \
             nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
             updated_at = excluded.updated_at",
        ))
        .bind(tenant)
        .bind(upstream)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await
        .context("cannot store a credential")?;
        Ok(())
    }

    pub async fn get_credential(
        &self,
        tenant: &str,
        upstream: &str,
    ) -> anyhow::Result<Option<SealedCredential>> {
        let row = sqlx::query(&pg(
            "SELECT nonce, ciphertext FROM credentials WHERE tenant = ? AND upstream = ?",
        ))
        .bind(tenant)
        .bind(upstream)
        .fetch_optional(&self.pool)
        .await
        .context("cannot read a credential")?;
        row.map(|r| {
            Ok(SealedCredential {
                nonce: r.try_get("nonce")?,
                ciphertext: r.try_get("ciphertext")?,
            })
        })
        .transpose()
    }

    /// Deletes the credential of (tenant, upstream); false if there was none.
    pub async fn delete_credential(&self, tenant: &str, upstream: &str) -> anyhow::Result<bool> {
        let done = sqlx::query(&pg(
            "DELETE FROM credentials WHERE tenant = ? AND upstream = ?",
        ))
        .bind(tenant)
        .bind(upstream)
        .execute(&self.pool)
        .await
        .context("cannot delete a credential")?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn list_credentials(&self, tenant: &str) -> anyhow::Result<Vec<CredentialInfo>> {
        let rows = sqlx::query(&pg(
            "SELECT upstream, updated_at FROM credentials WHERE tenant = ? ORDER BY upstream",
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
        .context("cannot list credentials")?;
        rows.into_iter()
            .map(|r| {
                Ok(CredentialInfo {
                    upstream: r.try_get("upstream")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    pub async fn count_credentials(&self) -> anyhow::Result<i64> {
        let row = sqlx::query(&pg("SELECT COUNT(*) AS n FROM credentials"))
            .fetch_one(&self.pool)
            .await
            .context("cannot count credentials")?;
        Ok(row.try_get("n")?)
    }

    // ---- API tokens --------------------------------------------------------------------

    pub async fn insert_token(
        &self,
        id: &str,
        tenant: &str,
        token_sha256: &[u8],
    ) -> anyhow::Result<TokenInfo> {
        let created_at = now_rfc3339();
        sqlx::query(&pg(
            "INSERT INTO api_tokens (id, tenant, token_sha256, created_at) VALUES (?, ?, ?, ?)",
        ))
        .bind(id)
        .bind(tenant)
        .bind(token_sha256)
        .bind(&created_at)
        .execute(&self.pool)
        .await
        .context("cannot store an API token")?;
        Ok(TokenInfo {
            id: id.to_string(),
            tenant: tenant.to_string(),
            created_at,
        })
    }

    /// The tenant of the token with this SHA-256, if there is one.
    pub async fn token_tenant(&self, token_sha256: &[u8]) -> anyhow::Result<Option<String>> {
        let row = sqlx::query(&pg("SELECT tenant FROM api_tokens WHERE token_sha256 = ?"))
            .bind(token_sha256)
            .fetch_optional(&self.pool)
            .await
            .context("cannot look up an API token")?;
        Ok(row.map(|r| r.try_get("tenant")).transpose()?)
    }

    /// Deletes a token; its SHA-256 if it existed.
    pub async fn delete_token(&self, id: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let row = sqlx::query(&pg(
            "DELETE FROM api_tokens WHERE id = ? RETURNING token_sha256",
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("cannot delete an API token")?;
        Ok(row.map(|r| r.try_get("token_sha256")).transpose()?)
    }

    /// Every token (or a tenant's), oldest first.
    pub async fn list_tokens(&self, tenant: Option<&str>) -> anyhow::Result<Vec<TokenInfo>> {
        let query = match tenant {
            Some(t) => sqlx::query(
                "SELECT id, tenant, created_at FROM api_tokens WHERE tenant = $1 \
                 ORDER BY created_at, id",
            )
            .bind(t),
            None => {
                sqlx::query("SELECT id, tenant, created_at FROM api_tokens ORDER BY created_at, id")
            }
        };
        let rows = query
            .fetch_all(&self.pool)
            .await
            .context("cannot list API tokens")?;
        rows.into_iter()
            .map(|r| {
                Ok(TokenInfo {
                    id: r.try_get("id")?,
                    tenant: r.try_get("tenant")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    // ---- meta --------------------------------------------------------------------------

    pub async fn get_meta(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let row = sqlx::query(&pg("SELECT value FROM meta WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .context("cannot read the store's meta table")?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    pub async fn put_meta(&self, name: &str, value: &[u8]) -> anyhow::Result<()> {
        sqlx::query(&pg("INSERT INTO meta (name, value) VALUES (?, ?) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value"))
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await
        .context("cannot write the store's meta table")?;
        Ok(())
    }
}
