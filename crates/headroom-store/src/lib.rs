//! Headroom's store: what it keeps (`model`: jobs, batches, schedules, events, credentials,
//! and the traits every backend implements) on SQLite (embedded, the default) or PostgreSQL
//! (`pg`, for several nodes). It knows nothing of HTTP or the config.
//!
//! The embedded store is one SQLite file (WAL journal) through sqlx, migrated on open.
//!
//! Everything Headroom keeps goes through the operations of this module (`jobs`, `batches`,
//! `schedules`, `events`, `credentials`, `retention`, `writer`), written once with plain,
//! portable SQL on the SQL layer (`sql`) for this store and the PostgreSQL store (`pg`, for
//! several nodes); what differs between the two is named at `sql`'s seam (`Dialect`,
//! `Db::node`, `Tx::wake_nodes`). `AnyStore` picks one by URL. Values arrive already
//! encrypted where they need to be: the store never sees a credential in the clear.
//!
//! Writes: SQLite has one writer at a time. Every write transaction of the jobs and batches
//! goes through one dedicated writer connection (`Store::write`), which queues writers in
//! this process fairly instead of letting them collide on the file lock (`SQLITE_BUSY`), and
//! starts with `BEGIN IMMEDIATE` so that a transaction that reads before it writes can never
//! fail to upgrade its lock. Reads use a pool of connections beside it (WAL: readers never
//! block the writer nor wait for it). Job inserts and attempt results that arrive together
//! share one transaction (group commit, `writer`).
//!
//! Durability: a commit is in the WAL file when it returns (`synchronous = NORMAL`), so it
//! survives the process being killed at any moment. After a power loss or an OS crash the
//! last commits before the WAL was checkpointed may be lost; `synchronous = FULL` would close
//! that at the cost of an fsync per commit.

mod any;
mod batches;
mod bulk;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod credentials;
pub mod error;
#[cfg(any(test, feature = "conformance"))]
pub mod event_conformance;
mod events;
mod exports;
pub mod health;
mod jobs;
pub mod model;
mod oauth;
#[cfg(any(test, feature = "conformance"))]
pub mod oauth_conformance;
pub mod pg;
mod retention;
mod row;
#[cfg(any(test, feature = "conformance"))]
pub mod schedule_conformance;
mod schedules;
pub(crate) mod sql;
pub mod time;
mod writer;

pub use any::AnyStore;
pub use error::{ErrorKind, Result, StoreError};
pub use oauth::{OAuthGrantRow, OAuthTokens};

/// One `#[tokio::test]` per property of the conformance suites (`conformance` for jobs and
/// batches, `schedule_conformance`, `event_conformance`), in modules `jobs`, `schedules` and
/// `events`, for the backend of the module it is expanded in. That module provides
/// `async fn fresh() -> Option<F>`, an empty store per test (`None`: the test ends there),
/// where `F` has a `store` field and an `async fn finish(self)` run after the property
/// (dropping a schema, say). Attributes given are put on every test (`#[ignore = "needs
/// PostgreSQL"]`, say).
///
/// ```text
/// mod sqlite_memory {
///     struct Fresh { store: headroom_store::Store }
///     impl Fresh { async fn finish(self) {} }
///     async fn fresh() -> Option<Fresh> {
///         Some(Fresh { store: headroom_store::Store::open("sqlite::memory:").await.unwrap() })
///     }
///     headroom_store::conformance_tests!();
/// }
/// ```
#[cfg(any(test, feature = "conformance"))]
#[macro_export]
macro_rules! conformance_tests {
    ($(#[$attr:meta])*) => {
        mod jobs {
            $crate::conformance_tests!(@properties [$(#[$attr])*] conformance:
                job_round_trip dedup_window dedup_per_tenant concurrent_writes
                list_filters_and_cursor claim_parallel claim_throttled claim_sequential
                finish_attempt_transitions cancel_job requeue_running next_ready_at callbacks
                batch_insert_and_claim batch_finish_counts_and_completion batch_turns
                batch_max_attempts batch_requeue_in_flight batch_cancel batch_callbacks bulk_jobs
                exports
                retention);
        }
        mod schedules {
            $crate::conformance_tests!(@properties [$(#[$attr])*] schedule_conformance:
                schedule_round_trip config_sync slots_add_and_remove
                fire_due_claims_and_advances previous_run_status
                concurrent_fires_take_a_slot_once runs_cursor resume_resets_slots
                prune_keeps_the_last_fired_run);
        }
        mod oauth {
            $crate::conformance_tests!(@properties [$(#[$attr])*] oauth_conformance:
                grant_round_trip refresh_lease_is_single_flight
                concurrent_leases_have_one_winner);
        }
        mod events {
            $crate::conformance_tests!(@properties [$(#[$attr])*] event_conformance:
                round_trip filters_and_cursor prune_by_time stats_group_and_sum
                backlog_counts_unfinished_jobs);
        }
    };
    (@properties $attrs:tt $suite:ident: $($property:ident)*) => {
        $(
            $crate::conformance_tests!(@property $attrs $suite $property);
        )*
    };
    (@property [$($attr:tt)*] $suite:ident $property:ident) => {
        $($attr)*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $property() {
            let Some(fresh) = super::fresh().await else {
                return;
            };
            $crate::$suite::$property(&fresh.store).await;
            fresh.finish().await;
        }
    };
}

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::error::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

/// How long a writer waits for another writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write waits for the writers queued before it.
const WRITER_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// The one connection that writes jobs and batches (the same pool as `pool` in memory).
    writer: SqlitePool,
    /// Writes that share transactions (group commit, see `writer`).
    ops: tokio::sync::mpsc::Sender<writer::Op>,
    /// The database file; `None` for an in-memory database.
    path: Option<PathBuf>,
    /// The file as opened, to notice it deleted or replaced (`health`).
    file_id: Option<health::FileId>,
    /// What the writes report (`health`).
    health: health::WriterHealth,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// A credential as stored: sealed by `credentials`, opaque here.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedCredential {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedCredential")
            .field("nonce_len", &self.nonce.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// What may be shown of a stored credential: which upstream it is for, and when it changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CredentialInfo {
    pub upstream: String,
    pub updated_at: String,
}

/// An operator's override of one tenant's budget at one upstream: `value` is its JSON,
/// which the store keeps without reading.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BudgetOverrideRow {
    pub upstream: String,
    pub tenant: String,
    pub value: String,
    pub updated_at: String,
}

/// What may be shown of an API token: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub tenant: String,
    pub created_at: String,
}

impl Store {
    /// Opens (creating it and its directory if needed) the SQLite database of a
    /// `sqlite://path/to/file.db` URL, or an in-memory one for `sqlite::memory:`, and brings
    /// its schema up to date.
    pub async fn open(url: &str) -> crate::Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            crate::error::bail!(
                Invalid,
                "store \"{}\": this is the SQLite store; open PostgreSQL with `AnyStore::open`",
                pg::redact(url)
            );
        }
        if !url.starts_with("sqlite:") {
            crate::error::bail!(
                Invalid,
                "store \"{}\": use a URL like \"sqlite://path/to/file.db\"",
                pg::redact(url)
            );
        }
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("store \"{url}\" is not a SQLite URL"))?
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // Group commits write up to 128 rows per statement, one statement text per group
            // size: keep them all prepared rather than re-preparing them in turn.
            .statement_cache_capacity(1024);
        let (options, pool_options, path) = if in_memory {
            // One connection that never closes: an in-memory database lives as long as it.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
            (options, pool, None)
        } else {
            let path = options.get_filename().to_path_buf();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dir(dir)?;
            }
            create_private_files(&path)?;
            let options = options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal);
            (
                options,
                SqlitePoolOptions::new().max_connections(8),
                Some(path),
            )
        };
        let pool = pool_options
            .connect_with(options.clone())
            .await
            .with_context(|| format!("cannot open the SQLite database {url}"))?;
        sqlx::migrate!()
            .run(&pool)
            .await
            .with_context(|| format!("cannot bring the database {url} up to date"))?;
        let writer = if in_memory {
            pool.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(WRITER_WAIT)
                .after_release(|conn, _| Box::pin(recover_writer(conn)))
                .connect_with(options)
                .await
                .with_context(|| format!("cannot open the SQLite database {url} for writing"))?
        };
        let health = health::WriterHealth::default();
        let ops = writer::spawn(writer::Writer::Sqlite {
            pool: writer.clone(),
            health: health.clone(),
        });
        let file_id = match &path {
            Some(p) => Some(
                health::file_id(p)
                    .with_context(|| format!("cannot look at the database file {}", p.display()))?,
            ),
            None => None,
        };
        Ok(Store {
            pool,
            writer,
            ops,
            path,
            file_id,
            health,
        })
    }

    /// Starts a write transaction on the writer connection, waiting for the writers before
    /// it. Nothing may be read through `pool` while it is open (in memory they are the same
    /// connection): read through the transaction.
    pub(crate) async fn write(&self) -> crate::Result<Transaction<'static, Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .context("cannot start a write transaction")
    }

    /// The writer connection's pool, for writes that are one statement.
    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The database file, `None` for an in-memory database.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// Creates a directory (and its parents), readable by its owner only where it is new.
fn create_private_dir(dir: &Path) -> crate::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))
}

/// Creates the database file readable by its owner only (SQLite then gives its `-wal` and
/// `-shm` files the same mode), and takes group and others' access away from an existing
/// database and its companions: they hold jobs' requests and responses.
fn create_private_files(db: &Path) -> crate::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(db)
            .with_context(|| format!("cannot create the database file {}", db.display()))?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            let path = PathBuf::from(name);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| {
                        format!("cannot make {} private (mode 600)", path.display())
                    })?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = db;
    Ok(())
}

/// Whether the writer connection may be used again (`after_release`). A COMMIT that fails
/// (a full disk: SQLite rolls the transaction back itself) leaves sqlx counting a
/// transaction that is gone; its ROLLBACK then fails too, and every later `BEGIN` on that
/// connection would fail ("begin_with at non-zero transaction depth"). Such a connection is
/// closed, and the pool opens a new one for the next write.
async fn recover_writer(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    // The rollback of a dropped transaction is queued on the connection: let it run first.
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!(
            "the store's writer connection was left inside a failed transaction; reopening it"
        );
        return Ok(false);
    }
    Ok(true)
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2025-03-01T12:00:00.123Z`: sortable as text.
pub fn now_rfc3339() -> String {
    crate::time::rfc3339(crate::time::system_millis())
}

#[cfg(test)]
mod tests {
    use super::sql::SqlStore;
    use super::*;

    #[tokio::test]
    async fn opens_creates_and_migrates_a_file_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("nested/headroom.db");
        let url = format!("sqlite://{}", db.display());
        let store = Store::open(&url).await.unwrap();
        assert_eq!(store.path(), Some(db.as_path()));
        let sealed = SealedCredential {
            nonce: vec![1; 24],
            ciphertext: vec![2; 40],
        };
        store
            .db()
            .put_credential("acme", "crm", &sealed)
            .await
            .unwrap();
        store
            .db()
            .put_credential("acme", "crm", &sealed)
            .await
            .unwrap();
        assert_eq!(
            store.db().get_credential("acme", "crm").await.unwrap(),
            Some(sealed)
        );
        assert_eq!(store.db().list_credentials("acme").await.unwrap().len(), 1);
        drop(store);
        // Reopening runs the migrations again without harm and keeps the data.
        let store = Store::open(&url).await.unwrap();
        assert_eq!(store.db().count_credentials().await.unwrap(), 1);
        assert!(store.db().delete_credential("acme", "crm").await.unwrap());
        assert!(!store.db().delete_credential("acme", "crm").await.unwrap());
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn in_memory_and_unsupported_urls() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        assert!(store.path().is_none());
        store.db().put_meta("k", b"v").await.unwrap();
        assert_eq!(store.db().get_meta("k").await.unwrap(), Some(b"v".to_vec()));
        let e = Store::open("postgres://localhost/x").await.unwrap_err();
        assert!(e.to_string().contains("AnyStore::open"), "{e}");
    }
}
