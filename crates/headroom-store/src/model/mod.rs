//! What the store keeps — jobs and batches, schedules, events — and the interface each backend
//! implements for them. Nothing here does I/O.

pub mod events;
pub mod jobs;
pub mod schedules;
