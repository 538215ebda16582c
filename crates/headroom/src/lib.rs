//! Headroom's service: the governing proxy, its config, credentials, metrics and the mock
//! upstream. The rate-limit logic itself lives in `headroom-core`.
