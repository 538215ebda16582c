//! Durable jobs, flows (queues) and batches: what a submission is and how it is checked. The
//! API is `http::{jobs, batches}`; running them is `work::{dispatcher, batches}`.

pub mod batches;
pub mod request;
pub mod secrets;

pub use crate::store::model::jobs::*;
