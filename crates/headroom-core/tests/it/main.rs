//! headroom-core's integration and property tests, one binary.

mod batch;
mod batch_props;
mod header_fixtures;
mod signals_props;
mod sim_props;
