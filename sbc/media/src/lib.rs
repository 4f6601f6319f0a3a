//! Sans-IO media of the SBC: no sockets, no clocks, no threads. Every entry point takes its input
//! (a datagram and where it came from) and returns what to send back, or why nothing is sent.
//!
//! It owns:
//! - [`stun`]: an RFC 8489 STUN Binding server (a bounded codec of our own and the server that
//!   answers Binding requests), and the RFC 7983 rule that tells STUN from SIP on a shared port.
//! - [`sdp`]: a bounded SDP parser (RFC 8866) and the rewriter that anchors a description on
//!   the relay (RFC 3264: `o=`, `c=`, `m=` ports, `a=rtcp`; ICE and BUNDLE removed).
//! - [`session`]: relay sessions keyed by dialog (offer/answer state, a pair of relay
//!   endpoints per m-line from the [`session::PortPool`], latching safe against the ES2025-01
//!   hijack, counters, expiry) and the data-path verdict the relay workers ask per datagram.
//! - [`anchor`]: which bodies are anchored, kept or stripped (the media seam's policy).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub mod anchor;
pub mod sdp;
pub mod session;
pub mod stun;
