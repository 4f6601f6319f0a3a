//! The engine's timer entries. Entries are never cancelled: a fired entry re-checks the state it
//! refers to (which records its own due times) and does nothing when it is stale.

use crate::transaction::ServerKey;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Timer A/E retransmission or B/D/F/K/M end of a client transaction (by key).
    Client(String),
    /// Timer G retransmission or H/I/J end of a server transaction.
    Server(ServerKey),
    /// RFC 3261 §13.3.1.4: the 2xx of the dialog with this token must have been ACKed by now.
    AckWait(String),
    /// OPTIONS probing of the cores.
    Probe,
    /// Expiry of dialogs and registrations.
    Sweep,
}
