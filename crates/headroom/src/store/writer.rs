//! Group commit for the busiest writes (inserting jobs, finishing attempts).
//!
//! Callers hand their write to one task that owns the turn on the writer connection: it takes
//! every write waiting (up to `MAX_GROUP`), runs them in one transaction with as few
//! statements as they allow (many rows per statement), commits, and only then answers each caller. A lone write is a transaction of
//! its own, with no added wait; under load, one commit (and one trip through the writer's
//! queue) serves many writes. If any write of a group fails, the group is rolled back and
//! each of its writes is run again in its own transaction, so that one bad write fails
//! alone.
//!
//! A write whose caller stops waiting (a dropped future) is still carried out.

use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::health::WriterHealth;
use super::jobs::{finish_attempts_in, insert_job_in, insert_jobs_in, Finish};
use super::Store;
use crate::store::model::jobs::*;

/// Writes in one transaction at most.
pub(super) const MAX_GROUP: usize = 128;
/// Writes waiting for their turn before callers wait to hand theirs over.
pub(super) const QUEUE: usize = 4096;

pub(super) enum Op {
    Insert {
        job: NewJob,
        reply: oneshot::Sender<anyhow::Result<Inserted>>,
    },
    Finish {
        attempt: AttemptRecord,
        transition: Transition,
        now: Millis,
        reply: oneshot::Sender<anyhow::Result<Job>>,
    },
}

pub(super) enum Done {
    Inserted(Inserted),
    Job(Job),
}

impl Op {
    pub(super) fn insert(job: NewJob) -> (Op, oneshot::Receiver<anyhow::Result<Inserted>>) {
        let (reply, rx) = oneshot::channel();
        (Op::Insert { job, reply }, rx)
    }

    pub(super) fn finish(
        attempt: AttemptRecord,
        transition: Transition,
        now: Millis,
    ) -> (Op, oneshot::Receiver<anyhow::Result<Job>>) {
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

    async fn apply(&self, conn: &mut SqliteConnection) -> anyhow::Result<Done> {
        Ok(match self {
            Op::Insert { job, .. } => Done::Inserted(insert_job_in(conn, job).await?),
            Op::Finish {
                attempt,
                transition,
                now,
                ..
            } => Done::Job(
                finish_attempts_in(conn, &[(attempt, transition, *now)])
                    .await?
                    .remove(0),
            ),
        })
    }

    /// An insert without a dedup id: one statement, whatever else the group holds.
    pub(super) fn is_plain_insert(&self) -> bool {
        matches!(self, Op::Insert { job, .. } if job.dedup_id.is_none())
    }

    /// Answers the caller (who may have stopped waiting).
    pub(super) fn reply(self, result: anyhow::Result<Done>) {
        match self {
            Op::Insert { reply, .. } => {
                let _ = reply.send(result.and_then(|d| match d {
                    Done::Inserted(i) => Ok(i),
                    Done::Job(_) => anyhow::bail!("a job insert answered with a job"),
                }));
            }
            Op::Finish { reply, .. } => {
                let _ = reply.send(result.and_then(|d| match d {
                    Done::Job(j) => Ok(j),
                    Done::Inserted(_) => anyhow::bail!("an attempt answered with an insert"),
                }));
            }
        }
    }
}

/// Starts the task that runs grouped writes on `writer`; it ends when every sender is gone.
/// Each group's outcome goes to `health`.
pub(super) fn spawn(writer: SqlitePool, health: WriterHealth) -> mpsc::Sender<Op> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(writer, health, rx));
    tx
}

async fn run(writer: SqlitePool, health: WriterHealth, mut rx: mpsc::Receiver<Op>) {
    let mut ops = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut ops, MAX_GROUP).await > 0 {
        run_group(&writer, &health, std::mem::take(&mut ops)).await;
    }
}

async fn run_group(writer: &SqlitePool, health: &WriterHealth, ops: Vec<Op>) {
    if ops.len() == 1 {
        for op in ops {
            run_alone(writer, health, op).await;
        }
        return;
    }
    let mut results = Vec::new();
    let all: anyhow::Result<()> = async {
        if ops.iter().all(Op::is_plain_insert) {
            // One statement, atomic on its own: no BEGIN and COMMIT, two round trips fewer.
            results = apply_group(&mut *writer.acquire().await?, &ops).await?;
            return Ok(());
        }
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        results = apply_group(&mut tx, &ops).await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    match all {
        Ok(()) => {
            health.record(&Ok(()));
            for (op, done) in ops.into_iter().zip(results) {
                op.reply(Ok(done));
            }
        }
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), writes = ops.len(),
                "a grouped write failed; running each alone");
            for op in ops {
                run_alone(writer, health, op).await;
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
    pub(super) fn of(ops: &'a [Op]) -> anyhow::Result<Plan<'a>> {
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
                    anyhow::ensure!(
                        ids.insert(attempt.job_id.as_str()),
                        "two attempts of the job {} in one group",
                        attempt.job_id
                    );
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

async fn apply_group(conn: &mut SqliteConnection, ops: &[Op]) -> anyhow::Result<Vec<Done>> {
    let plan = Plan::of(ops)?;
    let inserted = insert_jobs_in(conn, &plan.jobs()).await?;
    let moved = finish_attempts_in(conn, &plan.finishes()).await?;
    let mut results = plan.place(ops.len(), inserted, moved);
    for (result, op) in results.iter_mut().zip(ops) {
        if result.is_none() {
            *result = Some(op.apply(conn).await?);
        }
    }
    Ok(results.into_iter().flatten().collect())
}

async fn run_alone(writer: &SqlitePool, health: &WriterHealth, op: Op) {
    let result = async {
        if op.is_plain_insert() {
            return op.apply(&mut *writer.acquire().await?).await;
        }
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        let done = op.apply(&mut tx).await?;
        tx.commit().await?;
        Ok(done)
    }
    .await;
    health.record(&result);
    op.reply(result);
}

impl Store {
    /// Hands a write to the group-commit task and waits for its commit. Without the task
    /// (a store used from another runtime than the one that opened it), runs it alone.
    pub(super) async fn grouped<T>(
        &self,
        (op, rx): (Op, oneshot::Receiver<anyhow::Result<T>>),
    ) -> anyhow::Result<T> {
        if let Err(mpsc::error::SendError(op)) = self.ops.send(op).await {
            run_alone(self.writer(), &self.health, op).await;
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => anyhow::bail!("the store's writer stopped before answering"),
        }
    }
}
