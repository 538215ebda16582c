//! One SQL layer for both backends: a statement is written once, with `?` placeholders and
//! typed binds (`Sql`), and runs on SQLite or PostgreSQL through an enum of connections
//! (`Conn`) or write transactions (`Tx`); what it returns is read by the row readers of
//! `row` (`StoreRow`), whichever backend it came from. Backends are chosen by an enum, as
//! svix-server's cache does; what really differs between them is named at one seam,
//! `Dialect` (index hints, row locks, `BEGIN IMMEDIATE`), and where the PostgreSQL store
//! does more (node guards, `NOTIFY`), the operation says so in one `match` on `Db`.
//!
//! Placeholders are numbered for PostgreSQL (`$1, $2, …`) here and nowhere else.

use std::borrow::Cow;

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::pg::PgStore;
use super::row::{Column, StoreRow};
use super::Store;

/// A value bound to a `?`: the kinds the store binds.
#[derive(Debug, Clone)]
pub(crate) enum Value<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(Cow<'a, str>),
    OptText(Option<Cow<'a, str>>),
    Bool(bool),
    Bytes(Cow<'a, [u8]>),
    OptBytes(Option<Cow<'a, [u8]>>),
}

macro_rules! values {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {$(
        impl<'a> From<$t> for Value<'a> {
            fn from($v: $t) -> Value<'a> {
                $e
            }
        }
    )*};
}

values!(
    i64 => |v| Value::Int(v),
    Option<i64> => |v| Value::OptInt(v),
    bool => |v| Value::Bool(v),
    &'a str => |v| Value::Text(Cow::Borrowed(v)),
    &'a String => |v| Value::Text(Cow::Borrowed(v)),
    String => |v| Value::Text(Cow::Owned(v)),
    Option<&'a str> => |v| Value::OptText(v.map(Cow::Borrowed)),
    &'a Option<String> => |v| Value::OptText(v.as_deref().map(Cow::Borrowed)),
    Option<String> => |v| Value::OptText(v.map(Cow::Owned)),
    &'a [u8] => |v| Value::Bytes(Cow::Borrowed(v)),
    &'a Vec<u8> => |v| Value::Bytes(Cow::Borrowed(v)),
    Vec<u8> => |v| Value::Bytes(Cow::Owned(v)),
    &'a Option<Vec<u8>> => |v| Value::OptBytes(v.as_deref().map(Cow::Borrowed)),
    Option<Vec<u8>> => |v| Value::OptBytes(v.map(Cow::Owned)),
    Option<&'a String> => |v| Value::OptText(v.map(|s| Cow::Borrowed(s.as_str()))),
    Option<&'a [u8]> => |v| Value::OptBytes(v.map(Cow::Borrowed)),
);

/// A statement with `?` placeholders and its binds, in order.
#[derive(Debug, Clone)]
pub(crate) struct Sql<'a> {
    text: Cow<'a, str>,
    binds: Vec<Value<'a>>,
}

impl<'a> Sql<'a> {
    pub(crate) fn new(text: impl Into<Cow<'a, str>>) -> Sql<'a> {
        Sql {
            text: text.into(),
            binds: Vec::new(),
        }
    }

    pub(crate) fn bind(mut self, value: impl Into<Value<'a>>) -> Sql<'a> {
        self.binds.push(value.into());
        self
    }

    /// Binds every value in turn (the list of an `IN (…)`).
    pub(crate) fn bind_all<V: Into<Value<'a>>>(
        mut self,
        values: impl IntoIterator<Item = V>,
    ) -> Sql<'a> {
        self.binds.extend(values.into_iter().map(Into::into));
        self
    }

    fn sqlite(&self) -> Query<'_, Sqlite, SqliteArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for v in &self.binds {
            q = bind!(q, v);
        }
        q
    }

    fn pg<'q>(&'q self, numbered: &'q str) -> Query<'q, Postgres, PgArguments> {
        let mut q = sqlx::query(numbered);
        for v in &self.binds {
            q = bind!(q, v);
        }
        q
    }
}

/// Binds one value on either backend's query (the same Rust types on both).
macro_rules! bind {
    ($q:expr, $v:expr) => {
        match $v {
            Value::Int(i) => $q.bind(*i),
            Value::OptInt(i) => $q.bind(*i),
            Value::Text(t) => $q.bind(t.as_ref()),
            Value::OptText(t) => $q.bind(t.as_deref()),
            Value::Bool(b) => $q.bind(*b),
            Value::Bytes(b) => $q.bind(b.as_ref()),
            Value::OptBytes(b) => $q.bind(b.as_deref()),
        }
    };
}
use bind;

/// Numbers the `?` placeholders of a statement (`$1, $2, …`), outside quoted text.
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

/// `?, ?, …` for `n` binds (an `IN (…)` list).
pub(crate) fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// What the SQL of the two backends really differs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// `INDEXED BY index` on SQLite, whose planner otherwise picks a worse one for some
    /// statements; nothing on PostgreSQL.
    pub(crate) fn indexed_by(self, index: &str) -> String {
        match self {
            Dialect::Sqlite => format!("INDEXED BY {index}"),
            Dialect::Postgres => String::new(),
        }
    }

    /// ` FOR UPDATE SKIP LOCKED` on PostgreSQL, where several nodes claim at once and each
    /// takes rows the others have not locked; nothing on SQLite, whose one writer holds the
    /// whole database.
    pub(crate) fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// ` FOR UPDATE OF table SKIP LOCKED` on PostgreSQL (the rows of one table of a join).
    pub(crate) fn skip_locked_of(self, table: &str) -> String {
        match self {
            Dialect::Sqlite => String::new(),
            Dialect::Postgres => format!(" FOR UPDATE OF {table} SKIP LOCKED"),
        }
    }
}

/// A row of either backend, for the readers of `row`.
pub(crate) enum Row {
    Sqlite(SqliteRow),
    Pg(PgRow),
}

impl From<SqliteRow> for Row {
    fn from(r: SqliteRow) -> Row {
        Row::Sqlite(r)
    }
}

impl From<PgRow> for Row {
    fn from(r: PgRow) -> Row {
        Row::Pg(r)
    }
}

impl StoreRow for Row {
    fn col<T: Column>(&self, name: &str) -> crate::Result<T> {
        match self {
            Row::Sqlite(r) => r.col(name),
            Row::Pg(r) => r.col(name),
        }
    }
}

/// Where a statement runs: a connection (inside a transaction) or a pool, of either backend.
pub(crate) enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    SqlitePool(&'c SqlitePool),
    Pg(&'c mut PgConnection),
    PgPool(&'c PgPool),
}

/// Runs `$call` with `$query` (the statement, bound) and `$exec` (where it runs) of whichever
/// backend `$conn` is.
macro_rules! run {
    ($conn:expr, $q:expr, |$query:ident, $exec:ident| $call:expr) => {
        match $conn {
            Conn::Sqlite(c) => {
                let $query = $q.sqlite();
                let $exec = &mut **c;
                $call
            }
            Conn::SqlitePool(p) => {
                let $query = $q.sqlite();
                let $exec = *p;
                $call
            }
            Conn::Pg(c) => {
                let text = numbered(&$q.text);
                let $query = $q.pg(&text);
                let $exec = &mut **c;
                $call
            }
            Conn::PgPool(p) => {
                let text = numbered(&$q.text);
                let $query = $q.pg(&text);
                let $exec = *p;
                $call
            }
        }
    };
}

impl Conn<'_> {
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Conn::Sqlite(_) | Conn::SqlitePool(_) => Dialect::Sqlite,
            Conn::Pg(_) | Conn::PgPool(_) => Dialect::Postgres,
        }
    }

    /// Runs a statement; the number of rows it changed.
    pub(crate) async fn execute(&mut self, q: &Sql<'_>) -> sqlx::Result<u64> {
        run!(self, q, |query, exec| query
            .execute(exec)
            .await
            .map(|r| r.rows_affected()))
    }

    pub(crate) async fn fetch_all(&mut self, q: &Sql<'_>) -> sqlx::Result<Vec<Row>> {
        run!(self, q, |query, exec| Ok(query
            .fetch_all(exec)
            .await?
            .into_iter()
            .map(Row::from)
            .collect()))
    }

    pub(crate) async fn fetch_optional(&mut self, q: &Sql<'_>) -> sqlx::Result<Option<Row>> {
        run!(self, q, |query, exec| Ok(query
            .fetch_optional(exec)
            .await?
            .map(Row::from)))
    }

    /// Takes a lock on `key` until the transaction ends, so that nodes doing the same at
    /// once go one after the other: an advisory lock on PostgreSQL; nothing on SQLite, whose
    /// one writer goes alone anyway.
    pub(crate) async fn lock_key(&mut self, key: &str) -> sqlx::Result<()> {
        if self.dialect() == Dialect::Sqlite {
            return Ok(());
        }
        let q = Sql::new("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))").bind(key);
        self.execute(&q).await.map(drop)
    }

    /// `lock_key` with a number for the key.
    pub(crate) async fn lock_id(&mut self, id: i64) -> sqlx::Result<()> {
        if self.dialect() == Dialect::Sqlite {
            return Ok(());
        }
        self.execute(&Sql::new("SELECT pg_advisory_xact_lock(?)").bind(id))
            .await
            .map(drop)
    }

    pub(crate) async fn fetch_one(&mut self, q: &Sql<'_>) -> sqlx::Result<Row> {
        self.fetch_optional(q)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }
}

/// A transaction of either backend (`Db::begin` for writes, `Db::read` for reads that must
/// agree). Dropped without `commit`, it rolls back.
pub(crate) enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Pg(Transaction<'static, Postgres>),
}

impl Tx {
    /// The transaction's connection, to run statements in it.
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match self {
            Tx::Sqlite(tx) => Conn::Sqlite(tx),
            Tx::Pg(tx) => Conn::Pg(tx),
        }
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Tx::Sqlite(_) => Dialect::Sqlite,
            Tx::Pg(_) => Dialect::Postgres,
        }
    }

    pub(crate) async fn execute(&mut self, q: &Sql<'_>) -> sqlx::Result<u64> {
        self.conn().execute(q).await
    }

    pub(crate) async fn fetch_all(&mut self, q: &Sql<'_>) -> sqlx::Result<Vec<Row>> {
        self.conn().fetch_all(q).await
    }

    pub(crate) async fn fetch_optional(&mut self, q: &Sql<'_>) -> sqlx::Result<Option<Row>> {
        self.conn().fetch_optional(q).await
    }

    /// Wakes every node's dispatcher when (if) the transaction commits: `NOTIFY` on
    /// PostgreSQL; nothing on SQLite, where this process is the only one working.
    pub(crate) async fn wake_nodes(&mut self) -> crate::Result<()> {
        match self {
            Tx::Sqlite(_) => Ok(()),
            Tx::Pg(tx) => super::pg::notify_in(tx).await,
        }
    }

    pub(crate) async fn commit(self) -> sqlx::Result<()> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Pg(tx) => tx.commit().await,
        }
    }
}

/// One store of either backend, as the operations written once see it.
#[derive(Clone, Copy)]
pub(crate) enum Db<'s> {
    Sqlite(&'s Store),
    Postgres(&'s PgStore),
}

impl<'s> Db<'s> {
    pub(crate) fn dialect(self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The node guard: the id of this node, which the rows it holds (running jobs, records
    /// in flight, callbacks being delivered) name on PostgreSQL; `None` on SQLite, where
    /// this process is the only one.
    pub(crate) fn node(self) -> Option<&'s str> {
        match self {
            Db::Sqlite(_) => None,
            Db::Postgres(s) => Some(s.node()),
        }
    }

    /// The pool of connections (reads; on PostgreSQL, every statement outside a transaction).
    pub(crate) fn pool(self) -> Conn<'s> {
        match self {
            Db::Sqlite(s) => Conn::SqlitePool(s.pool()),
            Db::Postgres(s) => Conn::PgPool(s.pool()),
        }
    }

    /// Where a write that is one statement goes: SQLite's writer connection (queued with the
    /// other writers), PostgreSQL's pool.
    pub(crate) fn writer(self) -> Conn<'s> {
        match self {
            Db::Sqlite(s) => Conn::SqlitePool(s.writer()),
            Db::Postgres(s) => Conn::PgPool(s.pool()),
        }
    }

    /// Starts a read transaction on the pool (reads that must agree with each other).
    pub(crate) async fn read(self) -> crate::Result<Tx> {
        Ok(match self {
            Db::Sqlite(s) => Tx::Sqlite(s.pool().begin().await?),
            Db::Postgres(s) => Tx::Pg(s.pool().begin().await?),
        })
    }

    /// Starts a write transaction: `BEGIN IMMEDIATE` on SQLite's writer connection (see
    /// `Store::write`), a transaction from the pool on PostgreSQL.
    pub(crate) async fn begin(self) -> crate::Result<Tx> {
        Ok(match self {
            Db::Sqlite(s) => Tx::Sqlite(s.write().await?),
            Db::Postgres(s) => Tx::Pg(s.write().await?),
        })
    }
}

/// A store the operations written once run on: the SQLite store, the PostgreSQL store, or
/// either (`AnyStore`). The store traits (`JobStore`, `BatchStore`, …) are implemented once
/// for every `SqlStore`.
pub(crate) trait SqlStore: Send + Sync {
    fn db(&self) -> Db<'_>;

    /// New work is refused (not acknowledged) while the SQLite file it would go to was
    /// deleted or replaced, or its disk is full: SQLite would take it into a file that is
    /// gone after a restart.
    fn durable(&self) -> crate::Result<()> {
        match self.db() {
            Db::Sqlite(s) => s.check_file().map_err(crate::StoreError::unavailable),
            Db::Postgres(_) => Ok(()),
        }
    }
}

impl SqlStore for Store {
    fn db(&self) -> Db<'_> {
        Db::Sqlite(self)
    }
}

impl SqlStore for PgStore {
    fn db(&self) -> Db<'_> {
        Db::Postgres(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        assert_eq!(
            numbered("SELECT '?' FROM t WHERE a = ? AND b IN (?, ?)"),
            "SELECT '?' FROM t WHERE a = $1 AND b IN ($2, $3)"
        );
        assert_eq!(placeholders(3), "?, ?, ?");
    }
}
