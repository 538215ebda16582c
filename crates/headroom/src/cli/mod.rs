//! The `headroom` command's subcommands, compiled into the binary only: they use the service
//! library (`headroom`) and the mock upstream (`headroom_mock`) as any client would.

pub mod mock;
