//! Headroom's integration tests, one binary: each module is one area, over real sockets,
//! SQLite files, and (where the module says so) PostgreSQL and Redis on their standard ports.

mod common;
mod services;

mod batches;
mod budgets;
mod bulk;
mod cli;
mod console;
mod contract;
mod credentials;
pub(crate) mod distributed;
mod edge;
mod explain;
mod hostile;
mod intake;
mod jobs;
mod oauth;
mod observability;
mod otlp;
mod providers;
mod proxy;
mod schedules;
mod security;
mod store_conformance;
mod store_safety;
