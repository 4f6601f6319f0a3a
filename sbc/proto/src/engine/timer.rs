//! The engine's own timer entries (the transaction layer keeps its own). Entries are never cancelled: a fired entry re-checks the state it
//! refers to (which records its own due times) and does nothing when it is stale.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// RFC 3261 §13.3.1.4: the 2xx of the dialog with this token must have been ACKed by now.
    AckWait(String),
    /// OPTIONS probing of the cores.
    Probe,
    /// Expiry of dialogs and registrations.
    Sweep,
}
