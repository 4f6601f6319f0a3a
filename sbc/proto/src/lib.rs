//! Sans-IO protocol core of the SBC: no sockets, no clocks, no threads. Every entry point takes
//! its input and the current time, and returns what to send (RFC 3261's layers: syntax and
//! framing in [`sip`], transactions in [`transaction`], dialogs in [`dialog`], registrations and
//! NAT keepalives in [`registration`] (NAT detection in [`nat`]), topology hiding in [`topology`], and the proxy that ties them together in [`engine`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub mod dialog;
pub mod engine;
pub mod flow;
pub mod nat;
pub mod own_keys;
pub mod registration;
pub mod sip;
pub mod topology;
pub mod transaction;
