//! Group commit on PostgreSQL for the busiest writes (inserting jobs, finishing attempts), as
//! `super::super::writer` does for SQLite: the writes waiting together share one transaction,
//! with many rows per statement, one `NOTIFY` and one commit (one WAL flush). A lone write is a
//! transaction of its own. If a group fails, each of its writes runs again alone, so that one
//! bad write fails alone.

use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use super::jobs::{finish_attempts_in, insert_job_in, insert_jobs_in};
pub(super) use crate::store::writer::Op;
use crate::store::writer::{Done, Plan, MAX_GROUP, QUEUE};

/// Runs one write in the caller's transaction.
async fn apply(op: &Op, conn: &mut PgConnection, node: &str) -> anyhow::Result<Done> {
    Ok(match op {
        Op::Insert { job, .. } => Done::Inserted(insert_job_in(conn, job).await?),
        Op::Finish {
            attempt,
            transition,
            now,
            ..
        } => {
            let mut jobs = finish_attempts_in(conn, &[(attempt, transition, *now)], node).await?;
            Done::Job(
                jobs.pop()
                    .ok_or_else(|| anyhow::anyhow!("no job \"{}\"", attempt.job_id))?,
            )
        }
    })
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

async fn apply_group(conn: &mut PgConnection, ops: &[Op], node: &str) -> anyhow::Result<Vec<Done>> {
    let plan = Plan::of(ops)?;
    let inserted = insert_jobs_in(conn, &plan.jobs()).await?;
    let moved = finish_attempts_in(conn, &plan.finishes(), node).await?;
    let mut results = plan.place(ops.len(), inserted, moved);
    for (result, op) in results.iter_mut().zip(ops) {
        if result.is_none() {
            *result = Some(apply(op, conn, node).await?);
        }
    }
    Ok(results.into_iter().flatten().collect())
}

async fn run_alone(pool: &PgPool, node: &str, op: Op) {
    let result = async {
        let mut tx = pool.begin().await?;
        let done = apply(&op, &mut tx, node).await?;
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
