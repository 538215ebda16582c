//! Headroom's service: the governing proxy, its config, credentials and metrics. The rate-limit
//! logic itself lives in `headroom-core`.
pub mod auth;
pub mod callbacks;
pub mod cfg;
pub mod clock;
pub mod credentials;
pub mod destination;
pub mod edge;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod observe;
pub mod outbound;
pub mod proxy;
pub mod schedules;
pub mod server;
pub mod shutdown;
pub mod store;
