//! OAuth grants: sealed tokens beside the state that is not secret (expiry, scopes, broken,
//! the refresh lease), on either backend.
//!
//! A refresh is single-flight across nodes: [`Db::lease_oauth_refresh`] takes the grant's
//! lease only while no other node holds an unexpired one and the grant is still the
//! version the caller read; [`Db::store_oauth_refresh`] stores the new tokens only over that
//! version, in one statement, so a rotated refresh token is stored before anyone uses the
//! new access token and never overwrites a newer one.

use crate::error::Context;

use super::row::StoreRow;
use super::sql::{Db, Sql};
use super::{now_rfc3339, SealedCredential};

/// A stored grant.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OAuthGrantRow {
    pub tenant: String,
    pub upstream: String,
    pub sealed: SealedCredential,
    /// When the access token expires, Unix ms (`None`: the token endpoint did not say).
    pub expires_at: Option<i64>,
    /// Space-separated, as granted.
    pub scopes: String,
    /// Why the grant no longer works (the tenant must connect again); `None` while it works.
    pub broken: Option<String>,
    pub version: i64,
    /// Until when a node holds the refresh lease, Unix ms.
    pub lease_until: Option<i64>,
    pub updated_at: String,
}

/// New tokens for a grant.
#[derive(Clone, Debug)]
pub struct OAuthTokens<'a> {
    pub sealed: &'a SealedCredential,
    pub expires_at: Option<i64>,
    pub scopes: &'a str,
}

const COLUMNS: &str = "tenant, upstream, nonce, ciphertext, expires_at, scopes, broken, version, \
                       lease_until, updated_at";

fn grant(r: &impl StoreRow) -> crate::Result<OAuthGrantRow> {
    Ok(OAuthGrantRow {
        tenant: r.col("tenant")?,
        upstream: r.col("upstream")?,
        sealed: SealedCredential {
            nonce: r.col("nonce")?,
            ciphertext: r.col("ciphertext")?,
        },
        expires_at: r.col("expires_at")?,
        scopes: r.col("scopes")?,
        broken: r.col("broken")?,
        version: r.col("version")?,
        lease_until: r.col("lease_until")?,
        updated_at: r.col("updated_at")?,
    })
}

impl Db<'_> {
    /// Stores a grant as the tenant connected it, replacing any earlier one (and its broken
    /// state and lease); gives its version.
    pub(crate) async fn put_oauth_grant(
        self,
        tenant: &str,
        upstream: &str,
        tokens: &OAuthTokens<'_>,
    ) -> crate::Result<i64> {
        let q = Sql::new(
            "INSERT INTO oauth_grants (tenant, upstream, nonce, ciphertext, expires_at, scopes, \
             broken, version, lease_owner, lease_until, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, NULL, 1, NULL, NULL, ?) \
             ON CONFLICT (tenant, upstream) DO UPDATE SET \
             nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
             expires_at = excluded.expires_at, scopes = excluded.scopes, broken = NULL, \
             version = oauth_grants.version + 1, lease_owner = NULL, lease_until = NULL, \
             updated_at = excluded.updated_at \
             RETURNING version",
        )
        .bind(tenant)
        .bind(upstream)
        .bind(&tokens.sealed.nonce)
        .bind(&tokens.sealed.ciphertext)
        .bind(tokens.expires_at)
        .bind(tokens.scopes)
        .bind(now_rfc3339());
        let row = self
            .pool()
            .fetch_one(&q)
            .await
            .context("cannot store an OAuth grant")?;
        row.col("version")
    }

    /// Stores `tokens` as the grant unless there is one already (an app's first
    /// client-credentials token: every node may try, one row results).
    pub(crate) async fn add_oauth_grant(
        self,
        tenant: &str,
        upstream: &str,
        tokens: &OAuthTokens<'_>,
    ) -> crate::Result<()> {
        let q = Sql::new(
            "INSERT INTO oauth_grants (tenant, upstream, nonce, ciphertext, expires_at, scopes, \
             broken, version, lease_owner, lease_until, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, NULL, 1, NULL, NULL, ?) \
             ON CONFLICT (tenant, upstream) DO NOTHING",
        )
        .bind(tenant)
        .bind(upstream)
        .bind(&tokens.sealed.nonce)
        .bind(&tokens.sealed.ciphertext)
        .bind(tokens.expires_at)
        .bind(tokens.scopes)
        .bind(now_rfc3339());
        self.pool()
            .execute(&q)
            .await
            .context("cannot add an OAuth grant")?;
        Ok(())
    }

    pub(crate) async fn get_oauth_grant(
        self,
        tenant: &str,
        upstream: &str,
    ) -> crate::Result<Option<OAuthGrantRow>> {
        let q = Sql::new(format!(
            "SELECT {COLUMNS} FROM oauth_grants WHERE tenant = ? AND upstream = ?"
        ))
        .bind(tenant)
        .bind(upstream);
        let row = self
            .pool()
            .fetch_optional(&q)
            .await
            .context("cannot read an OAuth grant")?;
        row.map(|r| grant(&r)).transpose()
    }

    pub(crate) async fn delete_oauth_grant(
        self,
        tenant: &str,
        upstream: &str,
    ) -> crate::Result<bool> {
        let q = Sql::new("DELETE FROM oauth_grants WHERE tenant = ? AND upstream = ?")
            .bind(tenant)
            .bind(upstream);
        let deleted = self
            .pool()
            .execute(&q)
            .await
            .context("cannot delete an OAuth grant")?;
        Ok(deleted > 0)
    }

    /// Takes the refresh lease of a working grant still at `version`, for `owner` until
    /// `until` (Unix ms), unless a lease that has not expired at `now` is held (by anyone:
    /// each refresh attempt is an owner of its own).
    pub(crate) async fn lease_oauth_refresh(
        self,
        tenant: &str,
        upstream: &str,
        version: i64,
        owner: &str,
        now: i64,
        until: i64,
    ) -> crate::Result<bool> {
        let q = Sql::new(
            "UPDATE oauth_grants SET lease_owner = ?, lease_until = ? \
             WHERE tenant = ? AND upstream = ? AND version = ? AND broken IS NULL \
             AND (lease_until IS NULL OR lease_until <= ?)",
        )
        .bind(owner)
        .bind(until)
        .bind(tenant)
        .bind(upstream)
        .bind(version)
        .bind(now);
        let taken = self
            .pool()
            .execute(&q)
            .await
            .context("cannot take an OAuth grant's refresh lease")?;
        Ok(taken > 0)
    }

    /// Stores the tokens a refresh of `version` got, and ends the lease; false (nothing
    /// stored) when the grant changed since (connected again, or deleted).
    pub(crate) async fn store_oauth_refresh(
        self,
        tenant: &str,
        upstream: &str,
        version: i64,
        tokens: &OAuthTokens<'_>,
    ) -> crate::Result<bool> {
        let q = Sql::new(
            "UPDATE oauth_grants SET nonce = ?, ciphertext = ?, expires_at = ?, scopes = ?, \
             broken = NULL, version = version + 1, lease_owner = NULL, lease_until = NULL, \
             updated_at = ? WHERE tenant = ? AND upstream = ? AND version = ?",
        )
        .bind(&tokens.sealed.nonce)
        .bind(&tokens.sealed.ciphertext)
        .bind(tokens.expires_at)
        .bind(tokens.scopes)
        .bind(now_rfc3339())
        .bind(tenant)
        .bind(upstream)
        .bind(version);
        let stored = self
            .pool()
            .execute(&q)
            .await
            .context("cannot store a refreshed OAuth grant")?;
        Ok(stored > 0)
    }

    /// Gives the refresh lease back without new tokens (the token endpoint could not be
    /// reached: another node, or a later call, tries again).
    pub(crate) async fn release_oauth_lease(
        self,
        tenant: &str,
        upstream: &str,
        owner: &str,
    ) -> crate::Result<()> {
        let q = Sql::new(
            "UPDATE oauth_grants SET lease_owner = NULL, lease_until = NULL \
             WHERE tenant = ? AND upstream = ? AND lease_owner = ?",
        )
        .bind(tenant)
        .bind(upstream)
        .bind(owner);
        self.pool()
            .execute(&q)
            .await
            .context("cannot release an OAuth grant's refresh lease")?;
        Ok(())
    }

    /// Marks the working grant at `version` broken for `reason`; false when it changed since
    /// or is broken already.
    pub(crate) async fn break_oauth_grant(
        self,
        tenant: &str,
        upstream: &str,
        version: i64,
        reason: &str,
    ) -> crate::Result<bool> {
        let q = Sql::new(
            "UPDATE oauth_grants SET broken = ?, lease_owner = NULL, lease_until = NULL, \
             updated_at = ? WHERE tenant = ? AND upstream = ? AND version = ? \
             AND broken IS NULL",
        )
        .bind(reason)
        .bind(now_rfc3339())
        .bind(tenant)
        .bind(upstream)
        .bind(version);
        let marked = self
            .pool()
            .execute(&q)
            .await
            .context("cannot mark an OAuth grant broken")?;
        Ok(marked > 0)
    }

    /// The grants of `tenant` (every tenant's when `None`), or only the broken ones; by
    /// tenant and upstream.
    pub(crate) async fn list_oauth_grants(
        self,
        tenant: Option<&str>,
        broken_only: bool,
    ) -> crate::Result<Vec<OAuthGrantRow>> {
        let mut text = format!("SELECT {COLUMNS} FROM oauth_grants WHERE 1 = 1");
        if tenant.is_some() {
            text.push_str(" AND tenant = ?");
        }
        if broken_only {
            text.push_str(" AND broken IS NOT NULL");
        }
        text.push_str(" ORDER BY tenant, upstream LIMIT 10000");
        let mut q = Sql::new(text);
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        let rows = self
            .pool()
            .fetch_all(&q)
            .await
            .context("cannot list OAuth grants")?;
        rows.iter().map(grant).collect()
    }
}
