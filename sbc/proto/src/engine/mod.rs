//! The proxy engine: a transaction-stateful, dialog-aware SIP proxy between two sides that
//! hides each side's topology from the other (RFC 3261 §16, §17). Sans-IO: the daemon feeds it
//! datagrams and framed stream messages with the current time, and drains [`Engine::poll_output`]
//! (what to send, what happened, what the guard asks for, when to wake it next).
//!
//! The engine is the coordinator: it routes, and it drives the layers that own the state —
//! [`crate::transaction::Transactions`] (RFC 3261 §17), [`crate::dialog::Dialogs`] (dialogs and
//! registrations), [`crate::topology::Topology`] (every hiding rule) — and two seams, the
//! [`Guard`] (sees every request and every final response, keeps its own state and timers,
//! emits actions) and the [`MediaHook`] (sees offers, answers and dialog ends).
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
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dialog::{AckWait, Dialog, Dialogs, ForwardCtx, Leg};
use crate::sip::edit::reply;
use crate::sip::framer::{Datagram, Limits, frame_datagram};
use crate::sip::message::{HeaderName, Message};
use crate::sip::sanity::{self, Checked};
use crate::sip::uri::{self, SipUri, Transport};
use crate::sip::{Method, Reaction, SipError, values};
use crate::topology::{Forward, Requester, Settings, SideView, Topology};
use crate::transaction::{
    ClientState, ClientStep, ClientTxn, Expired, Outgoing, Purpose, ServerKey, ServerState, ServerTxn, Timers,
    Transactions, client_key,
};

pub use crate::dialog::DialogEnd;
pub use crate::flow::{Flow, Side, Transmit};
pub use timer::Timer;

/// The methods the SBC relays, for `Allow` in its own answers.
const ALLOW: &[u8] =
    b"INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, PRACK, UPDATE, INFO, MESSAGE, SUBSCRIBE, NOTIFY, REFER";

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
    /// A dialog ended (its token, and why).
    DialogEnded {
        dialog: String,
        why: DialogEnd,
    },
}

/// The guard seam: the userspace allowlist, rate limits and bans plug in here. It is set once
/// and keeps its state (an allowlist reload changes what it reads, not the guard), sees every
/// request before routing and every final response sent to a requester, and may ask the
/// daemon to act (e.g. push a ban into XDP) and to be woken at a time of its own.
pub trait Guard: Send {
    /// Every request, before anything else looks at it (retransmissions excepted).
    fn admit(&mut self, now: Instant, flow: &Flow, req: &Checked<'_>) -> Admit;
    /// Every final response sent to a requester: relayed from the far side, or the SBC's own
    /// (a sanity rejection, a routing failure, a timeout, the guard's own refusal).
    fn on_final(&mut self, _now: Instant, _outcome: &Final<'_>) {}
    /// What the guard asks the daemon to do.
    fn poll_action(&mut self) -> Option<GuardAction> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _now: Instant) {}
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    Accept,
    Reject { code: u16, reason: &'static str },
    Drop,
}

/// A final response on its way to the requester, for the guard.
#[derive(Debug)]
pub struct Final<'a> {
    /// Where the request came from (and the response goes).
    pub requester: Flow,
    pub method: Method,
    pub code: u16,
    /// True when the SBC answered itself (408, 503, 481...), false when it relays the far side's.
    pub by_sbc: bool,
    /// The request's To header and Call-ID as the requester sent them.
    pub to: &'a [u8],
    pub call_id: &'a [u8],
    /// The dialog the request belongs to or created.
    pub dialog: Option<&'a str>,
}

/// What the guard asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardAction {
    /// Drop everything from `addr`/`prefix_len` until `until` (in XDP where attached, and in
    /// userspace), for `reason`.
    Ban { addr: std::net::IpAddr, prefix_len: u8, until: Instant, reason: String },
}

/// Admits everything (the default until the guard exists).
#[derive(Debug, Default)]
pub struct AllowAll;
impl Guard for AllowAll {
    fn admit(&mut self, _: Instant, _: &Flow, _: &Checked<'_>) -> Admit {
        Admit::Accept
    }
}

/// What the engine asks of the daemon, in order: send, tell, act; then when to wake it.
#[derive(Debug)]
pub enum Output {
    Transmit(Transmit),
    Event(Event),
    Guard(GuardAction),
    /// Nothing else pending: call [`Engine::handle_timeout`] at this time.
    Timeout(Instant),
}

/// RFC 3264's roles of a body crossing the SBC, as far as the engine can tell them: a body in
/// a request is an offer (in an ACK: the answer to an offer made in a 2xx); a body in a
/// response is the answer when its request carried one, else an offer (answered in the ACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRole {
    Offer,
    Answer,
}

/// A message body crossing from one side to the other, for the media seam.
#[derive(Debug)]
pub struct BodyCrossing<'a> {
    /// The dialog (its token) the message belongs to or creates; None outside any dialog.
    pub dialog: Option<&'a str>,
    pub from: Side,
    pub to: Side,
    pub method: Method,
    /// The status of a response; None for a request.
    pub status: Option<u16>,
    pub role: BodyRole,
    pub content_type: &'a [u8],
    pub body: &'a [u8],
}

/// The media seam: SDP offer/answer rewriting (media anchoring) and the release of what a
/// dialog holds. Sans-IO like the engine: the media relay's sockets live in the daemon.
pub trait MediaHook: Send {
    /// A replacement body, or None to forward it unchanged.
    fn on_body(&mut self, now: Instant, crossing: &BodyCrossing<'_>) -> Option<Vec<u8>>;
    /// The dialog ended: release its media.
    fn on_dialog_end(&mut self, now: Instant, dialog: &str, why: DialogEnd);
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
    topology: Topology,
    guard: Box<dyn Guard>,
    media: Option<Box<dyn MediaHook>>,
    /// RFC 3261 §17: every server and client transaction, and their timers.
    txns: Transactions,
    dialogs: Dialogs,
    cores: Vec<CoreState>,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    timer_seq: u64,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    rng: u64,
    stats: Stats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("server", &self.txns.server_len())
            .field("client", &self.txns.client_len())
            .field("dialogs", &self.dialogs.len())
            .field("bindings", &self.dialogs.bindings_len())
            .finish()
    }
}

const SWEEP: Duration = Duration::from_secs(5);

impl Engine {
    pub fn new(cfg: Config, now: Instant) -> Engine {
        let (cfg_timers, cfg_max_headers) = (cfg.timers, cfg.limits.max_headers);
        let external_addrs: Vec<std::net::IpAddr> =
            cfg.external.udp.iter().chain(cfg.external.tcp.iter()).map(SocketAddr::ip).collect();
        let topology = Topology::new(Settings {
            secret: &cfg.secret,
            external: SideView { advertise: cfg.external.advertise.clone(), hide: cfg.external.hide },
            internal: SideView { advertise: cfg.internal.advertise.clone(), hide: cfg.internal.hide },
            external_addrs: &external_addrs,
            public_domains: &cfg.public_domains,
            strip_headers: cfg.strip_headers.clone(),
            strip_credentials: cfg.strip_credentials,
        });
        let cores = cfg.cores.iter().map(|t| CoreState { target: *t, up: true }).collect();
        let mut e = Engine {
            rng: cfg.seed | 1,
            cfg,
            topology,
            guard: Box::new(AllowAll),
            media: None,
            txns: Transactions::new(cfg_timers, cfg_max_headers),
            dialogs: Dialogs::default(),
            cores,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
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
    pub fn set_media_hook(&mut self, hook: Box<dyn MediaHook>) {
        self.media = Some(hook);
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// The counters, the transaction layer's retransmission counts included.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.retransmissions_sent += self.txns.retransmissions_sent;
        s.retransmissions_absorbed += self.txns.retransmissions_absorbed;
        s
    }
    /// (server transactions, client transactions, dialogs, registrations)
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        (self.txns.server_len(), self.txns.client_len(), self.dialogs.len(), self.dialogs.bindings_len())
    }
    pub fn core_up(&self, idx: usize) -> Option<bool> {
        self.cores.get(idx).map(|c| c.up)
    }

    /// The one output of the engine: transmits first, then events, then the guard's actions,
    /// then the next time to call [`Engine::handle_timeout`] (None: no timer at all).
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(t) = self.out.pop_front() {
            return Some(Output::Transmit(t));
        }
        if let Some(e) = self.events.pop_front() {
            return Some(Output::Event(e));
        }
        if let Some(a) = self.guard.poll_action() {
            return Some(Output::Guard(a));
        }
        self.next_timeout().map(Output::Timeout)
    }

    /// Unit tests read transmits and events apart.
    #[cfg(test)]
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }
    #[cfg(test)]
    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn next_timeout(&self) -> Option<Instant> {
        [self.timers.peek().map(|Reverse((t, _, _))| *t), self.txns.poll_timeout(), self.guard.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// One UDP datagram received on `flow`.
    pub fn handle_datagram(&mut self, now: Instant, flow: Flow, data: &[u8]) {
        match frame_datagram(data, &self.cfg.limits) {
            Datagram::Keepalive => {}
            Datagram::Message(msg) => self.handle_message(now, flow, msg),
            Datagram::Invalid { msg: Some(msg), error } => self.reject(now, flow, &msg, &error),
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
                self.reject(now, flow, &msg, &error);
            }
        }
    }

    fn drop_msg(&mut self, flow: Flow, reason: String) {
        self.stats.dropped += 1;
        self.events.push_back(Event::Dropped { flow, reason });
    }

    /// Answers a bad request with the RFC's code, or drops what cannot be answered.
    fn reject(&mut self, now: Instant, flow: Flow, msg: &Message<'_>, error: &SipError) {
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
                let outcome = Final {
                    requester: flow,
                    method: msg.method(),
                    code,
                    by_sbc: true,
                    to: msg.value(HeaderName::To).unwrap_or_default(),
                    call_id: msg.value(HeaderName::CallId).unwrap_or_default(),
                    dialog: None,
                };
                self.guard.on_final(now, &outcome);
                self.stats.rejected += 1;
                self.events.push_back(Event::Rejected { flow, code, error: error.to_string() });
            }
            _ => self.drop_msg(flow, error.to_string()),
        }
    }

    fn local_reply(
        &mut self,
        now: Instant,
        flow: Flow,
        req: &Checked<'_>,
        code: u16,
        reason: &'static str,
        extra: &[(&str, &[u8])],
    ) {
        if req.method == Method::Ack {
            return;
        }
        tracing::debug!(code, reason, "answered locally");
        let tag = self.random_hex();
        self.send(flow, reply(&req.msg, flow.remote, code, reason, Some(tag.as_bytes()), extra));
        if code >= 200 {
            let outcome = Final {
                requester: flow,
                method: req.method,
                code,
                by_sbc: true,
                to: req.msg.value(HeaderName::To).unwrap_or_default(),
                call_id: &req.call_id,
                dialog: None,
            };
            self.guard.on_final(now, &outcome);
        }
        self.stats.local_replies += 1;
        if code >= 300 {
            self.events.push_back(Event::Rejected { flow, code, error: reason.to_string() });
        }
    }

    fn send(&mut self, flow: Flow, data: Vec<u8>) {
        self.out.push_back(Transmit { flow, data, reconnect: None });
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
                let h = self.topology.masker().token(
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
                // §17.2.1: the ACK for a non-2xx final is hop-by-hop, absorbed there.
                if self.txns.absorb_ack(now, &key, flow.transport) {
                    return;
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
        // §17.2.1/§17.2.2: a retransmission is answered with the last response, if any.
        if self.txns.absorb_request(&key, &mut self.out) {
            return;
        }
        match self.guard.admit(now, &flow, req) {
            Admit::Accept => {}
            Admit::Reject { code, reason } => return self.local_reply(now, flow, req, code, reason, &[]),
            Admit::Drop => return self.drop_msg(flow, "refused by guard".into()),
        }
        if req.method == Method::Options && req.to_tag.is_none() && self.addressed_to_sbc(req, flow) {
            // RFC 3261 §11.2: an OPTIONS naming the SBC itself (a keepalive, a health check) is
            // answered by the SBC, not relayed to the core.
            return self.local_reply(now, flow, req, 200, "OK", &[("Allow", ALLOW), ("Accept", b"application/sdp")]);
        }
        if self.txns.server_len() >= self.cfg.max_transactions {
            self.events.push_back(Event::Overload { what: "transactions" });
            return self.local_reply(now, flow, req, 503, "Service Unavailable", &[("Retry-After", b"5")]);
        }
        let route = match self.route_request(req, flow) {
            Ok(r) => r,
            Err((code, reason)) => return self.local_reply(now, flow, req, code, reason, &[]),
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
        self.txns.insert_server(key.clone(), st);
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
        self.topology.hides_host(host).then(|| hostport.to_vec())
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
            if self.dialogs.contains(user) {
                return Ok(Route::Dialog(user.to_string()));
            }
            if let Some(b) = self.dialogs.binding(user)
                && b.side != flow.side
            {
                return Ok(Route::Binding(user.to_string()));
            }
        }
        if req.to_tag.is_some() {
            // Not sent to our Contact: find the dialog by the Call-ID this side knows.
            if let Some(token) = self.dialogs.by_call_id(flow.side, &req.call_id) {
                return Ok(Route::Dialog(token.to_owned()));
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
                let b = self.dialogs.binding(token).ok_or((404, "Not Found"))?;
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
            ctx.dialog = Some(
                self.topology.masker().token(b'd', &[&req.call_id, req.from_tag.as_deref().unwrap_or_default(), &salt]),
            );
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
        let body = self.media_body(now, req, ctx.dialog.as_deref(), flow.side, to_flow.side, None);
        ctx.offer_in_request = !req.msg.body().is_empty();
        let data = self.topology.build_request(
            req,
            Forward {
                from: flow.side,
                to: to_flow,
                ruri: ruri.as_deref(),
                route_set: &route_set,
                contact,
                branch: &branch,
                call_id_native: ctx.call_id_native,
                restore_to_host: restore_to_host.as_deref(),
                body,
            },
        );
        tracing::debug!(to = %to_flow.remote, to_side = to_flow.side.as_str(), %branch, "request forwarded");
        let purpose = Purpose::Forward(Box::new(ctx));
        self.start_client(
            now,
            Outgoing { flow: to_flow, method: req.method, data, branch, purpose, server: Some(server) },
        );
        self.stats.requests_forwarded += 1;
        Ok(())
    }

    /// A new client transaction (the transaction layer sends and times it).
    fn start_client(&mut self, now: Instant, req: Outgoing) -> String {
        let probe_timeout = self.cfg.probe_timeout;
        self.txns.start_client(now, req, probe_timeout, &mut self.out)
    }

    /// Our Contact toward a flow's side: the dialog token, or no user part.
    fn contact_value(&self, to: Flow, token: Option<&str>) -> Vec<u8> {
        self.topology.contact(to, token)
    }

    /// The media seam's replacement for a body crossing sides (None: unchanged, or no body).
    /// `answered_offer`: for a response, whether its request carried a body.
    fn media_body(
        &mut self,
        now: Instant,
        c: &Checked<'_>,
        dialog: Option<&str>,
        from: Side,
        to: Side,
        answered_offer: Option<bool>,
    ) -> Option<Vec<u8>> {
        let hook = self.media.as_mut()?;
        let body = c.msg.body();
        if body.is_empty() {
            return None;
        }
        let role = match (c.status(), answered_offer) {
            (None, _) if c.method == Method::Ack => BodyRole::Answer,
            (None, _) => BodyRole::Offer,
            (Some(_), Some(true)) => BodyRole::Answer,
            (Some(_), _) => BodyRole::Offer,
        };
        let content_type = c.msg.value(HeaderName::ContentType).unwrap_or_default();
        let crossing =
            BodyCrossing { dialog, from, to, method: c.method, status: c.status(), role, content_type, body };
        hook.on_body(now, &crossing)
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
                let token = self.topology.masker().token(b'r', &[&aor, &contact]);
                if !self.dialogs.has_binding(&token) && self.dialogs.bindings_len() >= self.cfg.max_registrations {
                    self.events.push_back(Event::Overload { what: "registrations" });
                    return Err((503, "Service Unavailable"));
                }
                let pending = now + self.cfg.timers.t64();
                self.dialogs.upsert_binding(&token, flow.side, contact, flow, pending);
                let mut e = self.topology.contact(to, Some(&token));
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
        let body = self.media_body(now, req, Some(&route), flow.side, to.flow.side, None);
        let data = self.topology.build_request(
            req,
            Forward {
                from: flow.side,
                to: to.flow,
                ruri: Some(&to.target),
                route_set: &to.route_set,
                contact,
                branch: &branch,
                call_id_native: caller,
                restore_to_host: restore.as_deref(),
                body,
            },
        );
        self.send(to.flow, data);
        self.stats.requests_forwarded += 1;
    }

    /// §9.2: `cancel_key` is the CANCEL's own transaction; the INVITE it cancels has the same
    /// branch and sent-by (§17.2.3).
    fn on_cancel(&mut self, now: Instant, flow: Flow, req: &Checked<'_>, cancel_key: ServerKey) {
        let invite_key = ServerKey { method: Method::Invite, ..cancel_key.clone() };
        if self.txns.absorb_request(&cancel_key, &mut self.out) {
            return;
        }
        let Some(st) = self.txns.server(&invite_key) else {
            return self.local_reply(now, flow, req, 481, "Call/Transaction Does Not Exist", &[]);
        };
        // §9.2: the CANCEL is answered hop-by-hop; the INVITE will get its 487 from the far end.
        let tag = st.local_tag.clone();
        let proceeding = st.state == ServerState::Proceeding;
        let client = st.client.clone();
        let ok = reply(&req.msg, flow.remote, 200, "OK", Some(tag.as_bytes()), &[]);
        self.send(flow, ok.clone());
        let linger = if flow.transport == Transport::Udp { self.cfg.timers.t64() } else { Duration::ZERO };
        self.txns.insert_server(
            cancel_key,
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
        if !proceeding {
            return;
        }
        if let Some(ck) = client
            && let Some(ct) = self.txns.client_mut(&ck)
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
        self.txns.cancel(now, invite_key, &mut self.out);
    }

    /// Finishes a server transaction with a response the SBC makes itself (408, 503...).
    fn answer_server(&mut self, now: Instant, key: &ServerKey, code: u16, reason: &str) {
        let Some(st) = self.txns.server(key) else { return };
        let resp = build::local_response(st, code, reason);
        let outcome = Final {
            requester: st.flow,
            method: st.method,
            code,
            by_sbc: true,
            to: &st.to,
            call_id: &st.call_id,
            dialog: None,
        };
        self.guard.on_final(now, &outcome);
        self.txns.respond(now, key, code, resp, &mut self.out);
        self.stats.local_replies += 1;
    }

    // ----------------------------------------------------------------------------------------
    // Responses

    fn on_response(&mut self, now: Instant, flow: Flow, resp: &Checked<'_>) {
        let Some(branch) = resp.branch.as_deref() else {
            return self.drop_msg(flow, "response without branch".into());
        };
        let key = client_key(branch, resp.method);
        let code = resp.status().unwrap_or(500);
        match self.txns.on_response(now, &key, flow.side, code, &resp.msg, &mut self.out) {
            ClientStep::Stray => self.drop_msg(flow, "stray response".into()),
            ClientStep::WrongSide => self.drop_msg(flow, "response from the wrong side".into()),
            ClientStep::Absorbed | ClientStep::Ignored => {}
            ClientStep::ProbeAnswered(idx) => self.set_core(idx, true),
            // Hop-by-hop: we already sent our own 100 Trying.
            ClientStep::Trying { cancel_now } => {
                if cancel_now {
                    self.send_cancel(now, &key);
                }
            }
            ClientStep::Relay { cancel_now } => {
                // Failover: a core that answers 503 before anything else is skipped (RFC 3263 §4.3 spirit).
                if code == 503 && self.fail_over(now, &key) {
                    return;
                }
                self.relay_response(now, &key, resp, code);
                if cancel_now {
                    self.send_cancel(now, &key);
                }
            }
        }
    }

    /// A core answered 503 to a request nothing was relayed for yet: the request moves to the
    /// next core under a new branch; the old transaction stays to absorb retransmissions.
    fn fail_over(&mut self, now: Instant, key: &str) -> bool {
        let Some(ct) = self.txns.client(key) else { return false };
        let Some(next) = self.next_core(&ct.purpose) else { return false };
        let (method, flow, request, branch) = (ct.method, ct.flow, ct.request.clone(), ct.branch.clone());
        let Some((purpose, server)) = self.txns.detach(key) else { return false };
        self.restart_on_core(now, next, method, flow, &request, &branch, purpose, server);
        true
    }

    /// Dialog/registration bookkeeping, then the response goes to the requester. The forwarding
    /// context is lent out of the client transaction for the duration.
    fn relay_response(&mut self, now: Instant, key: &str, resp: &Checked<'_>, code: u16) {
        let Some(ct) = self.txns.client_mut(key) else { return };
        let (from_flow, method, server) = (ct.flow, ct.method, ct.server.clone());
        let Some(server) = server else { return };
        let Purpose::Forward(ctx) = std::mem::replace(&mut ct.purpose, Purpose::Local) else { return };
        self.relay_with(now, &ctx, from_flow, method, &server, resp, code);
        if let Some(ct) = self.txns.client_mut(key) {
            ct.purpose = Purpose::Forward(ctx);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn relay_with(
        &mut self,
        now: Instant,
        ctx: &ForwardCtx,
        from_flow: Flow,
        method: Method,
        server: &ServerKey,
        resp: &Checked<'_>,
        code: u16,
    ) {
        let Some(st) = self.txns.server(server) else {
            return self.drop_msg(from_flow, "response for a finished transaction".into());
        };
        let to_flow = st.flow;
        let mut dialog_token = ctx.dialog.clone();
        // Dialog state (§12.1.2, §12.2.1.2).
        if let Some(token) = ctx.dialog.clone() {
            if ctx.creates_dialog && (101..300).contains(&code) && resp.to_tag.is_some() {
                self.upsert_dialog(now, &token, ctx, to_flow, from_flow, resp, code, method == Method::Invite);
            } else if ctx.creates_dialog && code >= 300 {
                self.end_dialog_unconfirmed(now, &token);
                dialog_token = None;
            } else if method == Method::Bye && code >= 200 {
                self.end_dialog(now, &token, DialogEnd::Bye);
            } else if (200..300).contains(&code)
                && method.refreshes_target()
                && let Some(c) = build::contact_uri(&resp.msg)
                && let Some(d) = self.dialogs.get_mut(&token)
            {
                d.leg_mut(from_flow.side).target = c;
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
        let body = self.media_body(
            now,
            resp,
            dialog_token.as_deref(),
            from_flow.side,
            to_flow.side,
            Some(ctx.offer_in_request),
        );
        let Some(st) = self.txns.server(server) else { return };
        let requester = Requester {
            flow: st.flow,
            vias: &st.vias,
            from: &st.from,
            to: &st.to,
            call_id: &st.call_id,
            record_route: &st.record_route,
        };
        let data = self.topology.build_response(resp, from_flow.side, &requester, contact, body);
        if code >= 200 {
            let outcome = Final {
                requester: st.flow,
                method,
                code,
                by_sbc: false,
                to: &st.to,
                call_id: &st.call_id,
                dialog: dialog_token.as_deref(),
            };
            self.guard.on_final(now, &outcome);
        }
        self.txns.respond(now, server, code, data, &mut self.out);
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
        self.dialogs.insert(Dialog {
            token: token.to_string(),
            legs,
            caller,
            call_ids,
            confirmed,
            expires,
            internal_host: ctx.internal_host.clone(),
            ack_wait: None,
        });
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
        self.end_dialog(now, &token, DialogEnd::Unacknowledged);
        self.stats.unacked_dialogs_ended += 1;
        let bye = Outgoing {
            flow: wait.flow,
            method: Method::Bye,
            data: wait.bye,
            branch: wait.branch,
            purpose: Purpose::Local,
            server: None,
        };
        self.start_client(now, bye);
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
            self.dialogs.drop_unconfirmed_bindings(&ctx.registration);
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
                let Some(b) = self.dialogs.binding_mut(&token) else { continue };
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
                self.dialogs.remove_binding(t);
            }
        }
        (!out.is_empty()).then(|| out.join(&b", "[..]))
    }

    /// The next untried core for a request forwarded to a core, if one is up (or assumed up).
    fn next_core(&self, purpose: &Purpose) -> Option<(usize, Flow)> {
        let Purpose::Forward(ctx) = purpose else { return None };
        ctx.core?;
        let next = self.pick_core(&ctx.tried)?;
        Some((next, self.core_flow(next)?))
    }

    /// Sends a request whose core failed to core `next` on a new client transaction (new
    /// branch, our Via re-pointed), for the same server transaction.
    #[allow(clippy::too_many_arguments)]
    fn restart_on_core(
        &mut self,
        now: Instant,
        next: (usize, Flow),
        method: Method,
        old_flow: Flow,
        request: &[u8],
        old_branch: &str,
        mut purpose: Purpose,
        server: Option<ServerKey>,
    ) {
        let (idx, flow) = next;
        if let Purpose::Forward(ctx) = &mut purpose {
            ctx.tried.push(idx);
            ctx.core = Some(idx);
        }
        let branch = self.new_branch();
        let data = build::replace_bytes(request, old_branch.as_bytes(), branch.as_bytes());
        let data = build::retarget_via(&data, &self.cfg.internal.advertise, old_flow, flow);
        self.start_client(now, Outgoing { flow, method, data, branch, purpose, server });
    }

    /// Ends a dialog (the dialog layer's one place) and tells the media seam and the daemon.
    fn end_dialog(&mut self, now: Instant, token: &str, why: DialogEnd) {
        self.dialogs.end(token, why);
        self.report_ended(now);
    }

    fn end_dialog_unconfirmed(&mut self, now: Instant, token: &str) {
        self.dialogs.end_unconfirmed(token);
        self.report_ended(now);
    }

    fn report_ended(&mut self, now: Instant) {
        while let Some((token, why)) = self.dialogs.poll_ended() {
            tracing::debug!(dialog = %token, ?why, "dialog ended");
            if let Some(m) = self.media.as_mut() {
                m.on_dialog_end(now, &token, why);
            }
            self.events.push_back(Event::DialogEnded { dialog: token, why });
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

    /// Runs every timer due at `now`: the transaction layer's (retransmissions, ends) first,
    /// then the engine's own (probes, ACK waits, the sweep).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.guard.poll_timeout().is_some_and(|t| t <= now) {
            self.guard.handle_timeout(now);
        }
        for Expired(ct) in self.txns.handle_timeout(now, &mut self.out) {
            self.client_timed_out(now, ct);
        }
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
            Timer::Probe => self.probe(now),
            Timer::AckWait(token) => self.ack_timeout(now, token),
            Timer::Sweep => {
                self.dialogs.expire(now);
                self.report_ended(now);
                self.schedule(now + SWEEP, Timer::Sweep);
            }
        }
    }

    /// Timer B / F: no final response. Probes mark the core down; forwarded requests try the
    /// next core or get 408 (§16.8).
    fn client_timed_out(&mut self, now: Instant, ct: ClientTxn) {
        self.client_failed(now, ct, 408, "Request Timeout");
    }

    /// A client transaction that will get no response: the next core when it was a core that
    /// failed and nothing was relayed yet, otherwise `code` to the requester.
    fn client_failed(&mut self, now: Instant, ct: ClientTxn, code: u16, reason: &'static str) {
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
                    if ct.state == ClientState::Calling
                        && let Some(next) = self.next_core(&ct.purpose)
                    {
                        let ClientTxn { method, flow, request, branch, purpose, server, .. } = ct;
                        return self.restart_on_core(now, next, method, flow, &request, &branch, purpose, server);
                    }
                }
                if let Some(sk) = ct.server.clone() {
                    if ct.method == Method::Invite
                        && let Some(d) = match &ct.purpose {
                            Purpose::Forward(c) if c.creates_dialog => c.dialog.clone(),
                            _ => None,
                        }
                    {
                        self.end_dialog_unconfirmed(now, &d);
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
        let keys = self.txns.waiting_on(flow);
        if keys.is_empty() {
            return;
        }
        self.stats.transport_errors += 1;
        tracing::debug!(remote = %flow.remote, side = flow.side.as_str(), transactions = keys.len(), "transport error");
        for key in keys {
            let Some(ct) = self.txns.take_client(&key) else { continue };
            let to_ua_flow = matches!(&ct.purpose, Purpose::Forward(c) if c.to_binding);
            let (code, reason) = if to_ua_flow { (430, "Flow Failed") } else { (503, "Service Unavailable") };
            self.client_failed(now, ct, code, reason);
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
            let probe =
                Outgoing { flow, method: Method::Options, data, branch, purpose: Purpose::Probe(idx), server: None };
            self.start_client(now, probe);
        }
        self.schedule(now + interval, Timer::Probe);
    }
}
