//! Group commit on PostgreSQL for the busiest writes (inserting jobs, finishing attempts), as
//! `super::super::writer` does for SQLite: the writes waiting together share one transaction,
//! with many rows per statement, one `NOTIFY` and one commit (one WAL flush). A lone write is a
//! transaction of its own. If a group fails, each of its writes runs again alone, so that one
//! bad write fails alone.

use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use super::jobs::{finish_attempts_in, insert_job_in, insert_jobs_in};
use crate::jobs::model::*;

/// Writes in one transaction at most.
const MAX_GROUP: usize = 128;
/// Writes waiting for their turn before callers wait to hand theirs over.
const QUEUE: usize = 4096;

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

enum Done {
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

    fn reply(self, result: anyhow::Result<Done>) {
        // A caller that stopped waiting does not hear; the write is done all the same.
        match self {
            Op::Insert { reply, .. } => {
                let _ = reply.send(result.and_then(|d| match d {
                    Done::Inserted(i) => Ok(i),
                    Done::Job(_) => anyhow::bail!("an insert answered with a job"),
                }));
            }
            Op::Finish { reply, .. } => {
                let _ = reply.send(result.and_then(|d| match d {
                    Done::Job(j) => Ok(j),
                    Done::Inserted(_) => anyhow::bail!("a finish answered with an insert"),
                }));
            }
        }
    }

    async fn apply(&self, conn: &mut PgConnection, node: &str) -> anyhow::Result<Done> {
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
                Done::Job(
                    jobs.pop()
                        .ok_or_else(|| anyhow::anyhow!("no job \"{}\"", attempt.job_id))?,
                )
            }
        })
    }
}

/// Starts the task that runs grouped writes; it ends when every sender is gone.
pub(super) fn spawn(pool: PgPool, node: String) -> mpsc::Sender<Op> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(pool, node, rx));
    tx
}

async fn run(pool: PgPool, node: String, mut rx: mpsc::Receiver<Op>) {
    let mut ops = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut ops, MAX_GROUP).await > 0 {
        run_group(&pool, &node, std::mem::take(&mut ops)).await;
    }
}

async fn run_group(pool: &PgPool, node: &str, ops: Vec<Op>) {
    if ops.len() == 1 {
        for op in ops {
            run_alone(pool, node, op).await;
        }
        return;
    }
    let mut results = Vec::new();
    let all: anyhow::Result<()> = async {
        let mut tx = pool.begin().await?;
        results = apply_group(&mut tx, &ops, node).await?;
        super::notify_in(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    match all {
        Ok(()) => {
            for (op, done) in ops.into_iter().zip(results) {
                op.reply(Ok(done));
            }
        }
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), writes = ops.len(),
                "a grouped write failed; running each alone");
            for op in ops {
                run_alone(pool, node, op).await;
            }
        }
    }
}

/// The plain inserts as one statement, the finished attempts as two; inserts with a dedup id
/// one by one, in order. The results are in the order of `ops`.
async fn apply_group(conn: &mut PgConnection, ops: &[Op], node: &str) -> anyhow::Result<Vec<Done>> {
    let mut plain = Vec::new();
    let mut finishes = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Insert { job, .. } if job.dedup_id.is_none() => plain.push((i, job)),
            Op::Finish {
                attempt,
                transition,
                now,
                ..
            } => {
                anyhow::ensure!(
                    ids.insert(attempt.job_id.as_str()),
                    "two attempts of the job {} in one group",
                    attempt.job_id
                );
                finishes.push((i, (attempt, transition, *now)));
            }
            Op::Insert { .. } => {}
        }
    }
    let mut results: Vec<Option<Done>> = ops.iter().map(|_| None).collect();
    let jobs: Vec<&NewJob> = plain.iter().map(|(_, job)| *job).collect();
    for ((i, _), job) in plain.iter().zip(insert_jobs_in(conn, &jobs).await?) {
        results[*i] = Some(Done::Inserted(Inserted::Created(job)));
    }
    let args: Vec<_> = finishes.iter().map(|(_, f)| *f).collect();
    for ((i, _), job) in finishes
        .iter()
        .zip(finish_attempts_in(conn, &args, node).await?)
    {
        results[*i] = Some(Done::Job(job));
    }
    for (i, op) in ops.iter().enumerate() {
        if results[i].is_none() {
            results[i] = Some(op.apply(conn, node).await?);
        }
    }
    Ok(results.into_iter().flatten().collect())
}

async fn run_alone(pool: &PgPool, node: &str, op: Op) {
    let result = async {
        let mut tx = pool.begin().await?;
        let done = op.apply(&mut tx, node).await?;
        super::notify_in(&mut tx).await?;
        tx.commit().await?;
        Ok(done)
    }
    .await;
    op.reply(result);
}

/// Hands a write to the group-commit task and waits for its commit; without the task (a
/// store used from another runtime than the one that opened it), runs it alone.
pub(super) async fn grouped<T>(
    ops: &mpsc::Sender<Op>,
    pool: &PgPool,
    node: &str,
    op: Op,
    rx: oneshot::Receiver<anyhow::Result<T>>,
) -> anyhow::Result<T> {
    if let Err(mpsc::error::SendError(op)) = ops.send(op).await {
        run_alone(pool, node, op).await;
    }
    match rx.await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("the store's writer stopped before answering"),
    }
}
