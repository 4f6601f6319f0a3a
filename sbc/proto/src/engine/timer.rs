//! The engine's timer entries. Entries are never cancelled: a fired entry re-checks the state it
//! refers to (which records its own due times) and does nothing when it is stale.

use crate::transaction::ServerKey;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Timer A/E retransmission or B/D/F/K/M end of a client transaction (by key).
    Client(String),
    /// Timer G retransmission or H/I/J end of a server transaction.
    Server(ServerKey),
    /// OPTIONS probing of the cores.
    Probe,
    /// Expiry of dialogs and registrations.
    Sweep,
}
