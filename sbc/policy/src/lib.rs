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
//! - [`guard`]: rate limits (governor, per source prefix and method class, per trunk) and
//!   fail2ban-style jails and bans, fed typed events with the time, answering admissions and
//!   queuing `BanAction`s; the ban table's state file. Not wired into the daemon yet: the daemon
//!   will adapt it to `sbc_proto::engine::Guard` and apply its actions to the XDP blocklist.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub mod allowlist;
pub mod guard;
mod prefix;

pub use prefix::{Prefix, PrefixError};
