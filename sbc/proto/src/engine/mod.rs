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
mod config;
#[cfg(test)]
mod nat_tests;
mod request;
mod response;
mod seams;
#[cfg(test)]
mod shard_tests;
pub mod steer;
#[cfg(test)]
mod tests;
mod timer;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dialog::{AckWait, Dialog, Dialogs, ForwardCtx, Leg};
use crate::nat;
use crate::registration::{RegConfig, Registering, Registrations};
use crate::sip::edit::reply;
use crate::sip::framer::{Datagram, frame_datagram};
use crate::sip::message::{HeaderName, Message};
use crate::sip::sanity::{self, Checked};
use crate::sip::uri::{self, SipUri, Transport};
use crate::sip::{Method, Reaction, SipError, values};
use crate::topology::{Forward, Masker, Requester, Settings, SideView, Topology};
use crate::transaction::{
    ClientState, ClientStep, ClientTxn, Expired, Outgoing, Purpose, ServerKey, ServerState, ServerTxn, Transactions,
    client_key,
};

pub use crate::dialog::DialogEnd;
pub use crate::flow::{Flow, Side, Transmit};
pub use crate::nat::NatMode;
pub use crate::topology::Shard;
pub use config::{Config, CoreTarget, NatConfig, SideConfig};
pub use seams::{Admit, AllowAll, BodyCrossing, BodyRole, BodyVerdict, Final, Guard, GuardAction, MediaHook};
pub use timer::Timer;

/// The methods the SBC relays, for `Allow` in its own answers.
const ALLOW: &[u8] =
    b"INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, PRACK, UPDATE, INFO, MESSAGE, SUBSCRIBE, NOTIFY, REFER";

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

/// What the engine asks of the daemon, in order: send, tell, act; then when to wake it.
#[derive(Debug)]
pub enum Output {
    Transmit(Transmit),
    Event(Event),
    Guard(GuardAction),
    /// Nothing else pending: call [`Engine::handle_timeout`] at this time.
    Timeout(Instant),
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
    /// REGISTERs sent on to a registrar, and refreshes the registration cache answered itself.
    pub registers_forwarded: u64,
    pub registers_absorbed: u64,
    /// OPTIONS keepalive pings to UAs behind NAT, those unanswered, and the bindings that ended
    /// because of them (or of a transport error on their flow).
    pub nat_pings_sent: u64,
    pub nat_pings_unanswered: u64,
    pub registrations_lost: u64,
    /// New requests refused with 503 + Retry-After while the daemon said it was overloaded
    /// ([`Engine::set_overload`]).
    pub overload_shed: u64,
}

impl Stats {
    /// Adds `o`'s counters to these (the daemon sums its shards' engines). The destructuring
    /// names every field, so a new counter cannot be left out of the sum.
    pub fn add(&mut self, o: &Stats) {
        let Stats {
            requests_in,
            responses_in,
            requests_forwarded,
            responses_forwarded,
            local_replies,
            retransmissions_absorbed,
            retransmissions_sent,
            dropped,
            rejected,
            unacked_dialogs_ended,
            transport_errors,
            registers_forwarded,
            registers_absorbed,
            nat_pings_sent,
            nat_pings_unanswered,
            registrations_lost,
            overload_shed,
        } = o;
        self.requests_in += requests_in;
        self.responses_in += responses_in;
        self.requests_forwarded += requests_forwarded;
        self.responses_forwarded += responses_forwarded;
        self.local_replies += local_replies;
        self.retransmissions_absorbed += retransmissions_absorbed;
        self.retransmissions_sent += retransmissions_sent;
        self.dropped += dropped;
        self.rejected += rejected;
        self.unacked_dialogs_ended += unacked_dialogs_ended;
        self.transport_errors += transport_errors;
        self.registers_forwarded += registers_forwarded;
        self.registers_absorbed += registers_absorbed;
        self.nat_pings_sent += nat_pings_sent;
        self.nat_pings_unanswered += nat_pings_unanswered;
        self.registrations_lost += registrations_lost;
        self.overload_shed += overload_shed;
    }
}

/// The daemon under pressure (its input queue, CPU or memory; see [`Engine::set_overload`]):
/// new work is refused with 503 and this Retry-After (RFC 3261 §21.5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overload {
    /// Seconds a refused client should wait before trying again.
    pub retry_after: u32,
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
    /// Registrations through the SBC, with their NAT keepalives.
    regs: Registrations,
    cores: Vec<CoreState>,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    timer_seq: u64,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    rng: u64,
    stats: Stats,
    overload: Option<Overload>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("server", &self.txns.server_len())
            .field("client", &self.txns.client_len())
            .field("dialogs", &self.dialogs.len())
            .field("bindings", &self.regs.len())
            .finish()
    }
}

const SWEEP: Duration = Duration::from_secs(5);
/// How often due NAT keepalive pings are sent (each binding's own interval is the config's).
const PING_TICK: Duration = Duration::from_secs(1);

impl Engine {
    pub fn new(cfg: Config, now: Instant) -> Engine {
        let (cfg_timers, cfg_max_headers) = (cfg.timers, cfg.limits.max_headers);
        let external_addrs: Vec<std::net::IpAddr> =
            cfg.external.udp.iter().chain(cfg.external.tcp.iter()).map(SocketAddr::ip).collect();
        let internal_addrs: Vec<std::net::IpAddr> = cfg
            .internal
            .udp
            .iter()
            .chain(cfg.internal.tcp.iter())
            .map(SocketAddr::ip)
            .chain(cfg.cores.iter().map(|c| c.addr.ip()))
            .collect();
        let topology = Topology::new(Settings {
            secret: &cfg.secret,
            shard: cfg.shard.index,
            external: SideView { advertise: cfg.external.advertise.clone(), hide: cfg.external.hide },
            internal: SideView { advertise: cfg.internal.advertise.clone(), hide: cfg.internal.hide },
            external_addrs: &external_addrs,
            internal_addrs: &internal_addrs,
            public_domains: &cfg.public_domains,
            strip_headers: cfg.strip_headers.clone(),
            strip_credentials: cfg.strip_credentials,
        });
        let cores = cfg.cores.iter().map(|t| CoreState { target: *t, up: true }).collect();
        let regs = Registrations::new(RegConfig {
            phone_expiry: cfg.nat.register_expiry,
            ping_interval: cfg.nat.ping_interval,
            ping_failures: cfg.nat.ping_failures,
            max: cfg.max_registrations,
        });
        let mut e = Engine {
            rng: cfg.seed | 1,
            cfg,
            topology,
            guard: Box::new(AllowAll),
            media: None,
            txns: Transactions::new(cfg_timers, cfg_max_headers),
            dialogs: Dialogs::default(),
            regs,
            cores,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            overload: None,
        };
        if e.cfg.probe_interval.is_some() {
            e.schedule(now, Timer::Probe);
        }
        e.schedule(now + SWEEP, Timer::Sweep);
        if e.cfg.nat.ping_interval.is_some() {
            e.schedule(now + PING_TICK, Timer::Ping);
        }
        e
    }

    pub fn set_guard(&mut self, guard: Box<dyn Guard>) {
        self.guard = guard;
    }
    pub fn set_media_hook(&mut self, hook: Box<dyn MediaHook>) {
        self.media = Some(hook);
    }
    /// The daemon's word on pressure. While `Some`, requests that would start new work (an
    /// INVITE, SUBSCRIBE, REGISTER, MESSAGE... outside a dialog) are answered 503 with its
    /// Retry-After before any state is built; requests in a dialog, ACK, CANCEL, BYE, OPTIONS
    /// to the SBC itself (health checks) and every response still pass: they end calls and
    /// free state.
    pub fn set_overload(&mut self, overload: Option<Overload>) {
        self.overload = overload;
    }
    pub fn overload(&self) -> Option<Overload> {
        self.overload
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// The counters, the transaction layer's retransmission counts included.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.retransmissions_sent += self.txns.retransmissions_sent;
        s.retransmissions_absorbed += self.txns.retransmissions_absorbed;
        let r = self.regs.stats;
        s.registers_absorbed = r.absorbed;
        s.nat_pings_sent = r.pings_sent;
        s.nat_pings_unanswered = r.pings_unanswered;
        s.registrations_lost = r.lost;
        s
    }
    /// Registrations of UAs judged to be behind NAT.
    pub fn nat_registrations(&self) -> usize {
        self.regs.nat_len()
    }
    /// (server transactions, client transactions, dialogs, registrations)
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        (self.txns.server_len(), self.txns.client_len(), self.dialogs.len(), self.regs.len())
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
            Datagram::Invalid { msg: None, error } => {
                let what = error.to_string();
                self.guard.on_malformed(now, &flow, &what);
                self.drop_msg(flow, what)
            }
        }
    }

    /// One complete message cut from a stream by [`crate::sip::StreamFramer`].
    pub fn handle_stream_message(&mut self, now: Instant, flow: Flow, data: &[u8]) {
        match Message::index(data, self.cfg.limits.max_headers) {
            Ok(msg) => self.handle_message(now, flow, msg),
            Err(e) => {
                let what = SipError::from(e).to_string();
                self.guard.on_malformed(now, &flow, &what);
                self.drop_msg(flow, what)
            }
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
        self.guard.on_malformed(now, &flow, &error.to_string());
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
                let call_id = msg.value(HeaderName::CallId).unwrap_or_default();
                self.reply_stateless(now, flow, msg, msg.method(), call_id, code, reason, &extra);
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
        self.reply_stateless(now, flow, &req.msg, req.method, &req.call_id, code, reason, extra);
        self.stats.local_replies += 1;
        if code >= 300 {
            self.events.push_back(Event::Rejected { flow, code, error: reason.to_string() });
        }
    }

    /// A response the SBC makes to a request without a server transaction (a sanity refusal,
    /// a routing failure, its own answer): a fresh To tag, the top Via stamped, and a final
    /// one shown to the guard.
    #[allow(clippy::too_many_arguments)]
    fn reply_stateless(
        &mut self,
        now: Instant,
        flow: Flow,
        msg: &Message<'_>,
        method: Method,
        call_id: &[u8],
        code: u16,
        reason: &str,
        extra: &[(&str, &[u8])],
    ) {
        let tag = self.random_hex();
        self.send(flow, reply(msg, flow.remote, code, reason, Some(tag.as_bytes()), extra));
        if code >= 200 {
            let to = msg.value(HeaderName::To).unwrap_or_default();
            let credentials = request::has_credentials(msg);
            let outcome = Final { requester: flow, method, code, by_sbc: true, credentials, to, call_id, dialog: None };
            self.guard.on_final(now, &outcome);
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
        let mut s = String::with_capacity(16);
        values::push_hex16(&mut s, self.random());
        s
    }
    /// A branch naming this shard (see [`crate::topology::shard`]), so responses find it.
    fn new_branch(&mut self) -> String {
        let r = self.random();
        crate::topology::shard::branch(self.cfg.shard.index, r)
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
}
