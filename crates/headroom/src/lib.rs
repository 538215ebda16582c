//! Headroom's service: the governing proxy, durable jobs, batches and schedules, and what it
//! observes. The rate-limit logic itself lives in `headroom-core`.
//!
//! Layers, each using only those below it: `http` (the API and the proxy's edge) and `work`
//! (the background loops) over `app` (the state they share), over the parts — `outbound`
//! (one governed call), `jobs`, `schedules`, `callbacks`, `observe`, `credentials`, `auth`,
//! `metrics`, `overrides` — over `cfg` and `store`.
pub mod app;
pub mod auth;
pub mod callbacks;
pub mod cfg;
pub mod clock;
pub mod credentials;
pub mod destination;
pub mod edge;
pub mod error;
pub mod http;
pub mod intake;
pub mod jobs;
pub mod metrics;
pub mod oauth;
pub mod observe;
pub mod outbound;
pub mod overrides;
pub mod schedules;
pub mod server;
pub mod shutdown;
/// The store, its own crate (`headroom-store`).
pub use headroom_store as store;
pub mod work;
