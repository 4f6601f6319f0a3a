//! RFC 3261 §17 transaction state for a transaction-stateful proxy: a server transaction on the
//! side a request came from, a client transaction on the side it goes to. The engine drives the
//! transitions; this module owns the states, the timer values and the matching keys.

use std::time::{Duration, Instant};

use crate::flow::{Flow, Side};
use crate::sip::Method;

/// RFC 3261 §17.1.1.1 / table 4 timer base values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
    }
}

impl Timers {
    /// Timer B / F / H / J / M: 64·T1.
    pub fn t64(&self) -> Duration {
        self.t1 * 64
    }
}

/// §17.2.3: a server transaction is matched by the top Via's branch *and* sent-by, and the
/// method (an ACK matches its INVITE; a CANCEL is a transaction of its own), on the side it
/// arrived on. A UA that reuses a branch for another request, or another UA that happens to
/// pick the same branch, starts a new transaction instead of being taken for a retransmission.
/// (Two requests of different unknown methods share `Method::Other`.)
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerKey {
    pub side: Side,
    pub branch: Vec<u8>,
    pub sent_by: Vec<u8>,
    pub method: Method,
}

impl ServerKey {
    /// The key of the transaction `method` belongs to: ACK → its INVITE; CANCEL → the CANCEL's own.
    pub fn new(side: Side, branch: Vec<u8>, sent_by: Vec<u8>, method: Method) -> ServerKey {
        let method = if method == Method::Ack { Method::Invite } else { method };
        ServerKey { side, branch, sent_by, method }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Request forwarded, no final response yet (§17.2.1 Proceeding / §17.2.2 Trying).
    Proceeding,
    /// Non-2xx final sent; INVITE: retransmit on Timer G until ACK (§17.2.1).
    Completed,
    /// INVITE: ACK received, absorbing ACK retransmissions until Timer I.
    Confirmed,
    /// INVITE answered 2xx (RFC 6026 §7.1): INVITE retransmissions absorbed, ACKs routed as
    /// end-to-end requests.
    Accepted,
}

#[derive(Debug)]
pub struct ServerTxn {
    pub flow: Flow,
    pub method: Method,
    /// The request's Via values, top first: restored on every response (the other side never saw them).
    pub vias: Vec<Vec<u8>>,
    /// The request's From, To and Call-ID as the requester wrote them: responses carry them
    /// back unchanged (§8.2.6.2), whatever the other side did to them.
    pub from: Vec<u8>,
    pub to: Vec<u8>,
    pub call_id: Vec<u8>,
    pub cseq: Vec<u8>,
    /// Record-Route of a dialog-creating request, echoed in its responses (§12.1.1).
    pub record_route: Vec<Vec<u8>>,
    pub state: ServerState,
    pub last_response: Option<Vec<u8>>,
    /// The client transaction this one is forwarded on (its key).
    pub client: Option<String>,
    /// Our To tag for responses we generate ourselves (100 is tagless; 408/503 carry it).
    pub local_tag: String,
    /// Timer G interval and next firing (INVITE over UDP, Completed).
    pub retransmit: Option<(Duration, Instant)>,
    /// Timer H/I/J: when this transaction is forgotten.
    pub expires: Instant,
    /// Reliable transports: where responses go if the request's connection is gone — the
    /// source IP with the Via's sent-by port (§18.2.2), not the peer's ephemeral port.
    pub reply_to: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Calling (INVITE) / Trying (non-INVITE): retransmitting on Timer A / E.
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// Non-2xx final received: absorb retransmissions (Timer D / K), re-ACK them for INVITE.
    Completed,
    /// INVITE 2xx received (RFC 6026 Accepted): forward 2xx retransmissions until Timer M.
    Accepted,
}

/// What a client transaction is for, so its responses go to the right place.
#[derive(Debug)]
pub enum Purpose {
    /// Forwarding a request received on the other side.
    Forward(Box<crate::dialog::ForwardCtx>),
    /// OPTIONS keepalive probe to core target N.
    Probe(usize),
    /// A CANCEL we sent for the INVITE client transaction with this key.
    Cancel,
    /// A request the SBC makes on its own (the BYE for an unACKed 2xx): its answer ends here.
    Local,
}

#[derive(Debug)]
pub struct ClientTxn {
    pub flow: Flow,
    pub method: Method,
    /// The bytes sent, for retransmission and for building ACK/CANCEL (§9.1, §17.1.1.3).
    pub request: Vec<u8>,
    pub branch: String,
    pub state: ClientState,
    pub purpose: Purpose,
    pub server: Option<ServerKey>,
    /// Timer A/E: current interval and next firing; None on reliable transports or once answered.
    pub retransmit: Option<(Duration, Instant)>,
    /// Timer B/F (or D/K/M once completed): the transaction ends here.
    pub expires: Instant,
    pub cancel_pending: bool,
    /// The ACK we sent for a non-2xx final, re-sent on each retransmission of that response.
    pub ack: Option<Vec<u8>>,
}

impl ClientTxn {
    pub fn reliable(&self) -> bool {
        self.flow.transport != crate::sip::uri::Transport::Udp
    }
}

/// The key a client transaction is stored under: our branch, plus a suffix for the CANCEL that
/// shares the INVITE's branch (§9.1).
pub fn client_key(branch: &[u8], method: Method) -> String {
    let b = String::from_utf8_lossy(branch);
    if method == Method::Cancel { format!("{b}|C") } else { b.into_owned() }
}
