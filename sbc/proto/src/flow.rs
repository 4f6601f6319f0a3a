//! The ground floor of the protocol layers: which side of the SBC a message is on, the
//! transport path it came by or goes by, and bytes to send. Every layer above (topology,
//! dialogs, transactions, the engine) speaks in these terms; this module imports only `sip`.

use std::net::SocketAddr;

use crate::sip::uri::Transport;

/// The two sides of the SBC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// Untrusted: carriers, subscribers.
    External,
    /// The operator's core.
    Internal,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::External => Side::Internal,
            Side::Internal => Side::External,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Side::External => "external",
            Side::Internal => "internal",
        }
    }
}

/// A transport-level path: which side, which transport, our address, the peer's address.
/// For TCP, `local` is the listening address the connection belongs to (for connections the SBC
/// opens, the side's first TCP address), not the socket's ephemeral port: with the side, a flow
/// names the connection to `remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub side: Side,
    pub transport: Transport,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Bytes to send on a flow (for TCP: on the connection to `remote`, opened if absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub flow: Flow,
    pub data: Vec<u8>,
    /// A response over a stream whose connection to `flow.remote` is gone goes over a (new)
    /// connection to this address instead (RFC 3261 §18.2.2); None: to `flow.remote`.
    pub reconnect: Option<SocketAddr>,
}
