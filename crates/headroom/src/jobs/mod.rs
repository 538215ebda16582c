//! Durable jobs, flows (queues) and batches.

pub mod api;
pub mod batches;
pub mod dispatcher;
pub mod model;

pub use model::*;
