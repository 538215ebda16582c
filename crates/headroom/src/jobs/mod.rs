//! Durable jobs, flows (queues) and batches.

pub mod api;
pub mod batches;
pub mod dispatcher;
pub mod model;
pub mod retention;
pub mod secrets;

pub use model::*;
