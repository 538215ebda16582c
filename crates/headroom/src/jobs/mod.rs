//! Durable jobs, flows (queues) and batches.

pub mod model;

pub use model::*;
