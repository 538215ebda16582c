//! Reading a column the same way from either backend's rows, so that one row reader (a job,
//! a batch, a schedule…) serves both the SQLite and the PostgreSQL store.

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// A row of either store.
pub(crate) trait StoreRow {
    fn col<T: Column>(&self, name: &str) -> crate::Result<T>;
}

/// A Rust type both backends read a column as.
pub(crate) trait Column: Sized {
    fn from_sqlite(row: &SqliteRow, name: &str) -> sqlx::Result<Self>;
    fn from_pg(row: &PgRow, name: &str) -> sqlx::Result<Self>;
}

macro_rules! columns {
    ($($t:ty),*) => {$(
        impl Column for $t {
            fn from_sqlite(row: &SqliteRow, name: &str) -> sqlx::Result<Self> {
                row.try_get(name)
            }
            fn from_pg(row: &PgRow, name: &str) -> sqlx::Result<Self> {
                row.try_get(name)
            }
        }
    )*};
}

columns!(
    String,
    Option<String>,
    i64,
    Option<i64>,
    bool,
    Vec<u8>,
    Option<Vec<u8>>
);

impl StoreRow for SqliteRow {
    fn col<T: Column>(&self, name: &str) -> crate::Result<T> {
        Ok(T::from_sqlite(self, name)?)
    }
}

impl StoreRow for PgRow {
    fn col<T: Column>(&self, name: &str) -> crate::Result<T> {
        Ok(T::from_pg(self, name)?)
    }
}
