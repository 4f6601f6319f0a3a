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
//! - [`caller_id`]: the caller-ID policy per provider (`cli_allowed`,
//!   `dynamic_calls_caller_id`) and the check of an INVITE's From / P-Asserted-Identity.
//! - [`ratelimit`]: keyed rate limits (governor's GCRA) on a time passed in, with a bounded key
//!   table, and the source key (IPv6 by prefix) they are usually keyed by. The STUN server uses
//!   them; the guard's per-source limits will.
//! - [`guard`]: rate limits (governor, per source prefix and method class, per trunk) and
//!   fail2ban-style jails and bans, fed typed events with the time, answering admissions and
//!   queuing `BanAction`s; the ban table's state file. Not wired into the daemon yet: the daemon
//!   will adapt it to `sbc_proto::engine::Guard` and apply its actions to the XDP blocklist.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub mod allowlist;
pub mod caller_id;
pub mod guard;
mod prefix;
pub mod ratelimit;

pub use prefix::{Prefix, PrefixError};
