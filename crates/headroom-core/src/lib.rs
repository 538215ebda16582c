//! Headroom's rate-limit core.
//!
//! Everything here is pure and deterministic: no sockets, no files, no threads, no wall clock
//! unless a caller passes one in. The server, the store and the CLI build on it.
//!
//! - [`signals`] reads what an HTTP response says about rate limits.
//! - [`budget`] turns those signals (and configured limits) into when the next call may go.
//! - [`governor`] holds many budgets and their queues, and decides in time independent of how
//!   many budgets exist.
//! - [`verdict`] decides what an upstream's answer means for its call: done, retry or give up.
//! - [`sim`] runs the pacing model against simulated upstreams in virtual time.

pub mod backoff;
pub mod batch;
pub mod breaker;
pub mod budget;
pub mod clock;
pub mod duration;
pub mod fair_queue;
pub mod governor;
pub mod limit;
pub mod signals;
pub mod sim;
pub mod verdict;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};

pub use budget::{Budget, BudgetConfig, Lane, Outcome, Permit};
pub use governor::{Admission, Decision, Governor, RejectReason, Rejection};
pub use signals::{interpret, LimitSignal, Signals, Unit};
