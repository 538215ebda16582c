//! Bulk exports (the `exports` and `export_pages` tables), on either backend: leased steps as
//! bulk jobs have (see `bulk.rs`), and each result page stored with the next page's locator
//! in one transaction.

use crate::error::Context;

use super::jobs::{headers_json, lane_str, parse_headers, parse_lane, u32_col};
use super::row::StoreRow;
use super::sql::{Db, Sql};
use crate::model::jobs::*;

const VIEW_COLUMNS: &str =
    "id, status, upstream, tenant, job_id, state, pages, records, calls, error, created_at, \
     updated_at";

fn count<R: StoreRow>(row: &R, name: &str) -> crate::Result<u64> {
    let v: i64 = row.col(name)?;
    Ok(v.max(0) as u64)
}

fn view_from_row<R: StoreRow>(row: &R) -> crate::Result<ExportView> {
    let status: String = row.col("status")?;
    Ok(ExportView {
        id: row.col("id")?,
        status: ExportStatus::parse(&status).ok_or_else(|| {
            crate::StoreError::internal(format!("unknown export status \"{status}\""))
        })?,
        upstream: row.col("upstream")?,
        tenant: row.col("tenant")?,
        job_id: row.col("job_id")?,
        state: row.col("state")?,
        pages: count(row, "pages")?,
        records: count(row, "records")?,
        calls: count(row, "calls")?,
        error: row.col("error")?,
        created_at: row.col("created_at")?,
        updated_at: row.col("updated_at")?,
    })
}

async fn view(db: Db<'_>, id: &str) -> crate::Result<Option<ExportView>> {
    let q = Sql::new(format!("SELECT {VIEW_COLUMNS} FROM exports WHERE id = ?")).bind(id);
    let row = db
        .pool()
        .fetch_optional(&q)
        .await
        .context("cannot read an export")?;
    row.as_ref().map(view_from_row).transpose()
}

pub(crate) async fn insert(db: Db<'_>, e: NewExport) -> crate::Result<ExportView> {
    let q = Sql::new(
        "INSERT INTO exports (id, upstream, tenant, lane, method, path, headers, job, \
         page_size, status, phase, next_at, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 'create', ?, ?, ?)",
    )
    .bind(&e.id)
    .bind(&e.upstream)
    .bind(&e.tenant)
    .bind(lane_str(e.lane))
    .bind(&e.request.method)
    .bind(&e.request.path)
    .bind(headers_json(&e.request.headers))
    .bind(&e.job)
    .bind(i64::from(e.page_size))
    .bind(e.created_at)
    .bind(e.created_at)
    .bind(e.created_at);
    db.writer()
        .execute(&q)
        .await
        .with_context(|| format!("cannot store the export {}", e.id))?;
    view(db, &e.id)
        .await?
        .with_context(|| format!("the export {} is not there after its insert", e.id))
}

pub(crate) async fn get(db: Db<'_>, id: &str) -> crate::Result<Option<ExportView>> {
    view(db, id).await
}

pub(crate) async fn cancel(db: Db<'_>, id: &str, now: Millis) -> crate::Result<Option<ExportView>> {
    let q = Sql::new(
        "UPDATE exports SET status = 'cancelled', next_at = ?, updated_at = ? \
         WHERE id = ? AND status IN ('queued', 'running')",
    )
    .bind(now)
    .bind(now)
    .bind(id);
    db.writer()
        .execute(&q)
        .await
        .context("cannot cancel an export")?;
    view(db, id).await
}

pub(crate) async fn claim(
    db: Db<'_>,
    now: Millis,
    owner: &str,
    lease: Millis,
) -> crate::Result<Option<ExportTask>> {
    let mut tx = db.begin().await?;
    let q = Sql::new(format!(
        "SELECT id, upstream, tenant, lane, method, path, headers, job, page_size, status, \
         phase, job_id, state, error, locator, pages, polls, lease_owner FROM exports \
         WHERE phase <> 'done' AND next_at <= ? AND {} ORDER BY next_at LIMIT 1{}",
        super::bulk::lease_free(db, ""),
        db.dialect().skip_locked()
    ))
    .bind(now)
    .bind(now);
    let Some(row) = tx
        .fetch_optional(&q)
        .await
        .context("cannot pick an export")?
    else {
        return Ok(None);
    };
    let phase: String = row.col("phase")?;
    let task = ExportTask {
        id: row.col("id")?,
        upstream: row.col("upstream")?,
        tenant: row.col("tenant")?,
        lane: parse_lane(&row.col::<String>("lane")?)?,
        request: JobRequest {
            method: row.col("method")?,
            path: row.col("path")?,
            query: None,
            headers: parse_headers(&row.col::<String>("headers")?)?,
            body: None,
            body_is_json: false,
        },
        job: row.col("job")?,
        page_size: u32_col(&row, "page_size")?,
        phase: ExportPhase::parse(&phase).ok_or_else(|| {
            crate::StoreError::internal(format!("unknown export phase \"{phase}\""))
        })?,
        job_id: row.col("job_id")?,
        state: row.col("state")?,
        error: row.col("error")?,
        locator: row.col("locator")?,
        pages: count(&row, "pages")?,
        polls: u32_col(&row, "polls")?,
        cancelled: row.col::<String>("status")? == "cancelled",
        resumed: row.col::<Option<String>>("lease_owner")?.is_some(),
        owner: owner.to_string(),
    };
    let q = Sql::new(
        "UPDATE exports SET lease_owner = ?, lease_node = ?, lease_until = ?, \
         status = CASE WHEN status = 'queued' THEN 'running' ELSE status END WHERE id = ?",
    )
    .bind(owner)
    .bind(db.node())
    .bind(now + lease)
    .bind(&task.id);
    tx.execute(&q).await.context("cannot lease an export")?;
    tx.commit().await.context("cannot commit an export lease")?;
    Ok(Some(task))
}

pub(crate) async fn save(
    db: Db<'_>,
    task: &ExportTask,
    step: &ExportStep,
    now: Millis,
) -> crate::Result<bool> {
    let mut tx = db.begin().await?;
    let (records, pages) = match &step.page {
        Some((records, _)) => (*records as i64, 1i64),
        None => (0, 0),
    };
    let q = Sql::new(
        "UPDATE exports SET phase = ?, \
         status = CASE WHEN status = 'cancelled' THEN status ELSE ? END, \
         job_id = ?, state = ?, error = ?, locator = ?, polls = ?, calls = calls + ?, \
         pages = pages + ?, records = records + ?, next_at = ?, lease_owner = NULL, \
         lease_node = NULL, lease_until = 0, updated_at = ? \
         WHERE id = ? AND lease_owner = ? AND phase <> 'done' RETURNING seq",
    )
    .bind(step.phase.as_str())
    .bind(step.status.as_str())
    .bind(&step.job_id)
    .bind(&step.state)
    .bind(&step.error)
    .bind(&step.locator)
    .bind(i64::from(step.polls))
    .bind(step.calls as i64)
    .bind(pages)
    .bind(records)
    .bind(step.next_at)
    .bind(now)
    .bind(&task.id)
    .bind(&task.owner);
    let Some(row) = tx
        .fetch_optional(&q)
        .await
        .context("cannot store an export's step")?
    else {
        return Ok(false); // the lease went to another holder: theirs to store
    };
    if let Some((records, body)) = &step.page {
        let seq: i64 = row.col("seq")?;
        let q = Sql::new(
            "INSERT INTO export_pages (export_seq, page, records, body) VALUES (?, ?, ?, ?)",
        )
        .bind(seq)
        .bind(task.pages as i64 + 1)
        .bind(*records as i64)
        .bind(body.as_slice());
        tx.execute(&q)
            .await
            .context("cannot store an export page")?;
    }
    tx.commit()
        .await
        .context("cannot commit an export's step")?;
    Ok(true)
}

pub(crate) async fn page(db: Db<'_>, id: &str, page: u64) -> crate::Result<Option<Vec<u8>>> {
    let q = Sql::new(
        "SELECT p.body FROM export_pages AS p JOIN exports AS e ON e.seq = p.export_seq \
         WHERE e.id = ? AND p.page = ?",
    )
    .bind(id)
    .bind(i64::try_from(page).unwrap_or(i64::MAX));
    let row = db
        .pool()
        .fetch_optional(&q)
        .await
        .context("cannot read an export page")?;
    row.map(|r| r.col("body")).transpose()
}

pub(crate) async fn next_at(db: Db<'_>) -> crate::Result<Option<Millis>> {
    let q = Sql::new(
        "SELECT MIN(CASE WHEN lease_until > next_at THEN lease_until ELSE next_at END) AS at \
         FROM exports WHERE phase <> 'done'",
    );
    let row = db
        .pool()
        .fetch_one(&q)
        .await
        .context("cannot read when the next export step is due")?;
    row.col("at")
}

/// SQLite, at a start: every lease is from a process that is gone.
pub(crate) async fn release_leases(db: Db<'_>) -> crate::Result<()> {
    let q = Sql::new("UPDATE exports SET lease_until = 0 WHERE phase <> 'done'");
    db.writer()
        .execute(&q)
        .await
        .context("cannot release export leases")?;
    Ok(())
}
