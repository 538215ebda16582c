//! The store a server runs on, chosen by the URL of `store` in the config: the embedded
//! SQLite store (`sqlite://…`, the default) or PostgreSQL (`postgres://…`, for several
//! nodes). The store traits (`JobStore`, `BatchStore`, `ScheduleStore`, `EventStore`) and
//! the credential, token and meta operations are written once for either (`super::sql`);
//! what is left here is what only one backend has. Both pass the same conformance suites.

use std::path::Path;

use super::pg::PgStore;
use super::sql::{Db, SqlStore};
use super::{CredentialInfo, SealedCredential, Store, TokenInfo};

#[derive(Clone, Debug)]
pub enum AnyStore {
    Sqlite(Store),
    Postgres(PgStore),
}

impl From<Store> for AnyStore {
    fn from(s: Store) -> Self {
        AnyStore::Sqlite(s)
    }
}

impl From<PgStore> for AnyStore {
    fn from(s: PgStore) -> Self {
        AnyStore::Postgres(s)
    }
}

/// Calls the same method on whichever backend this is.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $call,
            AnyStore::Postgres($s) => $call,
        }
    };
}

impl SqlStore for AnyStore {
    fn db(&self) -> Db<'_> {
        match self {
            AnyStore::Sqlite(s) => Db::Sqlite(s),
            AnyStore::Postgres(s) => Db::Postgres(s),
        }
    }
}

impl AnyStore {
    /// Opens `sqlite://…` / `sqlite::memory:` or `postgres://…` / `postgresql://…`.
    pub async fn open(url: &str) -> crate::Result<AnyStore> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(AnyStore::Postgres(PgStore::open(url).await?))
        } else {
            Ok(AnyStore::Sqlite(Store::open(url).await?))
        }
    }

    /// The database file of an SQLite store; `None` in memory and on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match self {
            AnyStore::Sqlite(s) => s.path(),
            AnyStore::Postgres(_) => None,
        }
    }

    pub fn sqlite(&self) -> Option<&Store> {
        match self {
            AnyStore::Sqlite(s) => Some(s),
            AnyStore::Postgres(_) => None,
        }
    }

    pub fn postgres(&self) -> Option<&PgStore> {
        match self {
            AnyStore::Postgres(s) => Some(s),
            AnyStore::Sqlite(_) => None,
        }
    }

    /// Whether the store can take work now (`/readyz`): a write commits, and on SQLite the
    /// database file is the one opened and its disk has room (see `health`).
    pub async fn check_ready(&self) -> Result<(), String> {
        each!(self, s => s.check_ready().await)
    }

    /// Why the store is stuck beyond what a full disk or a lost file explains (`/healthz`:
    /// a restart is the remedy); `None` when it is not.
    pub fn stuck(&self) -> Option<String> {
        match self {
            AnyStore::Sqlite(s) => s.stuck(),
            AnyStore::Postgres(_) => None,
        }
    }

    /// Whether several nodes may share this store.
    pub fn is_shared(&self) -> bool {
        matches!(self, AnyStore::Postgres(_))
    }

    /// On a shared store, calls `wake` whenever any node stores work (LISTEN/NOTIFY); on
    /// SQLite, where only this process writes, never.
    pub fn on_remote_work(&self, wake: impl Fn() + Send + Sync + 'static) {
        if let AnyStore::Postgres(s) = self {
            s.listen(wake);
        }
    }

    pub async fn put_credential(
        &self,
        tenant: &str,
        upstream: &str,
        sealed: &SealedCredential,
    ) -> crate::Result<()> {
        self.db().put_credential(tenant, upstream, sealed).await
    }
    pub async fn get_credential(
        &self,
        tenant: &str,
        upstream: &str,
    ) -> crate::Result<Option<SealedCredential>> {
        self.db().get_credential(tenant, upstream).await
    }
    pub async fn delete_credential(&self, tenant: &str, upstream: &str) -> crate::Result<bool> {
        self.db().delete_credential(tenant, upstream).await
    }
    pub async fn list_credentials(&self, tenant: &str) -> crate::Result<Vec<CredentialInfo>> {
        self.db().list_credentials(tenant).await
    }
    pub async fn credential_holders(&self) -> crate::Result<Vec<(String, String)>> {
        self.db().credential_holders().await
    }
    pub async fn put_oauth_grant(
        &self,
        tenant: &str,
        upstream: &str,
        tokens: &crate::OAuthTokens<'_>,
    ) -> crate::Result<i64> {
        self.db().put_oauth_grant(tenant, upstream, tokens).await
    }
    pub async fn add_oauth_grant(
        &self,
        tenant: &str,
        upstream: &str,
        tokens: &crate::OAuthTokens<'_>,
    ) -> crate::Result<()> {
        self.db().add_oauth_grant(tenant, upstream, tokens).await
    }
    pub async fn get_oauth_grant(
        &self,
        tenant: &str,
        upstream: &str,
    ) -> crate::Result<Option<crate::OAuthGrantRow>> {
        self.db().get_oauth_grant(tenant, upstream).await
    }
    pub async fn delete_oauth_grant(&self, tenant: &str, upstream: &str) -> crate::Result<bool> {
        self.db().delete_oauth_grant(tenant, upstream).await
    }
    pub async fn lease_oauth_refresh(
        &self,
        tenant: &str,
        upstream: &str,
        version: i64,
        owner: &str,
        now: i64,
        until: i64,
    ) -> crate::Result<bool> {
        self.db()
            .lease_oauth_refresh(tenant, upstream, version, owner, now, until)
            .await
    }
    pub async fn store_oauth_refresh(
        &self,
        tenant: &str,
        upstream: &str,
        version: i64,
        tokens: &crate::OAuthTokens<'_>,
    ) -> crate::Result<bool> {
        self.db()
            .store_oauth_refresh(tenant, upstream, version, tokens)
            .await
    }
    pub async fn release_oauth_lease(
        &self,
        tenant: &str,
        upstream: &str,
        owner: &str,
    ) -> crate::Result<()> {
        self.db().release_oauth_lease(tenant, upstream, owner).await
    }
    pub async fn break_oauth_grant(
        &self,
        tenant: &str,
        upstream: &str,
        version: i64,
        reason: &str,
    ) -> crate::Result<bool> {
        self.db()
            .break_oauth_grant(tenant, upstream, version, reason)
            .await
    }
    pub async fn list_oauth_grants(
        &self,
        tenant: Option<&str>,
        broken_only: bool,
    ) -> crate::Result<Vec<crate::OAuthGrantRow>> {
        self.db().list_oauth_grants(tenant, broken_only).await
    }
    pub async fn put_budget_override(
        &self,
        upstream: &str,
        tenant: &str,
        value: &str,
    ) -> crate::Result<String> {
        self.db().put_budget_override(upstream, tenant, value).await
    }
    pub async fn delete_budget_override(
        &self,
        upstream: &str,
        tenant: &str,
    ) -> crate::Result<bool> {
        self.db().delete_budget_override(upstream, tenant).await
    }
    pub async fn budget_overrides(&self) -> crate::Result<Vec<crate::BudgetOverrideRow>> {
        self.db().budget_overrides().await
    }
    pub async fn count_credentials(&self) -> crate::Result<i64> {
        self.db().count_credentials().await
    }
    pub async fn insert_token(
        &self,
        id: &str,
        tenant: &str,
        token_sha256: &[u8],
    ) -> crate::Result<TokenInfo> {
        self.db().insert_token(id, tenant, token_sha256).await
    }
    pub async fn token_tenant(&self, token_sha256: &[u8]) -> crate::Result<Option<String>> {
        self.db().token_tenant(token_sha256).await
    }
    pub async fn delete_token(&self, id: &str) -> crate::Result<Option<Vec<u8>>> {
        self.db().delete_token(id).await
    }
    pub async fn list_tokens(&self, tenant: Option<&str>) -> crate::Result<Vec<TokenInfo>> {
        self.db().list_tokens(tenant).await
    }
    pub async fn get_meta(&self, name: &str) -> crate::Result<Option<Vec<u8>>> {
        self.db().get_meta(name).await
    }
    pub async fn put_meta(&self, name: &str, value: &[u8]) -> crate::Result<()> {
        self.db().put_meta(name, value).await
    }
}
