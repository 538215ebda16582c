//! Whether the SQLite store can do its work: what `/readyz` asks (a real write) and what
//! `/healthz` asks (no I/O on the database: only what the writes themselves reported).
//!
//! A full disk, a database file deleted or replaced under the running server, or a writer
//! connection that fails every write all make the store not ready. Only the last one, when
//! neither the disk nor the file explains it, makes the process unhealthy: a restart is then
//! the remedy, whereas it would not give a full disk room (and would start an empty database
//! in place of a deleted one).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::Store;

/// Below this many free bytes on the database's filesystem the store is not ready: writes
/// are about to fail (a WAL frame, a checkpoint or a new page each need room).
pub const MIN_FREE_BYTES: u64 = 1 << 20;
/// The longest the readiness write may take (it waits behind queued writes).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A writer failing every write for this long, with room on the disk and its file in place,
/// is stuck: `/healthz` says so.
pub const STUCK_AFTER: Duration = Duration::from_secs(120);

/// The outcome of the writer's recent writes: since when they all fail, and the last error.
#[derive(Debug, Default, Clone)]
pub(crate) struct WriterHealth(Arc<Mutex<Option<(Instant, String)>>>);

impl WriterHealth {
    pub(crate) fn record<T>(&self, result: &crate::Result<T>) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => {
                if state.take().is_some() {
                    tracing::info!("the store takes writes again");
                }
            }
            Err(e) => {
                let error = format!("{e:#}");
                match &mut *state {
                    Some((_, last)) => *last = error,
                    None => {
                        tracing::error!(error = %error, "a write to the store failed");
                        *state = Some((Instant::now(), error));
                    }
                }
            }
        }
    }

    /// How long every write has failed, and the last error; `None` when the last succeeded.
    pub(crate) fn failing(&self) -> Option<(Duration, String)> {
        let state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state
            .as_ref()
            .map(|(since, error)| (since.elapsed(), error.clone()))
    }
}

/// A file's identity (device, inode): a file deleted, or replaced by another under the same
/// name, is not the one the open connections write to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

#[cfg(unix)]
pub(crate) fn file_id(path: &Path) -> std::io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

#[cfg(not(unix))]
pub(crate) fn file_id(path: &Path) -> std::io::Result<FileId> {
    std::fs::metadata(path).map(|_| FileId { dev: 0, ino: 0 })
}

/// Bytes free (for an unprivileged writer) on the filesystem holding `path`.
#[cfg(unix)]
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path and `stat` a properly sized out-parameter
    // that statvfs fills in; nothing is read from it unless the call succeeded.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(not(unix))]
pub fn free_bytes(_path: &Path) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

impl Store {
    /// The database file is still the one opened, and its disk has room. No I/O on the
    /// database itself (cheap enough for `/healthz`).
    pub fn check_file(&self) -> Result<(), String> {
        let (Some(path), Some(opened)) = (self.path(), self.file_id) else {
            return Ok(()); // in memory
        };
        match file_id(path) {
            Ok(id) if id == opened => {}
            Ok(_) => {
                return Err(format!(
                    "the database file {} was replaced by another file while in use; \
                     restore it and restart",
                    path.display()
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "the database file {} was deleted while in use; writes go nowhere \
                     durable: restore it and restart",
                    path.display()
                ))
            }
            Err(e) => return Err(format!("cannot look at {}: {e}", path.display())),
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        match free_bytes(dir) {
            Ok(free) if free < MIN_FREE_BYTES => Err(format!(
                "the disk holding {} is full ({free} bytes free, at least {MIN_FREE_BYTES} \
                 needed)",
                path.display()
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "cannot read the free space of {}: {e}",
                dir.display()
            )),
        }
    }

    /// Ready: `check_file`, then a real write committed through the writer connection.
    pub async fn check_ready(&self) -> Result<(), String> {
        self.check_file()?;
        let probe = async {
            let mut tx = self.write().await?;
            sqlx::query(
                "INSERT INTO meta (name, value) VALUES ('ready_probe', ?) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(crate::time::system_millis().to_be_bytes().to_vec())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<(), crate::StoreError>(())
        };
        let result = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(r) => r,
            Err(_) => Err(crate::StoreError::unavailable(format!(
                "a write did not commit within {}s",
                PROBE_TIMEOUT.as_secs()
            ))),
        };
        self.health.record(&result);
        result.map_err(|e| format!("cannot write: {e:#}"))
    }

    /// Stuck: every write has failed for `STUCK_AFTER` although the disk has room and the
    /// file is in place (`/healthz`).
    pub fn stuck(&self) -> Option<String> {
        let (for_, error) = self.health.failing()?;
        if for_ < STUCK_AFTER || self.check_file().is_err() {
            return None;
        }
        Some(format!(
            "every write to the store has failed for {}s (last: {error})",
            for_.as_secs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::SqlStore;

    #[tokio::test]
    async fn stuck_only_when_writes_fail_long_with_nothing_to_explain_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        let store = Store::open(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        assert_eq!(store.check_file(), Ok(()));
        assert_eq!(store.check_ready().await, Ok(()));
        assert_eq!(store.stuck(), None);
        // Failing, but not for long.
        store
            .health
            .record::<()>(&Err(crate::StoreError::internal("boom")));
        assert_eq!(store.stuck(), None);
        // Failing for longer than STUCK_AFTER.
        let long_ago = Instant::now()
            .checked_sub(STUCK_AFTER + Duration::from_secs(1))
            .unwrap();
        *store.health.0.lock().unwrap() = Some((long_ago, "boom".into()));
        let why = store.stuck().expect("stuck");
        assert!(why.contains("boom"), "{why}");
        // A write that works clears it.
        assert_eq!(store.check_ready().await, Ok(()));
        assert_eq!(store.stuck(), None);
        // A file deleted explains failures: not ready, but not stuck.
        *store.health.0.lock().unwrap() = Some((long_ago, "boom".into()));
        std::fs::remove_file(&db).unwrap();
        assert!(store.check_file().unwrap_err().contains("deleted"));
        assert_eq!(store.stuck(), None);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn database_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("p.db");
        let store = Store::open(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        store.db().put_meta("k", b"v").await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let path = format!("{}{suffix}", db.display());
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{path}: {mode:o}");
        }
        drop(store);
        // An existing database left readable by others is made private when opened.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _store = Store::open(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
