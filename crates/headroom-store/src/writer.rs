//! Group commit for the busiest writes (inserting jobs, finishing attempts), on either
//! backend.
//!
//! Callers hand their write to one task that owns the turn on the writer (SQLite's writer
//! connection; PostgreSQL's pool): it takes every write waiting (up to `MAX_GROUP`), runs
//! them in one transaction with as few statements as they allow (many rows per statement),
//! commits, and only then answers each caller. A lone write is a transaction of its own,
//! with no added wait; under load, one commit (and one trip through the writer's queue)
//! serves many writes. If any write of a group fails, the group is rolled back and each of
//! its writes is run again in its own transaction, so that one bad write fails alone.
//!
//! What differs by backend is in `Writer`: on SQLite writes without a dedup id are one
//! statement, atomic on its own, and run without BEGIN and COMMIT, and every outcome goes
//! to the writer's health (`health`); on PostgreSQL each commit wakes the other nodes
//! (`NOTIFY`) and attempts finish under the node guard.
//!
//! A write whose caller stops waiting (a dropped future) is still carried out.

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::health::WriterHealth;
use super::jobs::{finish_attempts_in, insert_job_in, insert_jobs_in, Finish};
use super::sql::{Conn, Db, Tx};
use crate::model::jobs::*;

/// Writes in one transaction at most.
pub(super) const MAX_GROUP: usize = 128;
/// Writes waiting for their turn before callers wait to hand theirs over.
pub(super) const QUEUE: usize = 4096;

pub(super) enum Op {
    Insert {
        job: NewJob,
        reply: oneshot::Sender<crate::Result<Inserted>>,
    },
    Finish {
        attempt: AttemptRecord,
        transition: Transition,
        now: Millis,
        reply: oneshot::Sender<crate::Result<Job>>,
    },
}

pub(super) enum Done {
    Inserted(Inserted),
    Job(Job),
}

impl Op {
    pub(super) fn insert(job: NewJob) -> (Op, oneshot::Receiver<crate::Result<Inserted>>) {
        let (reply, rx) = oneshot::channel();
        (Op::Insert { job, reply }, rx)
    }

    pub(super) fn finish(
        attempt: AttemptRecord,
        transition: Transition,
        now: Millis,
    ) -> (Op, oneshot::Receiver<crate::Result<Job>>) {
        let (reply, rx) = oneshot::channel();
        (
            Op::Finish {
                attempt,
                transition,
                now,
                reply,
            },
            rx,
        )
    }

    async fn apply(&self, conn: &mut Conn<'_>, node: Option<&str>) -> crate::Result<Done> {
        Ok(match self {
            Op::Insert { job, .. } => Done::Inserted(insert_job_in(conn, job).await?),
            Op::Finish {
                attempt,
                transition,
                now,
                ..
            } => {
                let mut jobs =
                    finish_attempts_in(conn, &[(attempt, transition, *now)], node).await?;
                Done::Job(jobs.pop().ok_or_else(|| {
                    crate::StoreError::invalid(format!("no job \"{}\"", attempt.job_id))
                })?)
            }
        })
    }

    /// An insert without a dedup id: one statement, whatever else the group holds.
    pub(super) fn is_plain_insert(&self) -> bool {
        matches!(self, Op::Insert { job, .. } if job.dedup_id.is_none())
    }

    /// Answers the caller (who may have stopped waiting).
    pub(super) fn reply(self, result: crate::Result<Done>) {
        match self {
            Op::Insert { reply, .. } => {
                let _ = reply.send(result.and_then(|d| match d {
                    Done::Inserted(i) => Ok(i),
                    Done::Job(_) => crate::error::bail!("a job insert answered with a job"),
                }));
            }
            Op::Finish { reply, .. } => {
                let _ = reply.send(result.and_then(|d| match d {
                    Done::Job(j) => Ok(j),
                    Done::Inserted(_) => crate::error::bail!("an attempt answered with an insert"),
                }));
            }
        }
    }
}

/// Where grouped writes go, and what differs there by backend.
#[derive(Clone)]
pub(super) enum Writer {
    /// SQLite's writer connection, and what its writes report.
    Sqlite {
        pool: SqlitePool,
        health: WriterHealth,
    },
    /// PostgreSQL's pool, and this node (the node guard of the attempts it finishes).
    Postgres { pool: PgPool, node: String },
}

impl Writer {
    fn node(&self) -> Option<&str> {
        match self {
            Writer::Sqlite { .. } => None,
            Writer::Postgres { node, .. } => Some(node),
        }
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE` on SQLite, see `Store::write`).
    async fn begin(&self) -> crate::Result<Tx> {
        Ok(match self {
            Writer::Sqlite { pool, .. } => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Writer::Postgres { pool, .. } => Tx::Pg(pool.begin().await?),
        })
    }

    /// A connection to run writes that are one statement each on without a transaction
    /// around them, where the backend lets them (SQLite: plain inserts, atomic on their
    /// own, two round trips fewer); `None` where they need a transaction.
    async fn autocommit(&self, plain: bool) -> crate::Result<Option<PoolConnection<Sqlite>>> {
        match self {
            Writer::Sqlite { pool, .. } if plain => Ok(Some(pool.acquire().await?)),
            _ => Ok(None),
        }
    }

    /// What a write's outcome tells about the writer (SQLite's health).
    fn record<T>(&self, result: &crate::Result<T>) {
        if let Writer::Sqlite { health, .. } = self {
            health.record(result);
        }
    }
}

/// Starts the task that runs grouped writes; it ends when every sender is gone.
pub(super) fn spawn(writer: Writer) -> mpsc::Sender<Op> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(writer, rx));
    tx
}

async fn run(writer: Writer, mut rx: mpsc::Receiver<Op>) {
    let mut ops = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut ops, MAX_GROUP).await > 0 {
        run_group(&writer, std::mem::take(&mut ops)).await;
    }
}

async fn run_group(writer: &Writer, ops: Vec<Op>) {
    if ops.len() == 1 {
        for op in ops {
            run_alone(writer, op).await;
        }
        return;
    }
    let node = writer.node();
    let all: crate::Result<Vec<Done>> = async {
        if let Some(mut conn) = writer
            .autocommit(ops.iter().all(Op::is_plain_insert))
            .await?
        {
            return apply_group(&mut Conn::Sqlite(&mut conn), &ops, node).await;
        }
        let mut tx = writer.begin().await?;
        let results = apply_group(&mut tx.conn(), &ops, node).await?;
        commit(tx).await?;
        Ok(results)
    }
    .await;
    match all {
        Ok(results) => {
            writer.record(&Ok(()));
            for (op, done) in ops.into_iter().zip(results) {
                op.reply(Ok(done));
            }
        }
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), writes = ops.len(),
                "a grouped write failed; running each alone");
            for op in ops {
                run_alone(writer, op).await;
            }
        }
    }
}

/// How a group's writes run with as few statements as they allow: the plain inserts as one,
/// the finished attempts as two; inserts with a dedup id one by one, in order, since each
/// must see the ones before (both backends).
pub(super) struct Plan<'a> {
    plain: Vec<(usize, &'a NewJob)>,
    finishes: Vec<(usize, Finish<'a>)>,
}

impl<'a> Plan<'a> {
    pub(super) fn of(ops: &'a [Op]) -> crate::Result<Plan<'a>> {
        let mut plan = Plan {
            plain: Vec::new(),
            finishes: Vec::new(),
        };
        let mut ids = std::collections::HashSet::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Insert { job, .. } if op.is_plain_insert() => plan.plain.push((i, job)),
                Op::Finish {
                    attempt,
                    transition,
                    now,
                    ..
                } => {
                    // A job has one running attempt, so its id is never twice in a group; if
                    // it were, the statement could not tell the two apart.
                    if !ids.insert(attempt.job_id.as_str()) {
                        crate::error::bail!(
                            "two attempts of the job {} in one group",
                            attempt.job_id
                        );
                    }
                    plan.finishes.push((i, (attempt, transition, *now)));
                }
                Op::Insert { .. } => {}
            }
        }
        Ok(plan)
    }

    /// The plain inserts, for one statement.
    pub(super) fn jobs(&self) -> Vec<&'a NewJob> {
        self.plain.iter().map(|(_, job)| *job).collect()
    }

    /// The finished attempts, for one statement each of jobs and attempts.
    pub(super) fn finishes(&self) -> Vec<Finish<'a>> {
        self.finishes.iter().map(|(_, f)| *f).collect()
    }

    /// The answers of the grouped statements in the order of the group's writes; `None` for
    /// the writes left to run one by one.
    pub(super) fn place(&self, n: usize, inserted: Vec<Job>, moved: Vec<Job>) -> Vec<Option<Done>> {
        let mut results: Vec<Option<Done>> = (0..n).map(|_| None).collect();
        for ((i, _), job) in self.plain.iter().zip(inserted) {
            results[*i] = Some(Done::Inserted(Inserted::Created(job)));
        }
        for ((i, _), job) in self.finishes.iter().zip(moved) {
            results[*i] = Some(Done::Job(job));
        }
        results
    }
}

async fn apply_group(
    conn: &mut Conn<'_>,
    ops: &[Op],
    node: Option<&str>,
) -> crate::Result<Vec<Done>> {
    let plan = Plan::of(ops)?;
    let inserted = insert_jobs_in(conn, &plan.jobs()).await?;
    let moved = finish_attempts_in(conn, &plan.finishes(), node).await?;
    let mut results = plan.place(ops.len(), inserted, moved);
    for (result, op) in results.iter_mut().zip(ops) {
        if result.is_none() {
            *result = Some(op.apply(conn, node).await?);
        }
    }
    Ok(results.into_iter().flatten().collect())
}

/// Commits a group's transaction; on PostgreSQL the commit wakes the other nodes.
async fn commit(mut tx: Tx) -> crate::Result<()> {
    tx.wake_nodes().await?;
    tx.commit().await?;
    Ok(())
}

async fn run_alone(writer: &Writer, op: Op) {
    let node = writer.node();
    let result = async {
        if let Some(mut conn) = writer.autocommit(op.is_plain_insert()).await? {
            return op.apply(&mut Conn::Sqlite(&mut conn), node).await;
        }
        let mut tx = writer.begin().await?;
        let done = op.apply(&mut tx.conn(), node).await?;
        commit(tx).await?;
        Ok(done)
    }
    .await;
    writer.record(&result);
    op.reply(result);
}

impl Db<'_> {
    /// Hands a write to the group-commit task and waits for its commit. Without the task
    /// (a store used from another runtime than the one that opened it), runs it alone.
    pub(super) async fn grouped<T>(
        self,
        (op, rx): (Op, oneshot::Receiver<crate::Result<T>>),
    ) -> crate::Result<T> {
        let ops = match self {
            Db::Sqlite(s) => &s.ops,
            Db::Postgres(s) => s.ops(),
        };
        if let Err(mpsc::error::SendError(op)) = ops.send(op).await {
            let writer = match self {
                Db::Sqlite(s) => Writer::Sqlite {
                    pool: s.writer().clone(),
                    health: s.health.clone(),
                },
                Db::Postgres(s) => Writer::Postgres {
                    pool: s.pool().clone(),
                    node: s.node().to_string(),
                },
            };
            run_alone(&writer, op).await;
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => {
                crate::error::bail!(Unavailable, "the store's writer stopped before answering")
            }
        }
    }
}
