//! Sans-IO policy of the SBC: who may talk to it. No sockets, no files, no clocks, no threads:
//! every entry point takes its input (bytes, rows, addresses, and the current time where time
//! matters) and returns a decision or a value; the daemon (`sbc/sbc`) does the IO around it.
//!
//! It owns:
//! - [`Prefix`]: the IP prefix type of the whole project. The XDP loader (`sbc-xdp`) re-exports
//!   it for its allowlist and blocklist maps, which is why this crate depends on no other crate
//!   of the workspace (in particular not on `sbc-proto`): the loader must not pull in SIP.
//! - [`allowlist`]: the trunk allowlist, from the operator's `providers` / `providers_ips`
//!   tables (SQL dump, CSV, or rows read live by the daemon) to the v1 allowlist file and back,
//!   and the longest-prefix lookups the packet filters and the userspace check make.
//! - [`ratelimit`]: keyed rate limits (governor's GCRA) on a time passed in, with a bounded key
//!   table, and the source key (IPv6 by prefix) they are usually keyed by. The STUN server uses
//!   them; the guard's per-source limits will.
//!
//! Next here: the guard's bans and its use of the rate limits (scoring on `sbc_proto::engine::Event`s is fed in
//! by the daemon, which also adapts the decisions to `sbc_proto::engine::Guard`).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub mod allowlist;
mod prefix;
pub mod ratelimit;

pub use prefix::{Prefix, PrefixError};
