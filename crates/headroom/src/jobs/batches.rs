//! `/v1/batches`: many records sent to a bulk endpoint in chunks, each record tracked to its
//! own outcome; and the runner that sends the chunks through the governor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use headroom_core::batch::{self, Format};
use serde::Deserialize;
use serde_json::Value;

use super::request::{check_callback, check_request, check_tenant, new_id, parse_lane};
use super::*;
use crate::error::{ApiError, ApiResult};

/// Records per batch.
pub const MAX_RECORDS: usize = 100_000;
/// The JSON of a batch request.
pub const MAX_BATCH_BODY: usize = 64 << 20;
/// MiB of batch bodies read and checked at once (each takes its size, rounded up, and about
/// as much again while it is checked); submissions beyond wait for room.
pub const INTAKE_MIB: usize = 256;
/// MiB of that room one tenant's submissions may hold at once.
pub const INTAKE_MIB_PER_TENANT: u32 = INTAKE_MIB as u32 / 4;

/// The room each tenant's batch submissions hold while they are read.
#[derive(Default)]
pub struct IntakeShares(Arc<Mutex<HashMap<String, u32>>>);

/// A tenant's hold on intake room, given back when dropped.
pub struct IntakeShare {
    shares: Arc<Mutex<HashMap<String, u32>>>,
    tenant: String,
    mib: u32,
}

impl IntakeShares {
    /// Takes `mib` of `tenant`'s share, if that much is left of it.
    pub fn take(&self, tenant: &str, mib: u32) -> Option<IntakeShare> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = held.get(tenant).copied().unwrap_or(0);
        // One submission at a time always fits, even the largest.
        if now > 0 && now + mib > INTAKE_MIB_PER_TENANT {
            return None;
        }
        held.insert(tenant.to_string(), now + mib);
        Some(IntakeShare {
            shares: Arc::clone(&self.0),
            tenant: tenant.to_string(),
            mib,
        })
    }
}

impl Drop for IntakeShare {
    fn drop(&mut self) {
        let mut held = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(now) = held.get_mut(&self.tenant) {
            *now = now.saturating_sub(self.mib);
            if *now == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitBatch {
    upstream: String,
    pub(crate) tenant: Option<String>,
    /// The upstream's provider's batch format when left out.
    format: Option<Value>,
    max_batch_size: Option<u32>,
    lane: Option<String>,
    request: SubmitBatchRequest,
    /// Kept as their JSON text: a batch of 100,000 records is held about once, not also as
    /// a tree of values.
    records: Vec<Box<serde_json::value::RawValue>>,
    max_attempts: Option<u32>,
    callback_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBatchRequest {
    method: String,
    path: String,
    query: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// `salesforce-bulk2` only: the ingest job to create (`object`, `operation`, …).
    body: Option<Value>,
}

/// A record's id: its `id` field (text or number), else its index.
fn record_id(record: &Value, index: usize) -> String {
    match record.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => index.to_string(),
    }
}

/// The batch a submission describes, checked against the config; `tenant` is the one it
/// acts as (already checked). Errors name the field at fault.
pub(crate) fn build_batch(
    config: &crate::cfg::Config,
    s: SubmitBatch,
    tenant: Option<String>,
    now: Millis,
) -> ApiResult<NewBatch> {
    let upstream = config.upstream(&s.upstream).cloned().ok_or_else(|| {
        ApiError::bad_request(format!(
            "upstream: \"{}\" is not a configured upstream",
            s.upstream
        ))
    })?;
    let format = match (&s.format, upstream.batch_format.as_deref()) {
        (Some(f), _) => f.clone(),
        (None, Some(preset)) => Value::String(preset.to_string()),
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "format: missing; write \"hubspot\", \"salesforce\", \"graph\" or a generic \
                 format object (upstream \"{}\" names no provider with a batch format)",
                upstream.name
            )))
        }
    };
    let format = match (&format, &s.request.body) {
        // The ingest job is the call that creates it: its body, as Salesforce documents it.
        (Value::String(name), Some(job)) if name == "salesforce-bulk2" => Format::SalesforceBulk2(
            batch::IngestJob::from_json(job, "request.body")
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        ),
        (_, Some(_)) => {
            return Err(ApiError::bad_request(
                "request.body: only a salesforce-bulk2 batch takes a body (the ingest job); \
                 other formats build each call's body from the records",
            ))
        }
        (format, None) => {
            Format::from_json(format).map_err(|e| ApiError::bad_request(e.to_string()))?
        }
    };
    let requested = s
        .max_batch_size
        .unwrap_or(format.default_chunk().min(u32::MAX as usize) as u32);
    if requested == 0 {
        return Err(ApiError::bad_request("max_batch_size: must be at least 1"));
    }
    let max_batch_size = batch::max_chunk(&format, requested as usize) as u32;
    let lane = parse_lane(s.lane.as_deref(), headroom_core::Lane::Bulk)?;
    let r = s.request;
    check_request(
        &upstream,
        &r.method,
        &r.path,
        r.query.as_deref(),
        &r.headers,
    )?;
    if s.records.is_empty() {
        return Err(ApiError::bad_request("records: give at least one record"));
    }
    if s.records.len() > MAX_RECORDS {
        return Err(ApiError::PayloadTooLarge {
            detail: format!(
                "records: at most {MAX_RECORDS} per batch, got {}; split it",
                s.records.len()
            ),
        });
    }
    let max_attempts = s.max_attempts.unwrap_or(5);
    if !(1..=10).contains(&max_attempts) {
        return Err(ApiError::bad_request(format!(
            "max_attempts: {max_attempts} is out of range; use 1 to 10"
        )));
    }
    if let Some(url) = &s.callback_url {
        check_callback(config, url)?;
    }
    // One record at a time: its value lives only while it is checked.
    let mut records = Vec::with_capacity(s.records.len());
    for (i, raw) in s.records.into_iter().enumerate() {
        let record: Value = serde_json::from_str(raw.get())
            .map_err(|e| ApiError::bad_request(format!("records[{i}]: {e}")))?;
        if !record.is_object() {
            return Err(ApiError::bad_request(format!(
                "records[{i}]: each record must be a JSON object"
            )));
        }
        batch::validate(&format, &r.method, &r.path, std::iter::once(&record)).map_err(
            |e| match e {
                batch::BatchError::Record { reason, .. } => {
                    ApiError::bad_request(format!("records[{i}]: {reason}"))
                }
                other => ApiError::bad_request(other.to_string()),
            },
        )?;
        let text: Box<str> = raw.into();
        let id = match &format {
            Format::SalesforceBulk2(job) => job.record_id(&record).unwrap_or_else(|| i.to_string()),
            _ => record_id(&record, i),
        };
        records.push(NewRecord {
            record_id: id,
            payload: text.into_string().into_bytes(),
        });
    }
    let new = NewBatch {
        id: new_id("batch"),
        upstream: upstream.name.clone(),
        tenant,
        lane,
        format: format.to_json().to_string(),
        max_batch_size,
        request: JobRequest {
            method: r.method.to_ascii_uppercase(),
            path: r.path,
            query: r.query,
            headers: r.headers.into_iter().collect(),
            body: None,
            body_is_json: false,
        },
        max_attempts,
        callback_url: s.callback_url,
        created_at: now,
        records,
        asynchronous: format.is_async(),
    };
    Ok(new)
}

/// A scheduled run's batch: a batch template (a `POST /v1/batches` body without `tenant`)
/// with the tenant filled in. Errors as `api::job_from_value`.
pub(crate) fn batch_from_value(
    config: &crate::cfg::Config,
    template: &Value,
    tenant: &str,
    now: Millis,
) -> Result<NewBatch, String> {
    // Records are read as raw JSON text, which only a text parser gives.
    let s: SubmitBatch =
        serde_json::from_str(&template.to_string()).map_err(|e| format!(": not a batch: {e}"))?;
    check_tenant(tenant).map_err(|e| e.to_string())?;
    build_batch(config, s, Some(tenant.to_string()), now).map_err(|e| e.to_string())
}
