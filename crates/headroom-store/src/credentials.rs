//! Credentials, API tokens and small named values, on either backend.

use crate::error::Context;

use super::row::StoreRow;
use super::sql::{Db, Sql};
use super::{now_rfc3339, BudgetOverrideRow, CredentialInfo, SealedCredential, TokenInfo};

impl Db<'_> {
    // ---- credentials -------------------------------------------------------------------

    /// Inserts or replaces the sealed credential of (tenant, upstream).
    pub(crate) async fn put_credential(
        self,
        tenant: &str,
        upstream: &str,
        sealed: &SealedCredential,
    ) -> crate::Result<()> {
        let q = Sql::new(
            "INSERT INTO credentials (tenant, upstream, nonce, ciphertext, updated_at) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (tenant, upstream) DO UPDATE SET \
             nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
             updated_at = excluded.updated_at",
        )
        .bind(tenant)
        .bind(upstream)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(now_rfc3339());
        self.pool()
            .execute(&q)
            .await
            .context("cannot store a credential")?;
        Ok(())
    }

    pub(crate) async fn get_credential(
        self,
        tenant: &str,
        upstream: &str,
    ) -> crate::Result<Option<SealedCredential>> {
        let q =
            Sql::new("SELECT nonce, ciphertext FROM credentials WHERE tenant = ? AND upstream = ?")
                .bind(tenant)
                .bind(upstream);
        let row = self
            .pool()
            .fetch_optional(&q)
            .await
            .context("cannot read a credential")?;
        row.map(|r| {
            Ok(SealedCredential {
                nonce: r.col("nonce")?,
                ciphertext: r.col("ciphertext")?,
            })
        })
        .transpose()
    }

    /// Deletes the credential of (tenant, upstream); false if there was none.
    pub(crate) async fn delete_credential(
        self,
        tenant: &str,
        upstream: &str,
    ) -> crate::Result<bool> {
        let q = Sql::new("DELETE FROM credentials WHERE tenant = ? AND upstream = ?")
            .bind(tenant)
            .bind(upstream);
        let deleted = self
            .pool()
            .execute(&q)
            .await
            .context("cannot delete a credential")?;
        Ok(deleted > 0)
    }

    pub(crate) async fn list_credentials(self, tenant: &str) -> crate::Result<Vec<CredentialInfo>> {
        let q = Sql::new(
            "SELECT upstream, updated_at FROM credentials WHERE tenant = ? ORDER BY upstream",
        )
        .bind(tenant);
        let rows = self
            .pool()
            .fetch_all(&q)
            .await
            .context("cannot list credentials")?;
        rows.iter()
            .map(|r| {
                Ok(CredentialInfo {
                    upstream: r.col("upstream")?,
                    updated_at: r.col("updated_at")?,
                })
            })
            .collect()
    }

    /// Every (tenant, upstream) that holds a credential: names only, no secret.
    pub(crate) async fn credential_holders(self) -> crate::Result<Vec<(String, String)>> {
        let rows = self
            .pool()
            .fetch_all(&Sql::new("SELECT tenant, upstream FROM credentials"))
            .await
            .context("cannot list who holds credentials")?;
        rows.iter()
            .map(|r| Ok((r.col("tenant")?, r.col("upstream")?)))
            .collect()
    }

    pub(crate) async fn count_credentials(self) -> crate::Result<i64> {
        let row = self
            .pool()
            .fetch_one(&Sql::new("SELECT COUNT(*) AS n FROM credentials"))
            .await
            .context("cannot count credentials")?;
        row.col("n")
    }

    // ---- budget overrides --------------------------------------------------------------

    /// Inserts or replaces the override of (upstream, tenant); gives its time.
    pub(crate) async fn put_budget_override(
        self,
        upstream: &str,
        tenant: &str,
        value: &str,
    ) -> crate::Result<String> {
        let updated_at = now_rfc3339();
        let q = Sql::new(
            "INSERT INTO budget_overrides (upstream, tenant, value, updated_at) \
             VALUES (?, ?, ?, ?) \
             ON CONFLICT (upstream, tenant) DO UPDATE SET \
             value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(upstream)
        .bind(tenant)
        .bind(value)
        .bind(&updated_at);
        self.pool()
            .execute(&q)
            .await
            .context("cannot store a budget override")?;
        Ok(updated_at)
    }

    /// Deletes the override of (upstream, tenant); false if there was none.
    pub(crate) async fn delete_budget_override(
        self,
        upstream: &str,
        tenant: &str,
    ) -> crate::Result<bool> {
        let q = Sql::new("DELETE FROM budget_overrides WHERE upstream = ? AND tenant = ?")
            .bind(upstream)
            .bind(tenant);
        let deleted = self
            .pool()
            .execute(&q)
            .await
            .context("cannot delete a budget override")?;
        Ok(deleted > 0)
    }

    /// Every override, by upstream and tenant.
    pub(crate) async fn budget_overrides(self) -> crate::Result<Vec<BudgetOverrideRow>> {
        let rows = self
            .pool()
            .fetch_all(&Sql::new(
                "SELECT upstream, tenant, value, updated_at FROM budget_overrides \
                 ORDER BY upstream, tenant",
            ))
            .await
            .context("cannot list budget overrides")?;
        rows.iter()
            .map(|r| {
                Ok(BudgetOverrideRow {
                    upstream: r.col("upstream")?,
                    tenant: r.col("tenant")?,
                    value: r.col("value")?,
                    updated_at: r.col("updated_at")?,
                })
            })
            .collect()
    }

    // ---- API tokens --------------------------------------------------------------------

    pub(crate) async fn insert_token(
        self,
        id: &str,
        tenant: &str,
        token_sha256: &[u8],
    ) -> crate::Result<TokenInfo> {
        let created_at = now_rfc3339();
        let q = Sql::new(
            "INSERT INTO api_tokens (id, tenant, token_sha256, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(id)
        .bind(tenant)
        .bind(token_sha256)
        .bind(&created_at);
        self.pool()
            .execute(&q)
            .await
            .context("cannot store an API token")?;
        Ok(TokenInfo {
            id: id.to_string(),
            tenant: tenant.to_string(),
            created_at,
        })
    }

    /// The tenant of the token with this SHA-256, if there is one.
    pub(crate) async fn token_tenant(self, token_sha256: &[u8]) -> crate::Result<Option<String>> {
        let q = Sql::new("SELECT tenant FROM api_tokens WHERE token_sha256 = ?").bind(token_sha256);
        let row = self
            .pool()
            .fetch_optional(&q)
            .await
            .context("cannot look up an API token")?;
        row.map(|r| r.col("tenant")).transpose()
    }

    /// Deletes a token; its SHA-256 if it existed.
    pub(crate) async fn delete_token(self, id: &str) -> crate::Result<Option<Vec<u8>>> {
        let q = Sql::new("DELETE FROM api_tokens WHERE id = ? RETURNING token_sha256").bind(id);
        let row = self
            .pool()
            .fetch_optional(&q)
            .await
            .context("cannot delete an API token")?;
        row.map(|r| r.col("token_sha256")).transpose()
    }

    /// Every token (or a tenant's), oldest first.
    pub(crate) async fn list_tokens(self, tenant: Option<&str>) -> crate::Result<Vec<TokenInfo>> {
        let q = match tenant {
            Some(t) => Sql::new(
                "SELECT id, tenant, created_at FROM api_tokens WHERE tenant = ? \
                 ORDER BY created_at, id",
            )
            .bind(t),
            None => {
                Sql::new("SELECT id, tenant, created_at FROM api_tokens ORDER BY created_at, id")
            }
        };
        let rows = self
            .pool()
            .fetch_all(&q)
            .await
            .context("cannot list API tokens")?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    id: r.col("id")?,
                    tenant: r.col("tenant")?,
                    created_at: r.col("created_at")?,
                })
            })
            .collect()
    }

    // ---- meta --------------------------------------------------------------------------

    pub(crate) async fn get_meta(self, name: &str) -> crate::Result<Option<Vec<u8>>> {
        let q = Sql::new("SELECT value FROM meta WHERE name = ?").bind(name);
        let row = self
            .pool()
            .fetch_optional(&q)
            .await
            .context("cannot read the store's meta table")?;
        row.map(|r| r.col("value")).transpose()
    }

    pub(crate) async fn put_meta(self, name: &str, value: &[u8]) -> crate::Result<()> {
        let q = Sql::new(
            "INSERT INTO meta (name, value) VALUES (?, ?) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value);
        self.pool()
            .execute(&q)
            .await
            .context("cannot write the store's meta table")?;
        Ok(())
    }
}
