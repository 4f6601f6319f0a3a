//! The proxy engine: a transaction-stateful, dialog-aware SIP proxy between two sides that
//! hides each side's topology from the other (RFC 3261 §16, §17). Sans-IO: the daemon feeds it
//! datagrams and framed stream messages with the current time, and drains `poll_transmit`,
//! `poll_event` and `poll_timeout`.
//!
//! Invariants:
//! * Every request leaving the engine carries exactly one Via (ours) and no Record-Route of
//!   the other side; responses carry only the Vias their side sent.
//! * Every Contact leaving the engine is an SBC URI (an opaque token, or none).
//! * Call-ID and tags crossing toward a hidden side are masked; masked values coming back are
//!   restored (see [`crate::topology`]).
//! * Nothing here panics on input; every failure is a response or a counted drop.

mod build;
#[cfg(test)]
mod tests;
mod timer;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dialog::{AckWait, Binding, Dialog, ForwardCtx, Leg};
use crate::sip::edit::reply;
use crate::sip::framer::{Datagram, Limits, frame_datagram};
use crate::sip::message::{HeaderName, Message};
use crate::sip::sanity::{self, Checked};
use crate::sip::uri::{self, SipUri, Transport};
use crate::sip::{Method, Reaction, SipError, values};
use crate::topology::Masker;
use crate::transaction::{ClientState, ClientTxn, Purpose, ServerKey, ServerState, ServerTxn, Timers, client_key};

pub use timer::Timer;

/// The methods the SBC relays, for `Allow` in its own answers.
const ALLOW: &[u8] =
    b"INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, PRACK, UPDATE, INFO, MESSAGE, SUBSCRIBE, NOTIFY, REFER";

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

/// One side's addresses and policy.
#[derive(Debug, Clone)]
pub struct SideConfig {
    /// Host written in our Via and Contact on this side.
    pub advertise: String,
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    /// Mask Call-ID and tags toward this side, strip configured headers, replace the other
    /// side's host names in From/To.
    pub hide: bool,
}

impl SideConfig {
    pub fn local(&self, t: Transport) -> Option<SocketAddr> {
        match t {
            Transport::Udp => self.udp,
            Transport::Tcp => self.tcp,
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreTarget {
    pub addr: SocketAddr,
    pub transport: Transport,
}

/// Everything the engine needs, already validated by the daemon's config layer.
#[derive(Debug, Clone)]
pub struct Config {
    pub external: SideConfig,
    pub internal: SideConfig,
    /// In priority order: the first one up gets new requests.
    pub cores: Vec<CoreTarget>,
    /// OPTIONS probing of the cores; None disables it (cores are then assumed up).
    pub probe_interval: Option<Duration>,
    pub probe_timeout: Duration,
    pub limits: Limits,
    pub max_transactions: usize,
    pub max_dialogs: usize,
    pub max_registrations: usize,
    pub secret: Vec<u8>,
    /// Headers removed from messages sent toward a hidden side.
    pub strip_headers: Vec<String>,
    /// Domains that may be seen outside: toward a hidden external side, every other host in
    /// the From, Referred-By and P-Asserted-Identity of what the internal side sends becomes
    /// the SBC's own (so the core's host names never leak, listed or not).
    pub public_domains: Vec<String>,
    /// Remove Authorization / Proxy-Authorization from requests leaving on the external side:
    /// credentials are for the core's realm, never for another subscriber.
    pub strip_credentials: bool,
    /// A confirmed dialog with no request for this long is forgotten.
    pub dialog_idle: Duration,
    pub timers: Timers,
    /// Seed of the branch/tag generator (the daemon passes OS randomness).
    pub seed: u64,
}

impl Config {
    /// A small valid configuration on documentation addresses: external 203.0.113.1:5060 (UDP,
    /// hidden), internal 10.99.0.1:5060 (UDP), one core 10.99.0.10:5070, no probing, fixed
    /// secret and seed. For tests, fuzzing and examples; the daemon builds its own from TOML.
    pub fn example() -> Config {
        let sa = |s: &str| s.parse::<SocketAddr>().ok();
        Config {
            external: SideConfig {
                advertise: "203.0.113.1".into(),
                udp: sa("203.0.113.1:5060"),
                tcp: None,
                hide: true,
            },
            internal: SideConfig { advertise: "10.99.0.1".into(), udp: sa("10.99.0.1:5060"), tcp: None, hide: false },
            cores: sa("10.99.0.10:5070")
                .map(|addr| CoreTarget { addr, transport: Transport::Udp })
                .into_iter()
                .collect(),
            probe_interval: None,
            probe_timeout: Duration::from_secs(2),
            limits: Limits::default(),
            max_transactions: 1000,
            max_dialogs: 1000,
            max_registrations: 1000,
            secret: b"example-secret".to_vec(),
            strip_headers: vec!["Server".into(), "User-Agent".into()],
            public_domains: Vec::new(),
            strip_credentials: true,
            dialog_idle: Duration::from_secs(3600),
            timers: Timers::default(),
            seed: 7,
        }
    }
}

/// Things worth logging or counting, for the daemon (and the guard, later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    CoreUp {
        addr: SocketAddr,
    },
    CoreDown {
        addr: SocketAddr,
    },
    /// A request answered with an error by the SBC itself.
    Rejected {
        flow: Flow,
        code: u16,
        error: String,
    },
    /// A message discarded (bad response, stray response, unroutable ACK...).
    Dropped {
        flow: Flow,
        reason: String,
    },
    /// A limit was hit.
    Overload {
        what: &'static str,
    },
}

/// The guard seam: rate limits, bans and the userspace allowlist plug in here, before routing.
pub trait Guard: Send {
    fn admit(&mut self, now: Instant, flow: &Flow, req: &Checked<'_>) -> Admit;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    Accept,
    Reject { code: u16, reason: &'static str },
    Drop,
}

/// Admits everything (the default until the guard exists).
#[derive(Debug, Default)]
pub struct AllowAll;
impl Guard for AllowAll {
    fn admit(&mut self, _: Instant, _: &Flow, _: &Checked<'_>) -> Admit {
        Admit::Accept
    }
}

/// The SDP seam: media anchoring rewrites bodies crossing sides here.
pub trait BodyHook: Send {
    /// Returns a replacement body, or None to forward it unchanged.
    fn rewrite(&mut self, from: Side, to: Side, content_type: &[u8], body: &[u8]) -> Option<Vec<u8>>;
}

/// Counters, cheap to copy out for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests_in: u64,
    pub responses_in: u64,
    pub requests_forwarded: u64,
    pub responses_forwarded: u64,
    pub local_replies: u64,
    pub retransmissions_absorbed: u64,
    pub retransmissions_sent: u64,
    pub dropped: u64,
    pub rejected: u64,
    /// Dialogs ended because their 2xx was never ACKed (§13.3.1.4).
    pub unacked_dialogs_ended: u64,
    /// Transport errors (ICMP unreachable, TCP reset/refused) that failed pending transactions.
    pub transport_errors: u64,
}

#[derive(Debug)]
struct CoreState {
    target: CoreTarget,
    up: bool,
}

/// A request the SBC answers itself: status code and reason phrase.
type Refusal = (u16, &'static str);

/// How a new request is routed.
enum Route {
    /// In-dialog: to the other leg of dialog `token`.
    Dialog(String),
    /// To the UA registered under `token`.
    Binding(String),
    /// Initial request from outside: to core N.
    Core(usize),
    /// Initial request from the core to an address outside.
    Address(Flow),
}

pub struct Engine {
    cfg: Config,
    masker: Masker,
    guard: Box<dyn Guard>,
    body_hook: Option<Box<dyn BodyHook>>,
    server: HashMap<ServerKey, ServerTxn>,
    client: HashMap<String, ClientTxn>,
    dialogs: HashMap<String, Dialog>,
    /// (side, Call-ID as that side sees it) → dialog token.
    dialog_index: HashMap<(Side, Vec<u8>), String>,
    bindings: HashMap<String, Binding>,
    cores: Vec<CoreState>,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    timer_seq: u64,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    rng: u64,
    stats: Stats,
    /// Hosts left alone in identities sent to a hidden external side (lower case).
    public_hosts: Vec<Vec<u8>>,
    /// The core's and the SBC's internal addresses: never the outside destination's own, so
    /// replaced even in the To of a request sent to a hidden external side (lower case).
    internal_hosts: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("server", &self.server.len())
            .field("client", &self.client.len())
            .field("dialogs", &self.dialogs.len())
            .field("bindings", &self.bindings.len())
            .finish()
    }
}

const SWEEP: Duration = Duration::from_secs(5);

impl Engine {
    pub fn new(cfg: Config, now: Instant) -> Engine {
        let masker = Masker::new(&cfg.secret);
        let cores = cfg.cores.iter().map(|t| CoreState { target: *t, up: true }).collect();
        let public_hosts = build::public_hosts(&cfg);
        let internal_hosts = build::internal_hosts(&cfg);
        let mut e = Engine {
            rng: cfg.seed | 1,
            cfg,
            masker,
            guard: Box::new(AllowAll),
            body_hook: None,
            server: HashMap::new(),
            client: HashMap::new(),
            dialogs: HashMap::new(),
            dialog_index: HashMap::new(),
            bindings: HashMap::new(),
            cores,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            public_hosts,
            internal_hosts,
        };
        if e.cfg.probe_interval.is_some() {
            e.schedule(now, Timer::Probe);
        }
        e.schedule(now + SWEEP, Timer::Sweep);
        e
    }

    pub fn set_guard(&mut self, guard: Box<dyn Guard>) {
        self.guard = guard;
    }
    pub fn set_body_hook(&mut self, hook: Box<dyn BodyHook>) {
        self.body_hook = Some(hook);
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// (server transactions, client transactions, dialogs, registrations)
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        (self.server.len(), self.client.len(), self.dialogs.len(), self.bindings.len())
    }
    pub fn core_up(&self, idx: usize) -> Option<bool> {
        self.cores.get(idx).map(|c| c.up)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// One UDP datagram received on `flow`.
    pub fn handle_datagram(&mut self, now: Instant, flow: Flow, data: &[u8]) {
        match frame_datagram(data, &self.cfg.limits) {
            Datagram::Keepalive => {}
            Datagram::Message(msg) => self.handle_message(now, flow, msg),
            Datagram::Invalid { msg: Some(msg), error } => self.reject(flow, &msg, &error),
            Datagram::Invalid { msg: None, error } => self.drop_msg(flow, error.to_string()),
        }
    }

    /// One complete message cut from a stream by [`crate::sip::StreamFramer`].
    pub fn handle_stream_message(&mut self, now: Instant, flow: Flow, data: &[u8]) {
        match Message::index(data, self.cfg.limits.max_headers) {
            Ok(msg) => self.handle_message(now, flow, msg),
            Err(e) => self.drop_msg(flow, SipError::from(e).to_string()),
        }
    }

    fn handle_message(&mut self, now: Instant, flow: Flow, msg: Message<'_>) {
        match sanity::check(msg) {
            Ok(c) => {
                // One span per message, named by its call and source (no bodies, no credentials).
                let span = tracing::debug_span!(
                    "sip",
                    call_id = %String::from_utf8_lossy(&c.call_id),
                    cseq = c.cseq,
                    method = c.method.as_str(),
                    side = flow.side.as_str(),
                    src = %flow.remote,
                );
                let _enter = span.enter();
                if c.msg.is_request() {
                    self.stats.requests_in += 1;
                    self.on_request(now, flow, &c);
                } else {
                    self.stats.responses_in += 1;
                    tracing::trace!(status = c.status(), "response");
                    self.on_response(now, flow, &c);
                }
            }
            Err(bad) => {
                let (msg, error) = *bad;
                self.reject(flow, &msg, &error);
            }
        }
    }

    fn drop_msg(&mut self, flow: Flow, reason: String) {
        self.stats.dropped += 1;
        self.events.push_back(Event::Dropped { flow, reason });
    }

    /// Answers a bad request with the RFC's code, or drops what cannot be answered.
    fn reject(&mut self, flow: Flow, msg: &Message<'_>, error: &SipError) {
        let answerable = msg.is_request() && msg.method() != Method::Ack && msg.first(HeaderName::Via).is_some();
        match error.reaction() {
            Reaction::Reply { code, reason } if answerable => {
                let unsupported;
                let extra: Vec<(&str, &[u8])> = match error {
                    SipError::BadExtension(list) => {
                        unsupported = list.clone();
                        vec![("Unsupported", unsupported.as_bytes())]
                    }
                    _ => Vec::new(),
                };
                let tag = self.random_hex();
                self.send(flow, reply(msg, flow.remote, code, reason, Some(tag.as_bytes()), &extra));
                self.stats.rejected += 1;
                self.events.push_back(Event::Rejected { flow, code, error: error.to_string() });
            }
            _ => self.drop_msg(flow, error.to_string()),
        }
    }

    fn local_reply(&mut self, flow: Flow, req: &Checked<'_>, code: u16, reason: &'static str, extra: &[(&str, &[u8])]) {
        if req.method == Method::Ack {
            return;
        }
        tracing::debug!(code, reason, "answered locally");
        let tag = self.random_hex();
        self.send(flow, reply(&req.msg, flow.remote, code, reason, Some(tag.as_bytes()), extra));
        self.stats.local_replies += 1;
        if code >= 300 {
            self.events.push_back(Event::Rejected { flow, code, error: reason.to_string() });
        }
    }

    fn send(&mut self, flow: Flow, data: Vec<u8>) {
        self.out.push_back(Transmit { flow, data, reconnect: None });
    }

    /// A response on a server transaction's flow, with its §18.2.2 fallback address.
    fn send_reply(&mut self, flow: Flow, reply_to: Option<SocketAddr>, data: Vec<u8>) {
        self.out.push_back(Transmit { flow, data, reconnect: reply_to });
    }

    fn side_cfg(&self, side: Side) -> &SideConfig {
        match side {
            Side::External => &self.cfg.external,
            Side::Internal => &self.cfg.internal,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: branches and tags need uniqueness, not secrecy (the masker is keyed).
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn random_hex(&mut self) -> String {
        format!("{:016x}", self.random())
    }
    fn new_branch(&mut self) -> String {
        format!("z9hG4bK{:016x}", self.random())
    }

    fn schedule(&mut self, at: Instant, timer: Timer) {
        self.timer_seq += 1;
        self.timers.push(Reverse((at, self.timer_seq, timer)));
    }

    /// The transaction id of a request (§17.2.3), with the RFC 2543 fallback (§17.2.3 last
    /// paragraph) when the branch lacks the magic cookie.
    fn txn_branch(&self, req: &Checked<'_>) -> Vec<u8> {
        match &req.branch {
            Some(b) if b.starts_with(b"z9hG4bK") => b.to_vec(),
            _ => {
                let top = req.msg.value(HeaderName::Via).unwrap_or_default();
                let h = self.masker.token(
                    b'x',
                    &[&req.call_id, &req.cseq.to_le_bytes(), req.from_tag.as_deref().unwrap_or_default(), top],
                );
                format!("2543:{h}").into_bytes()
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Requests

    fn on_request(&mut self, now: Instant, flow: Flow, req: &Checked<'_>) {
        let side = flow.side;
        let branch = self.txn_branch(req);
        let key = ServerKey::new(side, branch, req.sent_by.clone(), req.method);
        match req.method {
            Method::Ack => {
                if let Some(st) = self.server.get_mut(&key) {
                    match st.state {
                        // §17.2.1: the ACK for a non-2xx final is hop-by-hop, absorbed here.
                        ServerState::Completed | ServerState::Confirmed => {
                            st.state = ServerState::Confirmed;
                            st.retransmit = None;
                            let linger =
                                if flow.transport == Transport::Udp { self.cfg.timers.t4 } else { Duration::ZERO };
                            st.expires = now + linger;
                            self.schedule(now + linger, Timer::Server(key));
                            self.stats.retransmissions_absorbed += 1;
                            return;
                        }
                        ServerState::Proceeding | ServerState::Accepted => {}
                    }
                }
                // ACK for 2xx: a request of its own, routed in-dialog without a transaction.
                self.forward_ack(now, flow, req);
                return;
            }
            Method::Cancel => {
                self.on_cancel(now, flow, req, key);
                return;
            }
            _ => {}
        }
        if let Some(st) = self.server.get(&key) {
            // §17.2.1/§17.2.2: a retransmission; answer with the last response, if any.
            if st.state != ServerState::Accepted
                && let Some(r) = st.last_response.clone()
            {
                let (f, reply_to) = (st.flow, st.reply_to);
                self.send_reply(f, reply_to, r);
            }
            self.stats.retransmissions_absorbed += 1;
            return;
        }
        match self.guard.admit(now, &flow, req) {
            Admit::Accept => {}
            Admit::Reject { code, reason } => return self.local_reply(flow, req, code, reason, &[]),
            Admit::Drop => return self.drop_msg(flow, "refused by guard".into()),
        }
        if req.method == Method::Options && req.to_tag.is_none() && self.addressed_to_sbc(req, flow) {
            // RFC 3261 §11.2: an OPTIONS naming the SBC itself (a keepalive, a health check) is
            // answered by the SBC, not relayed to the core.
            return self.local_reply(flow, req, 200, "OK", &[("Allow", ALLOW), ("Accept", b"application/sdp")]);
        }
        if self.server.len() >= self.cfg.max_transactions {
            self.events.push_back(Event::Overload { what: "transactions" });
            return self.local_reply(flow, req, 503, "Service Unavailable", &[("Retry-After", b"5")]);
        }
        let route = match self.route_request(req, flow) {
            Ok(r) => r,
            Err((code, reason)) => return self.local_reply(flow, req, code, reason, &[]),
        };
        if req.method == Method::Invite {
            // §16.2: a stateful proxy answers INVITE with 100 Trying itself.
            let trying = reply(&req.msg, flow.remote, 100, "Trying", None, &[]);
            self.send(flow, trying);
        }
        let local_tag = self.random_hex();
        let mut vias = build::via_values(&req.msg);
        if let Some(top) = vias.first_mut() {
            // §18.2.1 / RFC 3581 §4: responses tell the UA where its request came from.
            *top = crate::sip::edit::stamp_via(top, flow.remote);
        }
        let header = |n: HeaderName| req.msg.first(n).map(|h| req.msg.unfolded(h).into_owned()).unwrap_or_default();
        let mut st = ServerTxn {
            flow,
            method: req.method,
            vias,
            from: header(HeaderName::From),
            to: header(HeaderName::To),
            call_id: req.call_id.to_vec(),
            cseq: header(HeaderName::CSeq),
            record_route: if req.method.creates_dialog() { build::record_routes(&req.msg) } else { Vec::new() },
            state: ServerState::Proceeding,
            last_response: None,
            client: None,
            local_tag,
            retransmit: None,
            expires: now + self.cfg.timers.t64() * 3,
            reply_to: (flow.transport != Transport::Udp).then(|| SocketAddr::new(flow.remote.ip(), req.sent_by_port)),
        };
        if req.method == Method::Invite {
            st.last_response = Some(reply(&req.msg, flow.remote, 100, "Trying", None, &[]));
        }
        self.server.insert(key.clone(), st);
        self.schedule(now + self.cfg.timers.t64() * 3, Timer::Server(key.clone()));
        if let Err((code, reason)) = self.forward_request(now, flow, req, route, key.clone()) {
            self.answer_server(now, &key, code, reason);
        }
    }

    /// The `host[:port]` of the From of a request from the internal side when it will be
    /// replaced by ours toward the outside (see [`build`]'s identity rules).
    fn replaced_from_host(&self, req: &Checked<'_>) -> Option<Vec<u8>> {
        let from = req.msg.unfolded(req.msg.first(HeaderName::From)?);
        let hostport = crate::topology::uri_hostport(&from)?;
        let host = match hostport.first() {
            Some(b'[') => hostport.get(..hostport.iter().position(|&b| b == b']')? + 1)?,
            _ => hostport.split(|&b| b == b':').next()?,
        };
        self.hides_host(host).then(|| hostport.to_vec())
    }

    /// A Request-URI without a user part whose host and port are the address the request
    /// arrived on (or the side's advertised host): the request is for the SBC itself.
    fn addressed_to_sbc(&self, req: &Checked<'_>, flow: Flow) -> bool {
        let Ok(target) = SipUri::parse(req.msg.request_uri()) else { return false };
        if target.user.is_some() {
            return false;
        }
        let port = target.port.unwrap_or(if target.sips { 5061 } else { 5060 });
        let host_is_ours = match &target.host {
            uri::Host::Ip(ip) => *ip == flow.local.ip(),
            uri::Host::Name(n) => n.eq_ignore_ascii_case(&self.side_cfg(flow.side).advertise),
        };
        host_is_ours && port == flow.local.port()
    }

    fn route_request(&self, req: &Checked<'_>, flow: Flow) -> Result<Route, (u16, &'static str)> {
        let ruri = req.msg.request_uri();
        if let Some(user) = uri::user_part(ruri).and_then(|u| std::str::from_utf8(u).ok()) {
            if self.dialogs.contains_key(user) {
                return Ok(Route::Dialog(user.to_string()));
            }
            if let Some(b) = self.bindings.get(user)
                && b.side != flow.side
            {
                return Ok(Route::Binding(user.to_string()));
            }
        }
        if req.to_tag.is_some() {
            // Not sent to our Contact: find the dialog by the Call-ID this side knows.
            if let Some(token) = self.dialog_index.get(&(flow.side, req.call_id.to_vec())) {
                return Ok(Route::Dialog(token.clone()));
            }
            // §12.2.2 / §16: an in-dialog request for a dialog we do not know.
            return Err((481, "Call/Transaction Does Not Exist"));
        }
        match flow.side {
            Side::External => self.pick_core(&[]).map(Route::Core).ok_or((503, "Service Unavailable")),
            Side::Internal => {
                let target = SipUri::parse(ruri).map_err(|_| (416, "Unsupported URI Scheme"))?;
                let Some(remote) = target.socket_addr() else {
                    return Err((404, "Not Found"));
                };
                let ours = [&self.cfg.external, &self.cfg.internal]
                    .iter()
                    .any(|c| c.udp == Some(remote) || c.tcp == Some(remote));
                if ours {
                    // A Request-URI naming the SBC itself without a token of ours: it would loop.
                    return Err((482, "Loop Detected"));
                }
                let transport = target.transport.unwrap_or(Transport::Udp);
                let local = self.cfg.external.local(transport).ok_or((503, "Service Unavailable"))?;
                Ok(Route::Address(Flow { side: Side::External, transport, local, remote }))
            }
        }
    }

    /// The first core that is up and not yet tried; without probing, cores are assumed up.
    fn pick_core(&self, tried: &[usize]) -> Option<usize> {
        let candidates = || self.cores.iter().enumerate().filter(|(i, _)| !tried.contains(i));
        candidates()
            .find(|(_, c)| c.up)
            .or_else(|| if self.cfg.probe_interval.is_none() { candidates().next() } else { None })
            .map(|(i, _)| i)
    }

    fn core_flow(&self, idx: usize) -> Option<Flow> {
        let c = self.cores.get(idx)?;
        let local = self.cfg.internal.local(c.target.transport)?;
        Some(Flow { side: Side::Internal, transport: c.target.transport, local, remote: c.target.addr })
    }

    /// Builds and sends the forwarded request on a new client transaction.
    fn forward_request(
        &mut self,
        now: Instant,
        flow: Flow,
        req: &Checked<'_>,
        route: Route,
        server: ServerKey,
    ) -> Result<(), (u16, &'static str)> {
        let mut ctx = ForwardCtx { call_id_native: flow.side, ..ForwardCtx::default() };
        let mut restore_to_host = None;
        let (to_flow, ruri, route_set) = match &route {
            Route::Dialog(token) => {
                let d = self.dialogs.get_mut(token).ok_or((481, "Call/Transaction Does Not Exist"))?;
                // The requester's flow and target refresh (§12.2.2).
                let from_leg = d.leg_mut(flow.side);
                from_leg.flow = flow;
                if req.method.refreshes_target()
                    && let Some(c) = build::contact_uri(&req.msg)
                {
                    from_leg.target = c;
                }
                d.expires = now + self.cfg.dialog_idle;
                ctx.call_id_native = d.caller;
                if flow.side == Side::External {
                    restore_to_host.clone_from(&d.internal_host);
                }
                let to = d.leg(flow.side.other()).clone();
                ctx.dialog = Some(token.clone());
                (to.flow, Some(to.target), to.route_set)
            }
            Route::Binding(token) => {
                let b = self.bindings.get(token).ok_or((404, "Not Found"))?;
                ctx.to_binding = true;
                (b.flow, Some(b.contact.clone()), Vec::new())
            }
            Route::Core(idx) => {
                ctx.core = Some(*idx);
                ctx.tried.push(*idx);
                (self.core_flow(*idx).ok_or((503, "Service Unavailable"))?, None, Vec::new())
            }
            Route::Address(f) => (*f, None, Vec::new()),
        };
        let initial = !matches!(route, Route::Dialog(_));
        if initial && req.method.creates_dialog() {
            if self.dialogs.len() >= self.cfg.max_dialogs {
                self.events.push_back(Event::Overload { what: "dialogs" });
                return Err((503, "Service Unavailable"));
            }
            ctx.creates_dialog = true;
            let salt = self.random().to_le_bytes();
            ctx.dialog =
                Some(self.masker.token(b'd', &[&req.call_id, req.from_tag.as_deref().unwrap_or_default(), &salt]));
            ctx.requester_contact = build::contact_uri(&req.msg);
            ctx.requester_route_set = build::record_routes(&req.msg);
            ctx.requester_call_id = req.call_id.to_vec();
            if flow.side == Side::Internal && to_flow.side == Side::External && self.cfg.external.hide {
                ctx.internal_host = self.replaced_from_host(req);
            }
        }
        let contact = if req.method == Method::Register {
            let (value, tokens) = self.register_contacts(now, flow, to_flow, req)?;
            ctx.registration = tokens;
            value
        } else {
            Some(self.contact_value(to_flow, ctx.dialog.as_deref()))
        };
        let branch = self.new_branch();
        let data = self.build_request(
            req,
            flow.side,
            to_flow,
            ruri.as_deref(),
            &route_set,
            contact,
            &branch,
            ctx.call_id_native,
            restore_to_host.as_deref(),
        );
        tracing::debug!(to = %to_flow.remote, to_side = to_flow.side.as_str(), %branch, "request forwarded");
        self.start_client(now, to_flow, req.method, data, branch, Purpose::Forward(Box::new(ctx)), Some(server));
        self.stats.requests_forwarded += 1;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn start_client(
        &mut self,
        now: Instant,
        flow: Flow,
        method: Method,
        data: Vec<u8>,
        branch: String,
        purpose: Purpose,
        server: Option<ServerKey>,
    ) {
        let key = client_key(branch.as_bytes(), method);
        let t = self.cfg.timers;
        let expires = match purpose {
            Purpose::Probe(_) => now + self.cfg.probe_timeout,
            _ => now + t.t64(),
        };
        let retransmit = (flow.transport == Transport::Udp).then(|| (t.t1, now + t.t1));
        if let Some((_, at)) = retransmit {
            self.schedule(at, Timer::Client(key.clone()));
        }
        self.schedule(expires, Timer::Client(key.clone()));
        if let Some(sk) = &server
            && let Some(st) = self.server.get_mut(sk)
        {
            st.client = Some(key.clone());
        }
        self.send(flow, data.clone());
        self.client.insert(
            key,
            ClientTxn {
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
            },
        );
    }

    /// Our Contact toward a flow's side: the dialog token, or no user part.
    fn contact_value(&self, to: Flow, token: Option<&str>) -> Vec<u8> {
        build::sbc_uri(&self.side_cfg(to.side).advertise, to, token, true)
    }

    /// REGISTER: each Contact becomes a token URI on the registrar's side (§10.2.1); the
    /// binding remembers the UA's real Contact and flow.
    fn register_contacts(
        &mut self,
        now: Instant,
        flow: Flow,
        to: Flow,
        req: &Checked<'_>,
    ) -> Result<(Option<Vec<u8>>, Vec<String>), Refusal> {
        let aor = req.msg.value(HeaderName::To).unwrap_or_default().to_vec();
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut tokens = Vec::new();
        for h in req.msg.all(HeaderName::Contact) {
            let v = req.msg.unfolded(h);
            if &*v == b"*" {
                out.push(b"*".to_vec());
                continue;
            }
            for r in values::split_commas(&v).map_err(|_| (400, "Bad Request"))? {
                let elem = v.get(r).unwrap_or_default();
                let na = values::name_addr(elem).map_err(|_| (400, "Bad Request"))?;
                let contact = elem.get(na.uri.clone()).unwrap_or_default().to_vec();
                let params = elem.get(na.params.clone()).unwrap_or_default();
                let token = self.masker.token(b'r', &[&aor, &contact]);
                if !self.bindings.contains_key(&token) && self.bindings.len() >= self.cfg.max_registrations {
                    self.events.push_back(Event::Overload { what: "registrations" });
                    return Err((503, "Service Unavailable"));
                }
                let pending = now + self.cfg.timers.t64();
                let b = self.bindings.entry(token.clone()).or_insert_with(|| Binding {
                    token: token.clone(),
                    side: flow.side,
                    contact: contact.clone(),
                    flow,
                    confirmed: false,
                    expires: pending,
                });
                b.flow = flow;
                b.contact = contact;
                b.expires = b.expires.max(pending);
                let mut e = build::sbc_uri(&self.side_cfg(to.side).advertise, to, Some(&token), true);
                e.extend_from_slice(params);
                out.push(e);
                tokens.push(token);
            }
        }
        Ok(((!out.is_empty()).then(|| out.join(&b", "[..])), tokens))
    }

    fn forward_ack(&mut self, now: Instant, flow: Flow, req: &Checked<'_>) {
        let route = match self.route_request(req, flow) {
            Ok(Route::Dialog(t)) => t,
            _ => return self.drop_msg(flow, "ACK outside any dialog".into()),
        };
        let Some(d) = self.dialogs.get_mut(&route) else { return };
        d.leg_mut(flow.side).flow = flow;
        d.expires = now + self.cfg.dialog_idle;
        // §13.3.1.4: the 2xx is acknowledged; the dialog is up.
        d.ack_wait = None;
        let to = d.leg(flow.side.other()).clone();
        let caller = d.caller;
        let restore = if flow.side == Side::External { d.internal_host.clone() } else { None };
        let branch = self.new_branch();
        let contact = Some(self.contact_value(to.flow, Some(&route)));
        let data = self.build_request(
            req,
            flow.side,
            to.flow,
            Some(&to.target),
            &to.route_set,
            contact,
            &branch,
            caller,
            restore.as_deref(),
        );
        self.send(to.flow, data);
        self.stats.requests_forwarded += 1;
    }

    /// §9.2: `cancel_key` is the CANCEL's own transaction; the INVITE it cancels has the same
    /// branch and sent-by (§17.2.3).
    fn on_cancel(&mut self, now: Instant, flow: Flow, req: &Checked<'_>, cancel_key: ServerKey) {
        let invite_key = ServerKey { method: Method::Invite, ..cancel_key.clone() };
        if let Some(st) = self.server.get(&cancel_key) {
            if let Some(r) = st.last_response.clone() {
                self.send(flow, r);
            }
            self.stats.retransmissions_absorbed += 1;
            return;
        }
        let Some(st) = self.server.get(&invite_key) else {
            return self.local_reply(flow, req, 481, "Call/Transaction Does Not Exist", &[]);
        };
        // §9.2: the CANCEL is answered hop-by-hop; the INVITE will get its 487 from the far end.
        let tag = st.local_tag.clone();
        let proceeding = st.state == ServerState::Proceeding;
        let client = st.client.clone();
        let ok = reply(&req.msg, flow.remote, 200, "OK", Some(tag.as_bytes()), &[]);
        self.send(flow, ok.clone());
        let linger = if flow.transport == Transport::Udp { self.cfg.timers.t64() } else { Duration::ZERO };
        self.server.insert(
            cancel_key.clone(),
            ServerTxn {
                flow,
                method: Method::Cancel,
                vias: Vec::new(),
                from: Vec::new(),
                to: Vec::new(),
                call_id: Vec::new(),
                cseq: Vec::new(),
                record_route: Vec::new(),
                state: ServerState::Completed,
                last_response: Some(ok),
                client: None,
                local_tag: tag,
                retransmit: None,
                expires: now + linger,
                reply_to: None,
            },
        );
        self.schedule(now + linger, Timer::Server(cancel_key));
        if !proceeding {
            return;
        }
        if let Some(ck) = client
            && let Some(ct) = self.client.get_mut(&ck)
        {
            match ct.state {
                ClientState::Proceeding => self.send_cancel(now, &ck),
                ClientState::Calling => ct.cancel_pending = true,
                _ => {}
            }
        }
    }

    /// §9.1: CANCEL toward the far side, same branch as the INVITE, only once it has answered.
    fn send_cancel(&mut self, now: Instant, invite_key: &str) {
        let Some(ct) = self.client.get_mut(invite_key) else { return };
        ct.cancel_pending = false;
        let (flow, branch) = (ct.flow, ct.branch.clone());
        let Some(data) = build::cancel_or_ack(&ct.request, "CANCEL", None, self.cfg.limits.max_headers) else { return };
        self.start_client(now, flow, Method::Cancel, data, branch, Purpose::Cancel, None);
    }

    /// Finishes a server transaction with a response the SBC makes itself (408, 503...).
    fn answer_server(&mut self, now: Instant, key: &ServerKey, code: u16, reason: &str) {
        let Some(st) = self.server.get(key) else { return };
        let resp = build::local_response(st, code, reason);
        let (flow, reply_to) = (st.flow, st.reply_to);
        self.finish_server(now, key, code, resp.clone());
        self.send_reply(flow, reply_to, resp);
        self.stats.local_replies += 1;
    }

    /// Records a final (or provisional) response on a server transaction and moves its state.
    fn finish_server(&mut self, now: Instant, key: &ServerKey, code: u16, resp: Vec<u8>) {
        let t = self.cfg.timers;
        let Some(st) = self.server.get_mut(key) else { return };
        st.last_response = Some(resp);
        if code < 200 {
            return;
        }
        let udp = st.flow.transport == Transport::Udp;
        let (state, linger, retransmit) = match (st.method, code) {
            // RFC 6026: Accepted, so INVITE retransmissions are absorbed and 2xx ACKs routed.
            (Method::Invite, 200..=299) => (ServerState::Accepted, t.t64(), None),
            // §17.2.1: Completed, Timer G (UDP) and H.
            (Method::Invite, _) => (ServerState::Completed, t.t64(), udp.then(|| (t.t1, now + t.t1))),
            // §17.2.2: Timer J.
            _ => (ServerState::Completed, if udp { t.t64() } else { Duration::ZERO }, None),
        };
        st.state = state;
        st.retransmit = retransmit;
        st.expires = now + linger;
        if let Some((_, at)) = retransmit {
            self.schedule(at, Timer::Server(key.clone()));
        }
        self.schedule(now + linger, Timer::Server(key.clone()));
    }

    // ----------------------------------------------------------------------------------------
    // Responses

    fn on_response(&mut self, now: Instant, flow: Flow, resp: &Checked<'_>) {
        let Some(branch) = resp.branch.as_deref() else {
            return self.drop_msg(flow, "response without branch".into());
        };
        let key = client_key(branch, resp.method);
        let Some(mut ct) = self.client.remove(&key) else {
            return self.drop_msg(flow, "stray response".into());
        };
        if ct.flow.side != flow.side {
            self.client.insert(key, ct);
            return self.drop_msg(flow, "response from the wrong side".into());
        }
        let code = resp.status().unwrap_or(500);
        match &ct.purpose {
            Purpose::Probe(idx) => {
                if code >= 200 {
                    let idx = *idx;
                    self.set_core(idx, true);
                } else {
                    self.client.insert(key, ct);
                }
                return;
            }
            Purpose::Cancel | Purpose::Local => {
                if code < 200 {
                    self.client.insert(key, ct);
                }
                return;
            }
            Purpose::Forward(_) => {}
        }
        let invite = ct.method == Method::Invite;
        let t = self.cfg.timers;
        // Transaction layer (§17.1.1, §17.1.2, RFC 6026).
        match ct.state {
            ClientState::Completed => {
                // A retransmitted final: re-ACK (INVITE), absorb.
                if let Some(ack) = ct.ack.clone() {
                    self.send(ct.flow, ack);
                }
                self.stats.retransmissions_absorbed += 1;
                self.client.insert(key, ct);
                return;
            }
            ClientState::Accepted if (200..300).contains(&code) => {
                // A 2xx retransmission: the UAS has not seen the ACK yet; pass it on (§13.3.1.4).
            }
            ClientState::Accepted => {
                self.client.insert(key, ct);
                return;
            }
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
            // Hop-by-hop: we already sent our own 100 Trying.
            self.client.insert(key.clone(), ct);
            if cancel_now {
                self.send_cancel(now, &key);
            }
            return;
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
                    let to = resp.msg.value(HeaderName::To).map(|v| v.to_vec());
                    ct.ack = build::cancel_or_ack(&ct.request, "ACK", to.as_deref(), self.cfg.limits.max_headers);
                    if let Some(ack) = ct.ack.clone() {
                        self.send(ct.flow, ack);
                    }
                    ct.expires = now + if reliable { Duration::ZERO } else { Duration::from_secs(32) };
                } else {
                    ct.expires = now + if reliable { Duration::ZERO } else { t.t4 };
                }
            }
            self.schedule(ct.expires, Timer::Client(key.clone()));
        }
        // Failover: a core that answers 503 before anything else is skipped (RFC 3263 §4.3 spirit).
        if code == 503
            && let Purpose::Forward(ctx) = &ct.purpose
            && ctx.core.is_some()
            && self.retry_next_core(now, &mut ct)
        {
            self.client.insert(key, ct);
            return;
        }
        self.relay_response(now, &mut ct, resp, code);
        self.client.insert(key.clone(), ct);
        if cancel_now {
            self.send_cancel(now, &key);
        }
    }

    /// Dialog/registration bookkeeping, then the response goes to the requester.
    fn relay_response(&mut self, now: Instant, ct: &mut ClientTxn, resp: &Checked<'_>, code: u16) {
        let Some(server) = ct.server.clone() else { return };
        let Purpose::Forward(ctx) = &mut ct.purpose else { return };
        let Some(st) = self.server.get(&server) else {
            return self.drop_msg(ct.flow, "response for a finished transaction".into());
        };
        let to_flow = st.flow;
        let method = ct.method;
        let mut dialog_token = ctx.dialog.clone();
        // Dialog state (§12.1.2, §12.2.1.2).
        if let Some(token) = ctx.dialog.clone() {
            if ctx.creates_dialog && (101..300).contains(&code) && resp.to_tag.is_some() {
                self.upsert_dialog(now, &token, ctx, to_flow, ct.flow, resp, code, method == Method::Invite);
            } else if ctx.creates_dialog && code >= 300 {
                if self.dialogs.get(&token).is_some_and(|d| !d.confirmed) {
                    self.remove_dialog(&token);
                }
                dialog_token = None;
            } else if method == Method::Bye && code >= 200 {
                self.remove_dialog(&token);
            } else if (200..300).contains(&code)
                && method.refreshes_target()
                && let Some(c) = build::contact_uri(&resp.msg)
                && let Some(d) = self.dialogs.get_mut(&token)
            {
                d.leg_mut(ct.flow.side).target = c;
            }
        }
        let contact = if method == Method::Register {
            self.registered_contacts(now, resp, ctx, code)
        } else if resp.msg.first(HeaderName::Contact).is_some() {
            if (300..400).contains(&code) && self.side_cfg(to_flow.side).hide {
                None
            } else {
                Some(self.contact_value(to_flow, dialog_token.as_deref()))
            }
        } else {
            None
        };
        let Some(st) = self.server.remove(&server) else { return };
        let data = self.build_response(resp, ct.flow.side, &st, contact);
        let reply_to = st.reply_to;
        self.server.insert(server.clone(), st);
        self.finish_server(now, &server, code, data.clone());
        self.send_reply(to_flow, reply_to, data);
        self.stats.responses_forwarded += 1;
    }

    #[allow(clippy::too_many_arguments)]
    fn upsert_dialog(
        &mut self,
        now: Instant,
        token: &str,
        ctx: &ForwardCtx,
        requester: Flow,
        responder: Flow,
        resp: &Checked<'_>,
        code: u16,
        invite: bool,
    ) {
        let target = build::contact_uri(&resp.msg);
        let confirmed = code >= 200;
        if let Some(d) = self.dialogs.get_mut(token) {
            let first_final = confirmed && !d.confirmed;
            let leg = d.leg_mut(responder.side);
            if let Some(t) = target {
                leg.target = t;
            }
            if confirmed {
                leg.route_set = build::record_routes(&resp.msg).into_iter().rev().collect();
                d.confirmed = true;
                d.expires = now + self.cfg.dialog_idle;
            }
            if invite && first_final {
                self.await_ack(now, token, responder, resp);
            }
            return;
        }
        let req_leg = Leg {
            flow: requester,
            target: ctx.requester_contact.clone().unwrap_or_default(),
            route_set: ctx.requester_route_set.clone(),
        };
        let resp_leg = Leg {
            flow: responder,
            target: target.unwrap_or_default(),
            // §12.1.2: the UAC's route set is the Record-Route list reversed.
            route_set: build::record_routes(&resp.msg).into_iter().rev().collect(),
        };
        let legs = match requester.side {
            Side::External => [req_leg, resp_leg],
            Side::Internal => [resp_leg, req_leg],
        };
        let expires = now + if confirmed { self.cfg.dialog_idle } else { Duration::from_secs(180) };
        let caller = requester.side;
        let mut call_ids = [ctx.requester_call_id.clone(), resp.call_id.to_vec()];
        if requester.side == Side::Internal {
            call_ids.swap(0, 1);
        }
        for side in [Side::External, Side::Internal] {
            let id = match side {
                Side::External => call_ids[0].clone(),
                Side::Internal => call_ids[1].clone(),
            };
            self.dialog_index.insert((side, id), token.to_string());
        }
        self.dialogs.insert(
            token.to_string(),
            Dialog {
                token: token.to_string(),
                legs,
                caller,
                call_ids,
                confirmed,
                expires,
                internal_host: ctx.internal_host.clone(),
                ack_wait: None,
            },
        );
        if invite && confirmed {
            self.await_ack(now, token, responder, resp);
        }
    }

    /// §13.3.1.4: the dialog's first 2xx to INVITE went to the caller; unless its ACK comes
    /// within 64·T1, the dialog ends and the callee (`responder`) gets a BYE. An INVITE flood
    /// that never ACKs cannot fill the dialog table this way.
    fn await_ack(&mut self, now: Instant, token: &str, responder: Flow, resp: &Checked<'_>) {
        let branch = self.new_branch();
        let Some(d) = self.dialogs.get(token) else { return };
        let leg = d.leg(responder.side);
        let adv = &self.side_cfg(responder.side).advertise;
        let bye = build::unacked_bye(adv, responder, &branch, &resp.msg, &leg.target, &leg.route_set, resp.cseq);
        let deadline = now + self.cfg.timers.t64();
        if let Some(d) = self.dialogs.get_mut(token) {
            d.ack_wait = Some(AckWait { deadline, flow: responder, branch, bye });
        }
        self.schedule(deadline, Timer::AckWait(token.to_string()));
    }

    fn ack_timeout(&mut self, now: Instant, token: String) {
        let Some(d) = self.dialogs.get_mut(&token) else { return };
        let Some(wait) = d.ack_wait.take_if(|w| w.deadline <= now) else { return };
        tracing::debug!(dialog = %token, "2xx never ACKed: dialog ended, BYE to the callee");
        self.remove_dialog(&token);
        self.stats.unacked_dialogs_ended += 1;
        self.start_client(now, wait.flow, Method::Bye, wait.bye, wait.branch, Purpose::Local, None);
    }

    /// REGISTER responses: the registrar's view (our token URIs) back to the UA's own Contacts,
    /// with the expiry the registrar granted; bindings follow the registrar.
    fn registered_contacts(
        &mut self,
        now: Instant,
        resp: &Checked<'_>,
        ctx: &ForwardCtx,
        code: u16,
    ) -> Option<Vec<u8>> {
        if code >= 300 {
            for t in &ctx.registration {
                if self.bindings.get(t).is_some_and(|b| !b.confirmed) {
                    self.bindings.remove(t);
                }
            }
            return None;
        }
        if code < 200 {
            return None;
        }
        let default_expires =
            resp.msg.value(HeaderName::Expires).and_then(|v| values::parse_u32_lenient(v).ok()).unwrap_or(3600);
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut seen = Vec::new();
        for h in resp.msg.all(HeaderName::Contact) {
            let v = resp.msg.unfolded(h);
            let Ok(elems) = values::split_commas(&v) else { continue };
            for r in elems {
                let elem = v.get(r).unwrap_or_default();
                let Ok(na) = values::name_addr(elem) else { continue };
                let uri_b = elem.get(na.uri.clone()).unwrap_or_default();
                let params = elem.get(na.params.clone()).unwrap_or_default();
                let Some(token) = uri::user_part(uri_b).and_then(|u| std::str::from_utf8(u).ok()).map(str::to_owned)
                else {
                    continue;
                };
                if !ctx.registration.contains(&token) {
                    // Another UA's binding of this AOR: not this UA's business, and it would leak.
                    continue;
                }
                let expires = values::param(params, "expires")
                    .and_then(|e| values::parse_u32_lenient(e).ok())
                    .unwrap_or(default_expires);
                let Some(b) = self.bindings.get_mut(&token) else { continue };
                b.confirmed = true;
                b.expires = now + Duration::from_secs(u64::from(expires) + 10);
                let mut e = Vec::with_capacity(b.contact.len() + params.len() + 2);
                e.push(b'<');
                e.extend_from_slice(&b.contact);
                e.push(b'>');
                e.extend_from_slice(params);
                out.push(e);
                seen.push(token);
            }
        }
        for t in &ctx.registration {
            if !seen.contains(t) {
                self.bindings.remove(t);
            }
        }
        (!out.is_empty()).then(|| out.join(&b", "[..]))
    }

    /// Moves a request whose core failed to the next core, reusing the server transaction.
    fn retry_next_core(&mut self, now: Instant, ct: &mut ClientTxn) -> bool {
        let Purpose::Forward(ctx) = &mut ct.purpose else { return false };
        let Some(next) = self.pick_core(&ctx.tried) else { return false };
        let Some(flow) = self.core_flow(next) else { return false };
        ctx.tried.push(next);
        ctx.core = Some(next);
        let old = ct.branch.clone();
        let branch = self.new_branch();
        let data = build::replace_bytes(&ct.request, old.as_bytes(), branch.as_bytes());
        let data = build::retarget_via(&data, &self.cfg.internal.advertise, ct.flow, flow);
        let purpose = std::mem::replace(&mut ct.purpose, Purpose::Cancel);
        // The old transaction is finished: mark it so it is dropped by the caller's timers.
        ct.state = ClientState::Completed;
        ct.retransmit = None;
        ct.expires = now;
        self.start_client(now, flow, ct.method, data, branch, purpose, ct.server.clone());
        true
    }

    fn remove_dialog(&mut self, token: &str) {
        if let Some(d) = self.dialogs.remove(token) {
            for side in [Side::External, Side::Internal] {
                let key = (side, d.call_id(side).to_vec());
                if self.dialog_index.get(&key).is_some_and(|t| t == token) {
                    self.dialog_index.remove(&key);
                }
            }
        }
    }

    fn set_core(&mut self, idx: usize, up: bool) {
        let Some(c) = self.cores.get_mut(idx) else { return };
        if c.up != up {
            c.up = up;
            let addr = c.target.addr;
            self.events.push_back(if up { Event::CoreUp { addr } } else { Event::CoreDown { addr } });
        }
    }

    // ----------------------------------------------------------------------------------------
    // Timers

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, _, timer))) = self.timers.pop() else { break };
            self.fire(now, timer);
        }
    }

    fn fire(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::Client(key) => self.client_timer(now, key),
            Timer::Server(key) => self.server_timer(now, key),
            Timer::Probe => self.probe(now),
            Timer::AckWait(token) => self.ack_timeout(now, token),
            Timer::Sweep => {
                let expired: Vec<String> =
                    self.dialogs.values().filter(|d| d.expires <= now).map(|d| d.token.clone()).collect();
                for t in expired {
                    self.remove_dialog(&t);
                }
                self.bindings.retain(|_, b| b.expires > now);
                self.schedule(now + SWEEP, Timer::Sweep);
            }
        }
    }

    fn client_timer(&mut self, now: Instant, key: String) {
        let t = self.cfg.timers;
        let Some(ct) = self.client.get_mut(&key) else { return };
        if ct.expires <= now {
            let Some(mut ct) = self.client.remove(&key) else { return };
            if matches!(ct.state, ClientState::Calling | ClientState::Proceeding) {
                self.client_timed_out(now, &mut ct);
            }
            return;
        }
        if let Some((iv, at)) = ct.retransmit
            && at <= now
        {
            // Timer A doubles; Timer E doubles up to T2 (§17.1.1.2, §17.1.2.2).
            let next = if ct.method == Method::Invite { iv * 2 } else { (iv * 2).min(t.t2) };
            ct.retransmit = Some((next, now + next));
            let (flow, data) = (ct.flow, ct.request.clone());
            self.send(flow, data);
            self.stats.retransmissions_sent += 1;
            self.schedule(now + next, Timer::Client(key));
        }
    }

    /// Timer B / F: no final response. Probes mark the core down; forwarded requests try the
    /// next core or get 408 (§16.8).
    fn client_timed_out(&mut self, now: Instant, ct: &mut ClientTxn) {
        self.client_failed(now, ct, 408, "Request Timeout");
    }

    /// A client transaction that will get no response: the next core when it was a core that
    /// failed and nothing was relayed yet, otherwise `code` to the requester.
    fn client_failed(&mut self, now: Instant, ct: &mut ClientTxn, code: u16, reason: &'static str) {
        match &ct.purpose {
            Purpose::Probe(idx) => {
                let idx = *idx;
                self.set_core(idx, false);
            }
            Purpose::Cancel | Purpose::Local => {}
            Purpose::Forward(ctx) => {
                if let Some(core) = ctx.core {
                    if self.cfg.probe_interval.is_some() {
                        self.set_core(core, false);
                    }
                    if ct.state == ClientState::Calling && self.retry_next_core(now, ct) {
                        return;
                    }
                }
                if let Some(sk) = ct.server.clone() {
                    if ct.method == Method::Invite
                        && let Some(d) = match &ct.purpose {
                            Purpose::Forward(c) if c.creates_dialog => c.dialog.clone(),
                            _ => None,
                        }
                        && self.dialogs.get(&d).is_some_and(|d| !d.confirmed)
                    {
                        self.remove_dialog(&d);
                    }
                    self.answer_server(now, &sk, code, reason);
                }
            }
        }
    }

    /// The transport reported that `flow` is dead (an ICMP unreachable for a UDP peer, a reset
    /// or refused TCP connection). RFC 3261 §16.9 / §17.1.4: every client transaction waiting on
    /// it fails at once as if it got a 503 — the next core, or a 503 to the requester; toward a
    /// registered UA's flow, RFC 5626 §5.3's 430 Flow Failed — instead of retransmitting until
    /// Timer B/F.
    pub fn handle_transport_error(&mut self, now: Instant, flow: Flow) {
        let same = |f: &Flow| f.side == flow.side && f.transport == flow.transport && f.remote == flow.remote;
        let keys: Vec<String> = self
            .client
            .iter()
            .filter(|(_, ct)| same(&ct.flow) && matches!(ct.state, ClientState::Calling | ClientState::Proceeding))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        self.stats.transport_errors += 1;
        tracing::debug!(remote = %flow.remote, side = flow.side.as_str(), transactions = keys.len(), "transport error");
        for key in keys {
            let Some(mut ct) = self.client.remove(&key) else { continue };
            let to_ua_flow = matches!(&ct.purpose, Purpose::Forward(c) if c.to_binding);
            let (code, reason) = if to_ua_flow { (430, "Flow Failed") } else { (503, "Service Unavailable") };
            self.client_failed(now, &mut ct, code, reason);
        }
    }

    fn server_timer(&mut self, now: Instant, key: ServerKey) {
        let t = self.cfg.timers;
        let Some(st) = self.server.get_mut(&key) else { return };
        if st.expires <= now {
            self.server.remove(&key);
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
                let f = st.flow;
                self.send(f, r);
                self.stats.retransmissions_sent += 1;
            }
            self.schedule(now + next, Timer::Server(key));
        }
    }

    fn probe(&mut self, now: Instant) {
        let Some(interval) = self.cfg.probe_interval else { return };
        for idx in 0..self.cores.len() {
            let Some(flow) = self.core_flow(idx) else { continue };
            let branch = self.new_branch();
            let tag = self.random_hex();
            let call_id = self.random_hex();
            let data = build::options_probe(&self.cfg.internal.advertise, flow, &branch, &tag, &call_id);
            self.start_client(now, flow, Method::Options, data, branch, Purpose::Probe(idx), None);
        }
        self.schedule(now + interval, Timer::Probe);
    }
}
