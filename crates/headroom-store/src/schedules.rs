//! `ScheduleStore`, on either backend.
//!
//! A run is taken, enqueued, recorded and its slot moved on in one transaction (on SQLite,
//! on the writer connection, see `super`): a crash before the commit leaves the slot due (it
//! runs after the restart), a crash after it leaves the slot moved on (it does not run
//! twice). On PostgreSQL due slots are taken with `FOR UPDATE SKIP LOCKED`, so that nodes
//! firing at once take each slot once, and the work a run stores wakes every node.

use crate::error::Context;

use super::batches::{insert_batch_in, parse_batch_status};
use super::jobs::insert_job_in;
use super::row::StoreRow;
use super::sql::{Sql, SqlStore, Tx};
use crate::model::jobs::{parse_cursor, Inserted, JobStatus, Millis, Page};
use crate::model::schedules::*;

const SCHEDULE_COLUMNS: &str = "name, definition, from_config, paused, created_at, updated_at";
/// The columns of a run with its job's and batch's status, as `run_from_row` reads them.
const RUN_COLUMNS: &str = "r.seq, r.schedule, r.tenant, r.fire_at, r.due_at, r.recorded_at, \
     r.outcome, r.reason, r.job_id, r.batch_id, j.status AS job_status, b.status AS batch_status";
const RUN_JOINS: &str = "FROM schedule_runs AS r LEFT JOIN jobs AS j ON j.id = r.job_id \
     LEFT JOIN batches AS b ON b.id = r.batch_id";

fn schedule_from_row<R: StoreRow>(row: &R) -> crate::Result<StoredSchedule> {
    Ok(StoredSchedule {
        name: row.col("name")?,
        definition: row.col("definition")?,
        from_config: row.col("from_config")?,
        paused: row.col("paused")?,
        created_at: row.col("created_at")?,
        updated_at: row.col("updated_at")?,
    })
}

fn target_from_row<R: StoreRow>(row: &R) -> crate::Result<Option<Target>> {
    if let Some(id) = row.col::<Option<String>>("job_id")? {
        let status = row
            .col::<Option<String>>("job_status")?
            .map(|s| {
                JobStatus::parse(&s)
                    .with_context(|| format!("unknown job status \"{s}\" in the store"))
            })
            .transpose()?;
        return Ok(Some(Target::Job { id, status }));
    }
    if let Some(id) = row.col::<Option<String>>("batch_id")? {
        let status = row
            .col::<Option<String>>("batch_status")?
            .map(|s| parse_batch_status(&s))
            .transpose()?;
        return Ok(Some(Target::Batch { id, status }));
    }
    Ok(None)
}

fn run_from_row<R: StoreRow>(row: &R) -> crate::Result<(i64, Run)> {
    let outcome: String = row.col("outcome")?;
    let run = Run {
        schedule: row.col("schedule")?,
        tenant: row.col("tenant")?,
        fire_at: row.col("fire_at")?,
        due_at: row.col("due_at")?,
        recorded_at: row.col("recorded_at")?,
        outcome: RunOutcome::parse(&outcome)
            .with_context(|| format!("unknown run outcome \"{outcome}\" in the store"))?,
        reason: row.col("reason")?,
        target: target_from_row(row)?,
    };
    Ok((row.col("seq")?, run))
}

/// The last run of (schedule, tenant) that enqueued something, with its status now.
async fn last_fired(tx: &mut Tx, schedule: &str, tenant: &str) -> crate::Result<Option<Target>> {
    let q = Sql::new(format!(
        "SELECT {RUN_COLUMNS} {RUN_JOINS} WHERE r.schedule = ? AND r.tenant = ? \
         AND r.outcome = 'fired' ORDER BY r.seq DESC LIMIT 1"
    ))
    .bind(schedule)
    .bind(tenant);
    let row = tx
        .fetch_optional(&q)
        .await
        .context("cannot read a schedule's last run")?;
    match row {
        Some(row) => target_from_row(&row),
        None => Ok(None),
    }
}

async fn delete_in(tx: &mut Tx, name: &str) -> crate::Result<bool> {
    tx.execute(&Sql::new("DELETE FROM schedule_runs WHERE schedule = ?").bind(name))
        .await
        .context("cannot delete a schedule's runs")?;
    tx.execute(&Sql::new("DELETE FROM schedule_slots WHERE schedule = ?").bind(name))
        .await
        .context("cannot delete a schedule's slots")?;
    let deleted = tx
        .execute(&Sql::new("DELETE FROM schedules WHERE name = ?").bind(name))
        .await
        .context("cannot delete a schedule")?;
    Ok(deleted > 0)
}

async fn insert_schedule_in(tx: &mut Tx, s: &StoredSchedule) -> crate::Result<bool> {
    let q = Sql::new(
        "INSERT INTO schedules (name, definition, from_config, paused, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&s.name)
    .bind(&s.definition)
    .bind(s.from_config)
    .bind(s.paused)
    .bind(s.created_at)
    .bind(s.updated_at);
    let inserted = tx
        .execute(&q)
        .await
        .with_context(|| format!("cannot store the schedule {}", s.name))?;
    Ok(inserted > 0)
}

fn slot_from_row<R: StoreRow>(r: &R) -> crate::Result<Slot> {
    Ok(Slot {
        schedule: r.col("schedule")?,
        tenant: r.col("tenant")?,
        fire_at: r.col("fire_at")?,
        due_at: r.col("due_at")?,
    })
}

const REMOVE_SLOT: &str = "DELETE FROM schedule_slots WHERE schedule = ? AND tenant = ?";

impl<S: SqlStore> ScheduleStore for S {
    async fn create_schedule(&self, schedule: &StoredSchedule) -> crate::Result<bool> {
        let mut tx = self.db().begin().await?;
        let created = insert_schedule_in(&mut tx, schedule).await?;
        tx.commit().await.context("cannot commit a schedule")?;
        Ok(created)
    }

    async fn sync_config_schedules(
        &self,
        schedules: &[StoredSchedule],
        now: Millis,
    ) -> crate::Result<()> {
        let mut tx = self.db().begin().await?;
        for s in schedules {
            let q = Sql::new(format!(
                "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = ?"
            ))
            .bind(&s.name);
            let row = tx
                .fetch_optional(&q)
                .await
                .context("cannot read a schedule")?;
            match row.map(|r| schedule_from_row(&r)).transpose()? {
                None => {
                    insert_schedule_in(&mut tx, s).await?;
                }
                Some(stored) if !stored.from_config => crate::error::bail!(
                    Invalid,
                    "schedule \"{}\" is in the config file and was also created through the \
                     API; delete the API one (`headroom schedules delete {}`) or rename one",
                    s.name,
                    s.name
                ),
                Some(stored) if stored.definition != s.definition => {
                    // Changed: the old slots were computed from the old cron and tenants.
                    tx.execute(
                        &Sql::new("DELETE FROM schedule_slots WHERE schedule = ?").bind(&s.name),
                    )
                    .await
                    .context("cannot reset a schedule's slots")?;
                    let q = Sql::new(
                        "UPDATE schedules SET definition = ?, updated_at = ? WHERE name = ?",
                    )
                    .bind(&s.definition)
                    .bind(now)
                    .bind(&s.name);
                    tx.execute(&q).await.context("cannot update a schedule")?;
                }
                Some(_) => {}
            }
        }
        let stale: Vec<String> = tx
            .fetch_all(&Sql::new("SELECT name FROM schedules WHERE from_config"))
            .await
            .context("cannot list config schedules")?
            .iter()
            .map(|r| r.col("name"))
            .collect::<crate::Result<_>>()?;
        for name in stale {
            if !schedules.iter().any(|s| s.name == name) {
                delete_in(&mut tx, &name).await?;
            }
        }
        tx.commit()
            .await
            .context("cannot commit config schedules")?;
        Ok(())
    }

    async fn get_schedule(&self, name: &str) -> crate::Result<Option<StoredSchedule>> {
        let q = Sql::new(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = ?"
        ))
        .bind(name);
        let row = self
            .db()
            .pool()
            .fetch_optional(&q)
            .await
            .context("cannot read a schedule")?;
        row.map(|r| schedule_from_row(&r)).transpose()
    }

    async fn list_schedules(&self) -> crate::Result<Vec<StoredSchedule>> {
        let q = Sql::new(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name"
        ));
        let rows = self
            .db()
            .pool()
            .fetch_all(&q)
            .await
            .context("cannot list schedules")?;
        rows.iter().map(schedule_from_row).collect()
    }

    async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        now: Millis,
    ) -> crate::Result<Option<StoredSchedule>> {
        let mut tx = self.db().begin().await?;
        let q = Sql::new(format!(
            "UPDATE schedules SET paused = ?, updated_at = ? WHERE name = ? \
             RETURNING {SCHEDULE_COLUMNS}"
        ))
        .bind(paused)
        .bind(now)
        .bind(name);
        let row = tx
            .fetch_optional(&q)
            .await
            .context("cannot pause or resume a schedule")?;
        if row.is_some() && !paused {
            tx.execute(&Sql::new("DELETE FROM schedule_slots WHERE schedule = ?").bind(name))
                .await
                .context("cannot reset a schedule's slots")?;
        }
        tx.commit().await.context("cannot commit a pause")?;
        row.map(|r| schedule_from_row(&r)).transpose()
    }

    async fn delete_schedule(&self, name: &str) -> crate::Result<bool> {
        let mut tx = self.db().begin().await?;
        let deleted = delete_in(&mut tx, name).await?;
        tx.commit()
            .await
            .context("cannot commit a schedule's deletion")?;
        Ok(deleted)
    }

    async fn slots(&self, schedule: &str) -> crate::Result<Vec<Slot>> {
        let q = Sql::new(
            "SELECT schedule, tenant, fire_at, due_at FROM schedule_slots WHERE schedule = ? \
             ORDER BY due_at, tenant",
        )
        .bind(schedule);
        let rows = self
            .db()
            .pool()
            .fetch_all(&q)
            .await
            .context("cannot read a schedule's slots")?;
        rows.iter().map(slot_from_row).collect()
    }

    /// A slot of a schedule deleted meanwhile is not added.
    async fn update_slots(&self, add: &[Slot], remove: &[(String, String)]) -> crate::Result<()> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let mut tx = self.db().begin().await?;
        for slot in add {
            let q = Sql::new(
                "INSERT INTO schedule_slots (schedule, tenant, fire_at, due_at) \
                 SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM schedules WHERE name = ?) \
                 ON CONFLICT (schedule, tenant) DO NOTHING",
            )
            .bind(&slot.schedule)
            .bind(&slot.tenant)
            .bind(slot.fire_at)
            .bind(slot.due_at)
            .bind(&slot.schedule);
            tx.execute(&q).await.context("cannot add a schedule slot")?;
        }
        for (schedule, tenant) in remove {
            tx.execute(&Sql::new(REMOVE_SLOT).bind(schedule).bind(tenant))
                .await
                .context("cannot remove a schedule slot")?;
        }
        tx.commit().await.context("cannot commit schedule slots")?;
        Ok(())
    }

    async fn fire_due(
        &self,
        now: Millis,
        limit: u32,
        decide: &mut (dyn FnMut(&DueSlot) -> Decision + Send),
    ) -> crate::Result<Vec<Run>> {
        let mut tx = self.db().begin().await?;
        let q = Sql::new(format!(
            "SELECT s.schedule, s.tenant, s.fire_at, s.due_at FROM schedule_slots AS s \
             JOIN schedules AS d ON d.name = s.schedule \
             WHERE s.due_at <= ? AND NOT d.paused ORDER BY s.due_at, s.schedule, s.tenant LIMIT ?{}",
            tx.dialect().skip_locked_of("s")
        ))
        .bind(now)
        .bind(i64::from(limit));
        let rows = tx
            .fetch_all(&q)
            .await
            .context("cannot read due schedule slots")?;
        let mut runs = Vec::with_capacity(rows.len());
        for row in rows {
            let slot = slot_from_row(&row)?;
            let previous = last_fired(&mut tx, &slot.schedule, &slot.tenant).await?;
            let due = DueSlot { slot, previous };
            let decision = decide(&due);
            let slot = due.slot;
            let recorded = match decision.action {
                Action::Enqueue(enqueue) => match *enqueue {
                    Enqueue::Job(job) => {
                        let job = match insert_job_in(&mut tx.conn(), &job).await? {
                            Inserted::Created(j) | Inserted::Duplicate(j) => j,
                        };
                        Some((
                            RunOutcome::Fired,
                            None,
                            Some(Target::Job {
                                id: job.new.id,
                                status: Some(job.status),
                            }),
                        ))
                    }
                    Enqueue::Batch(batch) => {
                        let summary = insert_batch_in(&mut tx.conn(), batch).await?;
                        Some((
                            RunOutcome::Fired,
                            None,
                            Some(Target::Batch {
                                id: summary.id,
                                status: Some(summary.status),
                            }),
                        ))
                    }
                },
                Action::Skip { reason } => Some((RunOutcome::Skipped, Some(reason), None)),
                Action::Fail { reason } => Some((RunOutcome::Failed, Some(reason), None)),
                Action::Defer => None,
            };
            if let Some((outcome, reason, target)) = recorded {
                let (job_id, batch_id) = match &target {
                    Some(Target::Job { id, .. }) => (Some(id.clone()), None),
                    Some(Target::Batch { id, .. }) => (None, Some(id.clone())),
                    None => (None, None),
                };
                let q = Sql::new(
                    "INSERT INTO schedule_runs (schedule, tenant, fire_at, due_at, recorded_at, \
                     outcome, reason, job_id, batch_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&slot.schedule)
                .bind(&slot.tenant)
                .bind(slot.fire_at)
                .bind(slot.due_at)
                .bind(now)
                .bind(outcome.as_str())
                .bind(&reason)
                .bind(&job_id)
                .bind(&batch_id);
                tx.execute(&q).await.context("cannot record a run")?;
                runs.push(Run {
                    schedule: slot.schedule.clone(),
                    tenant: slot.tenant.clone(),
                    fire_at: slot.fire_at,
                    due_at: slot.due_at,
                    recorded_at: now,
                    outcome,
                    reason,
                    target,
                });
            }
            match decision.next {
                Some((fire_at, due_at)) => {
                    let q = Sql::new(
                        "UPDATE schedule_slots SET fire_at = ?, due_at = ? \
                         WHERE schedule = ? AND tenant = ?",
                    )
                    .bind(fire_at)
                    .bind(due_at)
                    .bind(&slot.schedule)
                    .bind(&slot.tenant);
                    tx.execute(&q)
                        .await
                        .context("cannot move a schedule slot on")?;
                }
                None => {
                    tx.execute(
                        &Sql::new(REMOVE_SLOT)
                            .bind(&slot.schedule)
                            .bind(&slot.tenant),
                    )
                    .await
                    .context("cannot remove a schedule slot")?;
                }
            }
        }
        if !runs.is_empty() {
            tx.wake_nodes().await?;
        }
        tx.commit().await.context("cannot commit schedule runs")?;
        Ok(runs)
    }

    async fn next_due_at(&self) -> crate::Result<Option<Millis>> {
        let q = Sql::new(
            "SELECT MIN(s.due_at) AS at FROM schedule_slots AS s \
             JOIN schedules AS d ON d.name = s.schedule WHERE NOT d.paused",
        );
        let row = self
            .db()
            .pool()
            .fetch_one(&q)
            .await
            .context("cannot read when the next run is due")?;
        row.col("at")
    }

    /// The cursor is the sequence number of the page's last run, as decimal text.
    async fn list_runs(
        &self,
        schedule: &str,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> crate::Result<Page<Run>> {
        let after = parse_cursor(after)?;
        let limit = limit.max(1);
        let mut sql =
            format!("SELECT {RUN_COLUMNS} {RUN_JOINS} WHERE r.schedule = ? AND r.seq > ?");
        if tenant.is_some() {
            sql.push_str(" AND r.tenant = ?");
        }
        sql.push_str(" ORDER BY r.seq LIMIT ?");
        let q = Sql::new(sql)
            .bind(schedule)
            .bind(after)
            .bind_all(tenant)
            .bind(i64::from(limit) + 1);
        let rows = self
            .db()
            .pool()
            .fetch_all(&q)
            .await
            .context("cannot list runs")?;
        Page::from_rows(&rows, limit, run_from_row)
    }

    async fn prune_runs(&self, before: Millis) -> crate::Result<u64> {
        let q = Sql::new(
            "DELETE FROM schedule_runs WHERE recorded_at < ? AND seq NOT IN (\
             SELECT MAX(seq) FROM schedule_runs WHERE outcome = 'fired' \
             GROUP BY schedule, tenant)",
        )
        .bind(before);
        self.db()
            .writer()
            .execute(&q)
            .await
            .context("cannot delete old runs")
    }

    async fn tenants_with_credential(&self, upstream: &str) -> crate::Result<Vec<String>> {
        let q = Sql::new("SELECT tenant FROM credentials WHERE upstream = ? ORDER BY tenant")
            .bind(upstream);
        self.db()
            .pool()
            .fetch_all(&q)
            .await
            .context("cannot list the tenants of an upstream")?
            .iter()
            .map(|r| r.col("tenant"))
            .collect()
    }
}
