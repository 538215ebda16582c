//! `ScheduleStore` on PostgreSQL: the SQLite statements (`super::super::schedules`); due
//! slots are taken with `FOR UPDATE SKIP LOCKED`, so that nodes firing at once take each
//! slot once.
//!
//! A run is taken, enqueued, recorded and its slot moved on in one transaction on the writer
//! connection (see `super`): a crash before the commit leaves the slot due (it runs after
//! the restart), a crash after it leaves the slot moved on (it does not run twice).

use anyhow::Context;
use sqlx::{PgConnection, Row};

use super::batches::insert_batch_in;
use super::jobs::insert_job_in;
use super::pg;
use super::PgStore as Store;
use crate::store::model::jobs::{Inserted, Millis, Page};
use crate::store::model::schedules::*;
use crate::store::schedules::{
    run_from_row, schedule_from_row, target_from_row, RUN_COLUMNS, RUN_JOINS, SCHEDULE_COLUMNS,
};

/// The last run of (schedule, tenant) that enqueued something, with its status now.
async fn last_fired(
    conn: &mut PgConnection,
    schedule: &str,
    tenant: &str,
) -> anyhow::Result<Option<Target>> {
    let row = sqlx::query(&pg(&format!(
        "SELECT {RUN_COLUMNS} {RUN_JOINS} WHERE r.schedule = ? AND r.tenant = ? \
         AND r.outcome = 'fired' ORDER BY r.seq DESC LIMIT 1"
    )))
    .bind(schedule)
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await
    .context("cannot read a schedule's last run")?;
    match row {
        Some(row) => target_from_row(&row),
        None => Ok(None),
    }
}

async fn delete_in(conn: &mut PgConnection, name: &str) -> anyhow::Result<bool> {
    sqlx::query(&pg("DELETE FROM schedule_runs WHERE schedule = ?"))
        .bind(name)
        .execute(&mut *conn)
        .await
        .context("cannot delete a schedule's runs")?;
    sqlx::query(&pg("DELETE FROM schedule_slots WHERE schedule = ?"))
        .bind(name)
        .execute(&mut *conn)
        .await
        .context("cannot delete a schedule's slots")?;
    let done = sqlx::query(&pg("DELETE FROM schedules WHERE name = ?"))
        .bind(name)
        .execute(&mut *conn)
        .await
        .context("cannot delete a schedule")?;
    Ok(done.rows_affected() > 0)
}

async fn insert_schedule_in(conn: &mut PgConnection, s: &StoredSchedule) -> anyhow::Result<bool> {
    let done = sqlx::query(&pg(
        "INSERT INTO schedules (name, definition, from_config, paused, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
    ))
    .bind(&s.name)
    .bind(&s.definition)
    .bind(s.from_config)
    .bind(s.paused)
    .bind(s.created_at)
    .bind(s.updated_at)
    .execute(&mut *conn)
    .await
    .with_context(|| format!("cannot store the schedule {}", s.name))?;
    Ok(done.rows_affected() > 0)
}

impl ScheduleStore for Store {
    async fn create_schedule(&self, schedule: &StoredSchedule) -> anyhow::Result<bool> {
        let mut tx = self.write().await?;
        let created = insert_schedule_in(&mut tx, schedule).await?;
        tx.commit().await.context("cannot commit a schedule")?;
        Ok(created)
    }

    async fn sync_config_schedules(
        &self,
        schedules: &[StoredSchedule],
        now: Millis,
    ) -> anyhow::Result<()> {
        let mut tx = self.write().await?;
        for s in schedules {
            let row = sqlx::query(&pg(&format!(
                "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = ?"
            )))
            .bind(&s.name)
            .fetch_optional(&mut *tx)
            .await
            .context("cannot read a schedule")?;
            match row.map(|r| schedule_from_row(&r)).transpose()? {
                None => {
                    insert_schedule_in(&mut tx, s).await?;
                }
                Some(stored) if !stored.from_config => anyhow::bail!(
                    "schedule \"{}\" is in the config file and was also created through the \
                     API; delete the API one (`headroom schedules delete {}`) or rename one",
                    s.name,
                    s.name
                ),
                Some(stored) if stored.definition != s.definition => {
                    // Changed: the old slots were computed from the old cron and tenants.
                    sqlx::query(&pg("DELETE FROM schedule_slots WHERE schedule = ?"))
                        .bind(&s.name)
                        .execute(&mut *tx)
                        .await
                        .context("cannot reset a schedule's slots")?;
                    sqlx::query(&pg(
                        "UPDATE schedules SET definition = ?, updated_at = ? WHERE name = ?",
                    ))
                    .bind(&s.definition)
                    .bind(now)
                    .bind(&s.name)
                    .execute(&mut *tx)
                    .await
                    .context("cannot update a schedule")?;
                }
                Some(_) => {}
            }
        }
        let stale: Vec<String> =
            sqlx::query_scalar(&pg("SELECT name FROM schedules WHERE from_config"))
                .fetch_all(&mut *tx)
                .await
                .context("cannot list config schedules")?;
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

    async fn get_schedule(&self, name: &str) -> anyhow::Result<Option<StoredSchedule>> {
        let row = sqlx::query(&pg(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = ?"
        )))
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .context("cannot read a schedule")?;
        row.map(|r| schedule_from_row(&r)).transpose()
    }

    async fn list_schedules(&self) -> anyhow::Result<Vec<StoredSchedule>> {
        let rows = sqlx::query(&pg(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name"
        )))
        .fetch_all(self.pool())
        .await
        .context("cannot list schedules")?;
        rows.iter().map(schedule_from_row).collect()
    }

    async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        now: Millis,
    ) -> anyhow::Result<Option<StoredSchedule>> {
        let mut tx = self.write().await?;
        let row = sqlx::query(&pg(&format!(
            "UPDATE schedules SET paused = ?, updated_at = ? WHERE name = ? \
             RETURNING {SCHEDULE_COLUMNS}"
        )))
        .bind(paused)
        .bind(now)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .context("cannot pause or resume a schedule")?;
        if row.is_some() && !paused {
            sqlx::query(&pg("DELETE FROM schedule_slots WHERE schedule = ?"))
                .bind(name)
                .execute(&mut *tx)
                .await
                .context("cannot reset a schedule's slots")?;
        }
        tx.commit().await.context("cannot commit a pause")?;
        row.map(|r| schedule_from_row(&r)).transpose()
    }

    async fn delete_schedule(&self, name: &str) -> anyhow::Result<bool> {
        let mut tx = self.write().await?;
        let deleted = delete_in(&mut tx, name).await?;
        tx.commit()
            .await
            .context("cannot commit a schedule's deletion")?;
        Ok(deleted)
    }

    async fn slots(&self, schedule: &str) -> anyhow::Result<Vec<Slot>> {
        let rows = sqlx::query(&pg(
            "SELECT schedule, tenant, fire_at, due_at FROM schedule_slots WHERE schedule = ? \
             ORDER BY due_at, tenant",
        ))
        .bind(schedule)
        .fetch_all(self.pool())
        .await
        .context("cannot read a schedule's slots")?;
        rows.iter()
            .map(|r| {
                Ok(Slot {
                    schedule: r.try_get("schedule")?,
                    tenant: r.try_get("tenant")?,
                    fire_at: r.try_get("fire_at")?,
                    due_at: r.try_get("due_at")?,
                })
            })
            .collect()
    }

    /// A slot of a schedule deleted meanwhile is not added.
    async fn update_slots(&self, add: &[Slot], remove: &[(String, String)]) -> anyhow::Result<()> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for slot in add {
            sqlx::query(&pg(
                "INSERT INTO schedule_slots (schedule, tenant, fire_at, due_at) \
                 SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM schedules WHERE name = ?) \
                 ON CONFLICT (schedule, tenant) DO NOTHING",
            ))
            .bind(&slot.schedule)
            .bind(&slot.tenant)
            .bind(slot.fire_at)
            .bind(slot.due_at)
            .bind(&slot.schedule)
            .execute(&mut *tx)
            .await
            .context("cannot add a schedule slot")?;
        }
        for (schedule, tenant) in remove {
            sqlx::query(&pg(
                "DELETE FROM schedule_slots WHERE schedule = ? AND tenant = ?",
            ))
            .bind(schedule)
            .bind(tenant)
            .execute(&mut *tx)
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
    ) -> anyhow::Result<Vec<Run>> {
        let mut tx = self.write().await?;
        let rows = sqlx::query(&pg(
            "SELECT s.schedule, s.tenant, s.fire_at, s.due_at FROM schedule_slots AS s \
             JOIN schedules AS d ON d.name = s.schedule \
             WHERE s.due_at <= ? AND NOT d.paused ORDER BY s.due_at, s.schedule, s.tenant LIMIT ? \
             FOR UPDATE OF s SKIP LOCKED",
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .context("cannot read due schedule slots")?;
        let mut runs = Vec::with_capacity(rows.len());
        for row in rows {
            let slot = Slot {
                schedule: row.try_get("schedule")?,
                tenant: row.try_get("tenant")?,
                fire_at: row.try_get("fire_at")?,
                due_at: row.try_get("due_at")?,
            };
            let previous = last_fired(&mut tx, &slot.schedule, &slot.tenant).await?;
            let due = DueSlot { slot, previous };
            let decision = decide(&due);
            let slot = due.slot;
            let recorded = match decision.action {
                Action::Enqueue(enqueue) => match *enqueue {
                    Enqueue::Job(job) => {
                        let job = match insert_job_in(&mut tx, &job).await? {
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
                        let summary = insert_batch_in(&mut tx, batch).await?;
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
                sqlx::query(&pg(
                    "INSERT INTO schedule_runs (schedule, tenant, fire_at, due_at, recorded_at, \
                     outcome, reason, job_id, batch_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ))
                .bind(&slot.schedule)
                .bind(&slot.tenant)
                .bind(slot.fire_at)
                .bind(slot.due_at)
                .bind(now)
                .bind(outcome.as_str())
                .bind(&reason)
                .bind(&job_id)
                .bind(&batch_id)
                .execute(&mut *tx)
                .await
                .context("cannot record a run")?;
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
                    sqlx::query(&pg("UPDATE schedule_slots SET fire_at = ?, due_at = ? \
                         WHERE schedule = ? AND tenant = ?"))
                    .bind(fire_at)
                    .bind(due_at)
                    .bind(&slot.schedule)
                    .bind(&slot.tenant)
                    .execute(&mut *tx)
                    .await
                    .context("cannot move a schedule slot on")?;
                }
                None => {
                    sqlx::query(&pg(
                        "DELETE FROM schedule_slots WHERE schedule = ? AND tenant = ?",
                    ))
                    .bind(&slot.schedule)
                    .bind(&slot.tenant)
                    .execute(&mut *tx)
                    .await
                    .context("cannot remove a schedule slot")?;
                }
            }
        }
        if !runs.is_empty() {
            super::notify_in(&mut tx).await?;
        }
        tx.commit().await.context("cannot commit schedule runs")?;
        Ok(runs)
    }

    async fn next_due_at(&self) -> anyhow::Result<Option<Millis>> {
        let at: Option<i64> =
            sqlx::query_scalar(&pg("SELECT MIN(s.due_at) FROM schedule_slots AS s \
             JOIN schedules AS d ON d.name = s.schedule WHERE NOT d.paused"))
            .fetch_one(self.pool())
            .await
            .context("cannot read when the next run is due")?;
        Ok(at)
    }

    /// The cursor is the sequence number of the page's last run, as decimal text.
    async fn list_runs(
        &self,
        schedule: &str,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Page<Run>> {
        let after: i64 = match after {
            None | Some("") => 0,
            Some(c) => c
                .parse()
                .ok()
                .filter(|n: &i64| *n >= 0)
                .with_context(|| format!("cursor \"{c}\" is not one this server gave"))?,
        };
        let limit = limit.max(1);
        let mut sql =
            format!("SELECT {RUN_COLUMNS} {RUN_JOINS} WHERE r.schedule = ? AND r.seq > ?");
        if tenant.is_some() {
            sql.push_str(" AND r.tenant = ?");
        }
        sql.push_str(" ORDER BY r.seq LIMIT ?");
        let sql = pg(&sql);
        let mut q = sqlx::query(&sql).bind(schedule).bind(after);
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        let rows = q
            .bind(i64::from(limit) + 1)
            .fetch_all(self.pool())
            .await
            .context("cannot list runs")?;
        Page::from_rows(&rows, limit, run_from_row)
    }

    async fn prune_runs(&self, before: Millis) -> anyhow::Result<u64> {
        let done = sqlx::query(&pg(
            "DELETE FROM schedule_runs WHERE recorded_at < ? AND seq NOT IN (\
             SELECT MAX(seq) FROM schedule_runs WHERE outcome = 'fired' \
             GROUP BY schedule, tenant)",
        ))
        .bind(before)
        .execute(self.writer())
        .await
        .context("cannot delete old runs")?;
        Ok(done.rows_affected())
    }

    async fn tenants_with_credential(&self, upstream: &str) -> anyhow::Result<Vec<String>> {
        sqlx::query_scalar(&pg(
            "SELECT tenant FROM credentials WHERE upstream = ? ORDER BY tenant",
        ))
        .bind(upstream)
        .fetch_all(self.pool())
        .await
        .context("cannot list the tenants of an upstream")
    }
}
