//! Durable jobs, flows (queues) and batches.

// The API and dispatcher wait for the store to implement JobStore (in progress).
// pub mod api;
// pub mod dispatcher;
pub mod model;

pub use model::*;
