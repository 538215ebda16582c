//! The store's error: what failed, with its causes, and whether trying again later can help.
//!
//! A caller decides what to do from [`StoreError::kind`]: the API answers 503 with a
//! `Retry-After` for [`ErrorKind::Unavailable`] (the database is unreachable, the disk is full,
//! a lock was not had in time: nothing was stored, send it again) and 500 otherwise.

use std::fmt::Display;

/// The store's result.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What kind of failure, for deciding what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The database cannot be reached or cannot take the write now (connection lost, disk
    /// full, busy past the timeout, the writer stopped): the same call may succeed later.
    Unavailable,
    /// What was asked does not fit what is stored (an unknown id, a cursor this store did not
    /// give, a name that belongs to the config): asking again will not help.
    Invalid,
    /// Anything else: what the store holds cannot be read as expected, or a bug.
    Internal,
}

/// A store failure: a message saying what failed, over its causes (`source()`: what was being
/// done is the outer message, the database's own error the innermost), and its kind.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    message: String,
    kind: ErrorKind,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StoreError {
    pub fn new(kind: ErrorKind, message: impl Display) -> StoreError {
        StoreError {
            message: message.to_string(),
            kind,
            source: None,
        }
    }

    pub fn unavailable(message: impl Display) -> StoreError {
        StoreError::new(ErrorKind::Unavailable, message)
    }

    pub fn invalid(message: impl Display) -> StoreError {
        StoreError::new(ErrorKind::Invalid, message)
    }

    pub fn internal(message: impl Display) -> StoreError {
        StoreError::new(ErrorKind::Internal, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the same call may succeed later (see [`ErrorKind::Unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }

    /// This error under a message saying what was being done; the kind is kept.
    fn within(self, message: impl Display) -> StoreError {
        StoreError {
            message: message.to_string(),
            kind: self.kind,
            source: Some(Box::new(self)),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        let kind = if unavailable(&e) {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Internal
        };
        StoreError {
            message: e.to_string(),
            kind,
            source: None,
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> StoreError {
        match e {
            sqlx::migrate::MigrateError::Execute(e) => StoreError::from(e),
            e => StoreError::internal(e),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        StoreError {
            message: e.to_string(),
            kind: ErrorKind::Unavailable,
            source: None,
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> StoreError {
        StoreError {
            message: e.to_string(),
            kind: ErrorKind::Internal,
            source: None,
        }
    }
}

impl From<std::num::TryFromIntError> for StoreError {
    fn from(e: std::num::TryFromIntError) -> StoreError {
        StoreError::internal(e)
    }
}

/// Whether a database error says "not now" rather than "never": the connection or the
/// server's resources, not the statement.
fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match code.parse::<u32>() {
                // SQLite's primary result code is the low byte of the extended one: BUSY,
                // LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN.
                Ok(n) => matches!(n & 0xff, 5 | 6 | 7 | 8 | 10 | 13 | 14),
                // PostgreSQL's SQLSTATE: connection exceptions (08), insufficient resources
                // (53, disk full among them), operator intervention (57: shutting down),
                // serialization failures and deadlocks (40001, 40P01).
                Err(_) => {
                    code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57")
                        || code == "40001"
                        || code == "40P01"
                }
            }
        }
        _ => false,
    }
}

/// Adds what was being done to an error, like `anyhow::Context`, keeping its kind.
pub trait Context<T> {
    fn context(self, message: impl Display) -> Result<T>;
    fn with_context<M: Display>(self, message: impl FnOnce() -> M) -> Result<T>;
}

impl<T, E: Into<StoreError>> Context<T> for std::result::Result<T, E> {
    fn context(self, message: impl Display) -> Result<T> {
        self.map_err(|e| e.into().within(message))
    }

    fn with_context<M: Display>(self, message: impl FnOnce() -> M) -> Result<T> {
        self.map_err(|e| e.into().within(message()))
    }
}

/// A missing value (a row that must be there, a stored name that must parse) is an
/// [`ErrorKind::Internal`] error saying what was missing.
impl<T> Context<T> for Option<T> {
    fn context(self, message: impl Display) -> Result<T> {
        self.ok_or_else(|| StoreError::internal(message))
    }

    fn with_context<M: Display>(self, message: impl FnOnce() -> M) -> Result<T> {
        self.ok_or_else(|| StoreError::internal(message()))
    }
}

/// Returns early with an [`ErrorKind::Internal`] error (or the kind given first).
macro_rules! bail {
    (Invalid, $($arg:tt)*) => {
        return Err($crate::error::StoreError::invalid(format!($($arg)*)))
    };
    (Unavailable, $($arg:tt)*) => {
        return Err($crate::error::StoreError::unavailable(format!($($arg)*)))
    };
    ($($arg:tt)*) => {
        return Err($crate::error::StoreError::internal(format!($($arg)*)))
    };
}
pub(crate) use bail;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_kind_and_the_chain() {
        let e: std::result::Result<(), _> = Err(std::io::Error::other("disk gone"));
        let e = e.context("cannot write the job").unwrap_err();
        assert!(e.is_unavailable());
        assert_eq!(e.to_string(), "cannot write the job");
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("disk gone"));
        let e: Result<()> = Err(StoreError::invalid("no job \"x\""));
        assert_eq!(
            e.context("cannot cancel").unwrap_err().kind(),
            ErrorKind::Invalid
        );
    }
}
