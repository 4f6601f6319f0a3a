//! The SIP engine shards: `workers` threads, each owning one sans-IO [`Engine`] (its
//! transactions, dialogs, registrations and timers) and sending its own UDP. The daemon's task
//! ([`crate::run`]) reads the sockets, filters (trunk allowlist, bans, STUN), and hands each
//! message to the shard [`steer::shard_of`] names — no table, no lock: the owner's number is in
//! the identifiers the SBC handed out (see `sbc_proto::topology::shard`). A transport error
//! goes to every shard (any of them may have transactions on that flow).
//!
//! A shard's loop ([`run_shard`]) is: wait for a batch of inputs or its next timer, hand them to
//! the engine on one clock reading, run due timers (also under load: a busy shard never waits
//! long enough to time out), then drain the engine: UDP onto the sockets from this thread, TCP
//! transmits and guard actions back to the daemon's task (it owns the connections, XDP and the
//! ban store), events into the logs. Then it publishes its [`Snapshot`], which is what
//! `sbc stats` (and any metrics reader) sums: [`Shards::snapshot`].
//!
//! The daemon never blocks on a shard (a full queue drops the batch, counted as
//! `sip.shard_queue_full`); a shard blocks on the daemon only when the daemon's queue is full.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sbc_proto::engine::{Engine, Event, Flow, GuardAction, Output, Overload, Stats, Transmit, steer};
use sbc_proto::sip::uri::Transport;
use tokio::sync::mpsc;

use crate::guard;
use crate::net::UdpOut;

/// Inputs queued per shard before the daemon drops (and counts) further ones: more than the
/// SIP sockets' 4 MiB receive buffers hold, so a shard that is briefly off its CPU loses
/// nothing the kernel would have kept. Counted in messages, not batches (a lightly loaded
/// daemon hands over batches of one).
const QUEUE_INPUTS: usize = 16384;

/// Inputs one pass of a shard's loop takes before it drains the engine's output, runs its
/// timers and publishes its snapshot.
const PASS_INPUTS: usize = 1024;

/// What the daemon hands a shard.
#[derive(Debug)]
pub enum ShardInput {
    Datagram { flow: Flow, data: Vec<u8> },
    Stream { flow: Flow, data: Vec<u8> },
    TransportError { flow: Flow, error: std::io::ErrorKind },
}

/// What a shard hands back to the daemon's task.
#[derive(Debug)]
pub enum FromShard {
    /// A TCP transmit, or a UDP one the socket refused for now (sent by the daemon's task).
    Transmit(Transmit),
    Guard(GuardAction),
}

/// One shard's counters and state sizes, published after every batch; summed over shards by
/// [`Shards::snapshot`].
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub stats: Stats,
    pub server_transactions: usize,
    pub client_transactions: usize,
    pub dialogs: usize,
    pub registrations: usize,
    pub nat_registrations: usize,
    /// Inputs handed to the engine, and the largest batch one wake-up took.
    pub inputs: u64,
    pub largest_batch: usize,
}

impl Snapshot {
    fn of(e: &Engine, inputs: u64, largest_batch: usize) -> Snapshot {
        let (s, c, d, r) = e.sizes();
        Snapshot {
            stats: e.stats(),
            server_transactions: s,
            client_transactions: c,
            dialogs: d,
            registrations: r,
            nat_registrations: e.nat_registrations(),
            inputs,
            largest_batch,
        }
    }

    fn add(&mut self, o: &Snapshot) {
        self.stats.add(&o.stats);
        self.server_transactions += o.server_transactions;
        self.client_transactions += o.client_transactions;
        self.dialogs += o.dialogs;
        self.registrations += o.registrations;
        self.nat_registrations += o.nat_registrations;
        self.inputs += o.inputs;
        self.largest_batch = self.largest_batch.max(o.largest_batch);
    }
}

/// The daemon's side of the shards: steering, per-shard batches, the published snapshots.
pub struct Shards {
    queues: Vec<SyncSender<Vec<ShardInput>>>,
    /// Inputs queued toward each shard and not yet taken by it.
    queued: Vec<Arc<AtomicUsize>>,
    snapshots: Vec<Arc<Mutex<Snapshot>>>,
    /// Inputs steered since the last [`Shards::flush`], per shard.
    pending: Vec<Vec<ShardInput>>,
    max_headers: usize,
    /// Batches dropped because a shard's queue was full, and the inputs in them.
    queue_full: u64,
    /// Round-robin for messages with no owner (not SIP): any shard answers or drops them.
    next: usize,
    /// The overload every shard applies to its engine before its next batch (see
    /// [`Shards::set_overload`]).
    overload: Arc<AtomicU32>,
    /// Each shard's last pass through its loop, in ms since `epoch` (see [`Shards::stalled`]).
    progress: Vec<Arc<AtomicU64>>,
    epoch: Instant,
}

impl Shards {
    /// Starts one thread per engine (`engines[i]` must be shard i of `engines.len()`).
    /// `udp[i]`: shard i's own handle on the UDP sockets.
    pub fn start(
        engines: Vec<Engine>,
        udp: Vec<UdpOut>,
        to_daemon: mpsc::Sender<FromShard>,
        guard: Option<guard::Shared>,
        max_headers: usize,
    ) -> std::io::Result<Shards> {
        let n = engines.len();
        let mut queues = Vec::with_capacity(n);
        let mut snapshots = Vec::with_capacity(n);
        let mut queued = Vec::with_capacity(n);
        let overload = Arc::new(AtomicU32::new(NO_OVERLOAD));
        let epoch = Instant::now();
        let mut progress = Vec::with_capacity(n);
        for (i, (engine, udp)) in engines.into_iter().zip(udp).enumerate() {
            let (tx, rx) = sync_channel(QUEUE_INPUTS);
            let snapshot = Arc::new(Mutex::new(Snapshot::default()));
            let count = Arc::new(AtomicUsize::new(0));
            let shard = Shard {
                engine,
                udp,
                udp_out: Vec::new(),
                to_daemon: to_daemon.clone(),
                guard: guard.clone(),
                snapshot: snapshot.clone(),
                queued: count.clone(),
                inputs: 0,
                largest_batch: 0,
                overload: overload.clone(),
                applied: NO_OVERLOAD,
                progress: Arc::new(AtomicU64::new(0)),
                epoch,
            };
            progress.push(shard.progress.clone());
            std::thread::Builder::new().name(format!("sip-{i}")).spawn(move || run_shard(shard, &rx))?;
            queues.push(tx);
            snapshots.push(snapshot);
            queued.push(count);
        }
        Ok(Shards {
            queues,
            queued,
            snapshots,
            pending: (0..n).map(|_| Vec::new()).collect(),
            max_headers,
            queue_full: 0,
            next: 0,
            overload,
            progress,
            epoch,
        })
    }

    pub fn count(&self) -> usize {
        self.queues.len()
    }

    /// Steers one input to its shard's pending batch (a transport error to every shard).
    pub fn push(&mut self, input: ShardInput) {
        let n = self.queues.len();
        let shard = match &input {
            ShardInput::Datagram { data, .. } | ShardInput::Stream { data, .. } => {
                steer::shard_of(data, n, self.max_headers).unwrap_or_else(|| {
                    self.next = (self.next + 1) % n;
                    self.next
                })
            }
            ShardInput::TransportError { flow, error } => {
                for p in self.pending.iter_mut().skip(1) {
                    p.push(ShardInput::TransportError { flow: *flow, error: *error });
                }
                0
            }
        };
        if let Some(p) = self.pending.get_mut(shard) {
            p.push(input);
        }
    }

    /// Hands every pending batch to its shard without waiting; a full queue drops the batch.
    pub fn flush(&mut self) {
        for ((q, count), p) in self.queues.iter().zip(&self.queued).zip(self.pending.iter_mut()) {
            if p.is_empty() {
                continue;
            }
            let len = p.len();
            // Counted before the send (the shard may take the batch at once and count it out).
            let full = count.fetch_add(len, Ordering::AcqRel) + len > QUEUE_INPUTS;
            let sent = if full { Err(TrySendError::Full(std::mem::take(p))) } else { q.try_send(std::mem::take(p)) };
            if sent.is_err() {
                count.fetch_sub(len, Ordering::AcqRel);
            }
            match sent {
                Ok(()) => {}
                Err(TrySendError::Full(batch)) => {
                    self.queue_full += batch.len() as u64;
                    crate::logsum::note("shard queue full", None, || {
                        "a SIP engine shard's queue is full: messages dropped".into()
                    });
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    /// The sum of every shard's last published snapshot: one place for `sbc stats` and metrics.
    pub fn snapshot(&self) -> Snapshot {
        let mut sum = Snapshot::default();
        for s in &self.snapshots {
            sum.add(&s.lock().unwrap_or_else(|e| e.into_inner()));
        }
        sum
    }

    /// Inputs handed to the shards and not yet taken by them (the overload gate's queue depth).
    pub fn queued(&self) -> usize {
        self.queued.iter().map(|c| c.load(Ordering::Acquire)).sum()
    }

    /// True when a shard has had inputs waiting and has not passed through its loop for
    /// `limit`: a hung engine. The watchdog stops pinging then (systemd restarts the daemon),
    /// and `/health` turns 503. An idle shard (nothing queued) is never stalled.
    pub fn stalled(&self, now: Instant, limit: std::time::Duration) -> bool {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.queued.iter().zip(&self.progress).any(|(q, p)| {
            q.load(Ordering::Acquire) > 0 && now_ms.saturating_sub(p.load(Ordering::Acquire)) > limit.as_millis() as u64
        })
    }

    /// Tells every shard's engine the daemon is (or is no longer) under pressure; each applies
    /// it before its next batch.
    pub fn set_overload(&self, o: Option<Overload>) {
        self.overload.store(o.map_or(NO_OVERLOAD, |o| o.retry_after), Ordering::Release);
    }

    /// Inputs dropped because a shard's queue was full.
    pub fn queue_full(&self) -> u64 {
        self.queue_full
    }
}

/// One shard thread's state.
struct Shard {
    engine: Engine,
    udp: UdpOut,
    /// The UDP transmits of one drain, sent together (reused).
    udp_out: Vec<Transmit>,
    to_daemon: mpsc::Sender<FromShard>,
    guard: Option<guard::Shared>,
    snapshot: Arc<Mutex<Snapshot>>,
    /// Inputs the daemon queued toward this shard and it has not taken yet.
    queued: Arc<AtomicUsize>,
    inputs: u64,
    largest_batch: usize,
    /// The daemon's overload word, and the value last applied to this engine.
    overload: Arc<AtomicU32>,
    applied: u32,
    /// Stamped on every pass through the loop (read by [`Shards::stalled`]).
    progress: Arc<AtomicU64>,
    epoch: Instant,
}

/// The overload word when there is none (a Retry-After is never this large).
const NO_OVERLOAD: u32 = u32::MAX;

/// The shard's loop (see the module doc); ends when the daemon drops its queue.
fn run_shard(mut s: Shard, rx: &Receiver<Vec<ShardInput>>) {
    let mut deadline = s.drain();
    loop {
        let got = match deadline {
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let now = Instant::now();
        s.progress.store(now.saturating_duration_since(s.epoch).as_millis() as u64, Ordering::Release);
        match got {
            Ok(batch) => {
                s.largest_batch = s.largest_batch.max(batch.len());
                let mut taken = batch.len();
                s.handle(now, batch);
                // More of what is queued, on the same clock reading, up to PASS_INPUTS: then the
                // pass ends (transmits out, timers, the published snapshot) so that a backlog
                // neither holds the answers back nor leaves `sbc stats` and the stall check stale.
                while taken < PASS_INPUTS {
                    match rx.try_recv() {
                        Ok(batch) => {
                            taken += batch.len();
                            s.handle(now, batch);
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        // The loop is alive here (a watchdog seam): timers that are due run even when inputs
        // never let the wait time out.
        if deadline.is_some_and(|at| at <= now) {
            s.engine.handle_timeout(now);
        }
        deadline = s.drain();
        let snap = Snapshot::of(&s.engine, s.inputs, s.largest_batch);
        *s.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = snap;
    }
}

impl Shard {
    fn handle(&mut self, now: Instant, batch: Vec<ShardInput>) {
        let o = self.overload.load(Ordering::Acquire);
        if o != self.applied {
            self.applied = o;
            self.engine.set_overload((o != NO_OVERLOAD).then_some(Overload { retry_after: o }));
        }
        self.inputs += batch.len() as u64;
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        for input in batch {
            match input {
                ShardInput::Datagram { flow, data } => self.engine.handle_datagram(now, flow, &data),
                ShardInput::Stream { flow, data } => self.engine.handle_stream_message(now, flow, &data),
                ShardInput::TransportError { flow, .. } => self.engine.handle_transport_error(now, flow),
            }
        }
    }

    /// Drains the engine's output (UDP sent in batches at the end); returns when it next
    /// wants its timers.
    fn drain(&mut self) -> Option<Instant> {
        let deadline = self.drain_engine();
        if !self.udp_out.is_empty() {
            self.udp.send_all(&mut self.udp_out);
            // What a full send queue refused: the daemon's task waits for the socket.
            for t in self.udp_out.drain(..) {
                let _ = self.to_daemon.blocking_send(FromShard::Transmit(t));
            }
        }
        deadline
    }

    fn drain_engine(&mut self) -> Option<Instant> {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Transmit(t) if t.flow.transport == Transport::Udp => self.udp_out.push(t),
                Output::Transmit(t) => {
                    let _ = self.to_daemon.blocking_send(FromShard::Transmit(t));
                }
                Output::Event(ev) => {
                    if let (Event::DialogEnded { dialog, .. }, Some(g)) = (&ev, &self.guard) {
                        guard::lock(g).dialog_ended(dialog);
                    }
                    crate::run::log_event(ev);
                }
                Output::Guard(action) => {
                    let _ = self.to_daemon.blocking_send(FromShard::Guard(action));
                }
                Output::Timeout(at) => return Some(at),
            }
        }
        None
    }
}
