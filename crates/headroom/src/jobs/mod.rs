//! Durable jobs, flows (queues) and batches.

pub mod api;
pub mod batches;
pub mod dispatcher;
pub mod retention;
pub mod secrets;

pub use crate::store::model::jobs::*;
