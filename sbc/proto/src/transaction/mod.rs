//! RFC 3261 §17 for a transaction-stateful proxy: a server transaction on the side a request
//! came from, a client transaction on the side it goes to. [`Transactions`] owns both tables,
//! their transitions (Trying/Calling → Proceeding → Completed/Accepted → Confirmed, RFC 6026's
//! Accepted), their retransmissions (timers A, E, G) and their ends (B, D, F, H, I, J, K, M),
//! on its own timer queue. The engine decides what a response or a failure *means* (relay it,
//! fail over, answer 408/503); this layer decides whether it is new, a retransmission, or late.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// Where this layer puts what it sends (the engine's output queue, so order is kept).
pub type Out = VecDeque<Transmit>;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dialog::ForwardCtx;
use crate::flow::{Flow, Side, Transmit};
use crate::own_keys::OwnKeyMap;
use crate::sip::message::{HeaderName, Message};
use crate::sip::uri::Transport;
use crate::sip::{Method, values};

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

impl ServerState {
    /// Still waiting for a final response: work in progress, not only an echo of one.
    pub fn is_pending(self) -> bool {
        self == ServerState::Proceeding
    }
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
    pub reply_to: Option<SocketAddr>,
    /// The request carried credentials (for the guard: a 401/407 to it is a failed attempt).
    pub credentials: bool,
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
    Forward(Box<ForwardCtx>),
    /// OPTIONS keepalive probe to core target N.
    Probe(usize),
    /// OPTIONS keepalive ping to the UA behind NAT registered under this token.
    Ping(String),
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
        self.flow.transport != Transport::Udp
    }
}

/// The key a client transaction is stored under: our branch, plus a suffix for the CANCEL that
/// shares the INVITE's branch (§9.1).
pub fn client_key(branch: &[u8], method: Method) -> String {
    let b = String::from_utf8_lossy(branch);
    if method == Method::Cancel { format!("{b}|C") } else { b.into_owned() }
}

/// What a response means for its client transaction (§17.1.1.2, §17.1.2.2, RFC 6026).
#[derive(Debug, PartialEq, Eq)]
pub enum ClientStep {
    /// No such transaction (never ours, or over): drop.
    Stray,
    /// From the other side than the request went to: drop.
    WrongSide,
    /// A retransmitted final (re-ACKed for INVITE) or a late non-2xx: absorbed.
    Absorbed,
    /// A 100 Trying: hop-by-hop, not relayed. `cancel_now`: a CANCEL waited for it.
    Trying { cancel_now: bool },
    /// A probe got its final answer (the core is up).
    ProbeAnswered(usize),
    /// A ping got a final answer (the UA behind NAT is there).
    PingAnswered(String),
    /// A response to our own CANCEL or BYE, or a provisional to a probe: nothing to do.
    Ignored,
    /// To be relayed to the requester (the engine does dialogs, registrations, failover).
    Relay { cancel_now: bool },
}

/// A request to send on a new client transaction.
#[derive(Debug)]
pub struct Outgoing {
    pub flow: Flow,
    pub method: Method,
    pub data: Vec<u8>,
    pub branch: String,
    pub purpose: Purpose,
    /// The server transaction it was forwarded for.
    pub server: Option<ServerKey>,
}

/// A client transaction the network gave up on.
#[derive(Debug)]
pub struct Expired(pub ClientTxn);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Client(String),
    Server(ServerKey),
}

/// Every transaction of the proxy, and their timers.
#[derive(Debug)]
pub struct Transactions {
    t: Timers,
    /// Header limit for re-reading the requests we sent (to build CANCEL and ACK).
    max_headers: usize,
    server: HashMap<ServerKey, ServerTxn>,
    /// Keyed by our own branches: [`OwnKeyMap`].
    client: OwnKeyMap<String, ClientTxn>,
    timers: BinaryHeap<Reverse<(Instant, u64, TimerKey)>>,
    seq: u64,
    /// Server transactions still waiting for their final response (the work in progress that
    /// `max_transactions` bounds).
    pending_server: usize,
    /// Server transactions that got their final response and linger only to absorb
    /// retransmissions (Timer J, L, H: 64·T1 over UDP), oldest first, with the `expires` they
    /// had on entering: what [`Transactions::evict_lingering`] may end early.
    lingering: VecDeque<(Instant, ServerKey)>,
    /// Requests and responses this layer retransmitted / absorbed (for the engine's stats).
    pub retransmissions_sent: u64,
    pub retransmissions_absorbed: u64,
}

impl Transactions {
    pub fn new(t: Timers, max_headers: usize) -> Transactions {
        Transactions {
            t,
            max_headers,
            server: HashMap::new(),
            client: OwnKeyMap::default(),
            timers: BinaryHeap::new(),
            seq: 0,
            pending_server: 0,
            lingering: VecDeque::new(),
            retransmissions_sent: 0,
            retransmissions_absorbed: 0,
        }
    }

    pub fn server_len(&self) -> usize {
        self.server.len()
    }
    /// Server transactions without a final response yet.
    pub fn pending_server(&self) -> usize {
        self.pending_server
    }
    /// Ends the oldest lingering server transactions (answered, kept only to absorb
    /// retransmissions) until at most `max` linger: at a high call rate they outnumber the
    /// calls in progress 64·T1 to one, and must not refuse new work nor grow without bound.
    /// A retransmission of an evicted one's request is then treated as new (the far end
    /// answers it again, or the dialog layer absorbs it). Returns how many were ended.
    pub fn evict_lingering(&mut self, max: usize) -> usize {
        let mut ended = 0;
        while self.lingering.len() > max {
            let Some((at, key)) = self.lingering.pop_front() else { break };
            if self.server.get(&key).is_some_and(|st| st.expires == at && !st.state.is_pending()) {
                self.server.remove(&key);
                ended += 1;
            }
        }
        ended
    }
    pub fn client_len(&self) -> usize {
        self.client.len()
    }
    pub fn server(&self, key: &ServerKey) -> Option<&ServerTxn> {
        self.server.get(key)
    }
    pub fn client(&self, key: &str) -> Option<&ClientTxn> {
        self.client.get(key)
    }
    pub fn client_mut(&mut self, key: &str) -> Option<&mut ClientTxn> {
        self.client.get_mut(key)
    }
    /// Moves what a client transaction is for (its purpose and server transaction) out, for
    /// failover to restart it under a new branch; the old one stays to absorb what is late.
    pub fn detach(&mut self, key: &str) -> Option<(Purpose, Option<ServerKey>)> {
        let ct = self.client.get_mut(key)?;
        let purpose = std::mem::replace(&mut ct.purpose, Purpose::Cancel);
        Some((purpose, ct.server.take()))
    }

    /// Takes a client transaction out (it failed; the engine decides what follows).
    pub fn take_client(&mut self, key: &str) -> Option<ClientTxn> {
        self.client.remove(key)
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    fn schedule(&mut self, at: Instant, key: TimerKey) {
        self.seq += 1;
        self.timers.push(Reverse((at, self.seq, key)));
    }

    // ----------------------------------------------------------------------------------------
    // Server transactions

    /// §17.2.1 / §17.2.2: a request matching a server transaction is a retransmission; it is
    /// answered with the last response (none while an INVITE is Accepted: the 2xx is the UAS's
    /// to retransmit). True when absorbed.
    pub fn absorb_request(&mut self, key: &ServerKey, out: &mut Out) -> bool {
        let Some(st) = self.server.get(key) else { return false };
        if st.state != ServerState::Accepted
            && let Some(r) = st.last_response.clone()
        {
            out.push_back(Transmit { flow: st.flow, data: r, reconnect: st.reply_to });
        }
        self.retransmissions_absorbed += 1;
        true
    }

    /// §17.2.1: the ACK for a non-2xx final is hop-by-hop and ends here (Confirmed, Timer I).
    /// False when it is not such an ACK (an ACK for a 2xx is a request of its own).
    pub fn absorb_ack(&mut self, now: Instant, key: &ServerKey, transport: Transport) -> bool {
        let Some(st) = self.server.get_mut(key) else { return false };
        if !matches!(st.state, ServerState::Completed | ServerState::Confirmed) {
            return false;
        }
        st.state = ServerState::Confirmed;
        st.retransmit = None;
        let linger = if transport == Transport::Udp { self.t.t4 } else { Duration::ZERO };
        st.expires = now + linger;
        self.retransmissions_absorbed += 1;
        self.schedule(now + linger, TimerKey::Server(key.clone()));
        true
    }

    /// A new server transaction, forgotten at `st.expires` unless a response moves it on.
    pub fn insert_server(&mut self, key: ServerKey, st: ServerTxn) {
        let at = st.expires;
        if st.state.is_pending() {
            self.pending_server += 1;
        }
        if let Some(old) = self.server.get(&key)
            && old.state.is_pending()
        {
            self.pending_server -= 1;
        }
        self.server.insert(key.clone(), st);
        self.schedule(at, TimerKey::Server(key));
    }

    /// Sends a response on the server transaction and moves its state (§17.2.1, §17.2.2,
    /// RFC 6026): 2xx to INVITE → Accepted; other finals → Completed with Timer G (INVITE over
    /// UDP) and H/J. Provisionals are only remembered for retransmissions.
    pub fn respond(&mut self, now: Instant, key: &ServerKey, code: u16, resp: Vec<u8>, out: &mut Out) {
        let t = self.t;
        let Some(st) = self.server.get_mut(key) else { return };
        let (flow, reply_to) = (st.flow, st.reply_to);
        st.last_response = Some(resp.clone());
        out.push_back(Transmit { flow, data: resp, reconnect: reply_to });
        if code < 200 {
            return;
        }
        let udp = st.flow.transport == Transport::Udp;
        if st.state.is_pending() {
            self.pending_server -= 1;
        }
        let (state, linger, retransmit) = match (st.method, code) {
            (Method::Invite, 200..=299) => (ServerState::Accepted, t.t64(), None),
            (Method::Invite, _) => (ServerState::Completed, t.t64(), udp.then(|| (t.t1, now + t.t1))),
            _ => (ServerState::Completed, if udp { t.t64() } else { Duration::ZERO }, None),
        };
        st.state = state;
        st.retransmit = retransmit;
        st.expires = now + linger;
        self.lingering.push_back((now + linger, key.clone()));
        if let Some((_, at)) = retransmit {
            self.schedule(at, TimerKey::Server(key.clone()));
        }
        self.schedule(now + linger, TimerKey::Server(key.clone()));
    }

    /// Links a server transaction to the client transaction it was forwarded on.
    pub fn link(&mut self, server: &ServerKey, client: &str) {
        if let Some(st) = self.server.get_mut(server) {
            st.client = Some(client.to_owned());
        }
    }

    // ----------------------------------------------------------------------------------------
    // Client transactions

    /// Sends a request on a new client transaction: Timer A/E on UDP, B/F always (a probe
    /// gives up after `probe_timeout`). Returns its key.
    pub fn start_client(&mut self, now: Instant, req: Outgoing, probe_timeout: Duration, out: &mut Out) -> String {
        let Outgoing { flow, method, data, branch, purpose, server } = req;
        let key = client_key(branch.as_bytes(), method);
        let expires = match purpose {
            Purpose::Probe(_) | Purpose::Ping(_) => now + probe_timeout,
            _ => now + self.t.t64(),
        };
        let retransmit = (flow.transport == Transport::Udp).then(|| (self.t.t1, now + self.t.t1));
        if let Some((_, at)) = retransmit {
            self.schedule(at, TimerKey::Client(key.clone()));
        }
        self.schedule(expires, TimerKey::Client(key.clone()));
        if let Some(sk) = &server {
            self.link(sk, &key);
        }
        out.push_back(Transmit { flow, data: data.clone(), reconnect: None });
        let ct = ClientTxn {
            flow,
            method,
            request: data,
            branch,
            state: ClientState::Calling,
            purpose,
            server,
            retransmit,
            expires,
            cancel_pending: false,
            ack: None,
        };
        self.client.insert(key.clone(), ct);
        key
    }

    /// §9.1: a CANCEL for the INVITE client transaction `invite_key`, same branch, once it has
    /// had a provisional response.
    pub fn cancel(&mut self, now: Instant, invite_key: &str, out: &mut Out) {
        let max_headers = self.max_headers;
        let Some(ct) = self.client.get_mut(invite_key) else { return };
        ct.cancel_pending = false;
        let (flow, branch) = (ct.flow, ct.branch.clone());
        let Some(data) = cancel_or_ack(&ct.request, "CANCEL", None, max_headers) else { return };
        let req = Outgoing { flow, method: Method::Cancel, data, branch, purpose: Purpose::Cancel, server: None };
        self.start_client(now, req, Duration::ZERO, out);
    }

    /// The transaction layer's reading of a response to client transaction `key` from `side`.
    pub fn on_response(
        &mut self,
        now: Instant,
        key: &str,
        side: Side,
        code: u16,
        resp: &Message<'_>,
        out: &mut Out,
    ) -> ClientStep {
        let (t, max_headers) = (self.t, self.max_headers);
        let Some(ct) = self.client.get_mut(key) else { return ClientStep::Stray };
        if ct.flow.side != side {
            return ClientStep::WrongSide;
        }
        match &ct.purpose {
            Purpose::Probe(idx) => {
                let idx = *idx;
                if code < 200 {
                    return ClientStep::Ignored;
                }
                self.client.remove(key);
                return ClientStep::ProbeAnswered(idx);
            }
            Purpose::Ping(token) => {
                if code < 200 {
                    return ClientStep::Ignored;
                }
                let token = token.clone();
                self.client.remove(key);
                return ClientStep::PingAnswered(token);
            }
            Purpose::Cancel | Purpose::Local => {
                if code >= 200 {
                    self.client.remove(key);
                }
                return ClientStep::Ignored;
            }
            Purpose::Forward(_) => {}
        }
        let invite = ct.method == Method::Invite;
        match ct.state {
            ClientState::Completed => {
                // A retransmitted final: re-ACK (INVITE), absorb.
                if let Some(ack) = ct.ack.clone() {
                    out.push_back(Transmit { flow: ct.flow, data: ack, reconnect: None });
                }
                self.retransmissions_absorbed += 1;
                return ClientStep::Absorbed;
            }
            // A 2xx retransmission: the UAS has not seen the ACK yet; pass it on (§13.3.1.4).
            ClientState::Accepted if (200..300).contains(&code) => {}
            ClientState::Accepted => return ClientStep::Absorbed,
            ClientState::Calling | ClientState::Proceeding => {}
        }
        if code < 200 {
            ct.state = ClientState::Proceeding;
            if invite {
                ct.retransmit = None;
            } else if let Some((_, at)) = ct.retransmit {
                ct.retransmit = Some((t.t2, at));
            }
        }
        let cancel_now = code < 200 && ct.cancel_pending;
        if code == 100 {
            return ClientStep::Trying { cancel_now };
        }
        if code >= 200 {
            ct.retransmit = None;
            let reliable = ct.reliable();
            if invite && code < 300 {
                ct.state = ClientState::Accepted;
                ct.expires = now + t.t64();
            } else {
                ct.state = ClientState::Completed;
                if invite {
                    // §17.1.1.3: the ACK for a non-2xx goes hop-by-hop from us.
                    let to = resp.value(HeaderName::To).map(<[u8]>::to_vec);
                    ct.ack = cancel_or_ack(&ct.request, "ACK", to.as_deref(), max_headers);
                    if let Some(ack) = ct.ack.clone() {
                        out.push_back(Transmit { flow: ct.flow, data: ack, reconnect: None });
                    }
                    ct.expires = now + if reliable { Duration::ZERO } else { Duration::from_secs(32) };
                } else {
                    ct.expires = now + if reliable { Duration::ZERO } else { t.t4 };
                }
            }
            let at = ct.expires;
            self.schedule(at, TimerKey::Client(key.to_owned()));
        }
        ClientStep::Relay { cancel_now }
    }

    /// Client transactions still waiting for a final response on this flow (same side,
    /// transport and peer): a transport error there fails them (§17.1.4).
    pub fn waiting_on(&self, flow: Flow) -> Vec<String> {
        let same = |f: &Flow| f.side == flow.side && f.transport == flow.transport && f.remote == flow.remote;
        self.client
            .iter()
            .filter(|(_, ct)| same(&ct.flow) && matches!(ct.state, ClientState::Calling | ClientState::Proceeding))
            .map(|(k, _)| k.clone())
            .collect()
    }

    // ----------------------------------------------------------------------------------------
    // Timers

    /// Runs every timer due at `now`: retransmissions go into `out`;
    /// client transactions that got no final response are returned for the engine to fail.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Out) -> Vec<Expired> {
        let mut expired = Vec::new();
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, _, key))) = self.timers.pop() else { break };
            match key {
                TimerKey::Client(k) => {
                    if let Some(e) = self.client_timer(now, k, out) {
                        expired.push(e);
                    }
                }
                TimerKey::Server(k) => self.server_timer(now, k, out),
            }
        }
        expired
    }

    fn client_timer(&mut self, now: Instant, key: String, out: &mut Out) -> Option<Expired> {
        let t = self.t;
        let ct = self.client.get_mut(&key)?;
        if ct.expires <= now {
            let ct = self.client.remove(&key)?;
            return matches!(ct.state, ClientState::Calling | ClientState::Proceeding).then_some(Expired(ct));
        }
        if let Some((iv, at)) = ct.retransmit
            && at <= now
        {
            // Timer A doubles; Timer E doubles up to T2 (§17.1.1.2, §17.1.2.2).
            let next = if ct.method == Method::Invite { iv * 2 } else { (iv * 2).min(t.t2) };
            ct.retransmit = Some((next, now + next));
            out.push_back(Transmit { flow: ct.flow, data: ct.request.clone(), reconnect: None });
            self.retransmissions_sent += 1;
            self.schedule(now + next, TimerKey::Client(key));
        }
        None
    }

    fn server_timer(&mut self, now: Instant, key: ServerKey, out: &mut Out) {
        let t = self.t;
        let Some(st) = self.server.get_mut(&key) else { return };
        if st.expires <= now {
            if st.state.is_pending() {
                self.pending_server -= 1;
            }
            self.server.remove(&key);
            // Its entry in `lingering` (if any) no longer matches and is skipped; drop the
            // stale ones at the front so the queue stays as long as what lingers.
            while self.lingering.front().is_some_and(|(at, k)| self.server.get(k).is_none_or(|s| s.expires != *at)) {
                self.lingering.pop_front();
            }
            return;
        }
        if st.state == ServerState::Completed
            && let Some((iv, at)) = st.retransmit
            && at <= now
        {
            // Timer G (§17.2.1).
            let next = (iv * 2).min(t.t2);
            st.retransmit = Some((next, now + next));
            if let Some(r) = st.last_response.clone() {
                out.push_back(Transmit { flow: st.flow, data: r, reconnect: st.reply_to });
                self.retransmissions_sent += 1;
            }
            self.schedule(now + next, TimerKey::Server(key));
        }
    }
}

/// §9.1 CANCEL / §17.1.1.3 ACK built from the INVITE we sent: same Request-URI, top Via, Route,
/// From, Call-ID and CSeq number; the ACK takes the To of the response.
pub fn cancel_or_ack(invite: &[u8], method: &str, to: Option<&[u8]>, max_headers: usize) -> Option<Vec<u8>> {
    let m = Message::index(invite, max_headers).ok()?;
    let mut out = Vec::with_capacity(invite.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(m.request_uri());
    out.extend_from_slice(b" SIP/2.0\r\n");
    let mut cseq = None;
    for h in &m.headers {
        let v = m.slice(&h.value_span);
        match h.name {
            HeaderName::Via | HeaderName::Route | HeaderName::From | HeaderName::CallId => {
                out.extend_from_slice(h.name.canonical().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
            HeaderName::To => {
                out.extend_from_slice(b"To: ");
                out.extend_from_slice(to.unwrap_or(v));
                out.extend_from_slice(b"\r\n");
            }
            HeaderName::CSeq => cseq = values::cseq(v).ok().map(|(n, _)| n),
            _ => {}
        }
    }
    out.extend_from_slice(
        format!("CSeq: {} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n", cseq?).as_bytes(),
    );
    Some(out)
}
