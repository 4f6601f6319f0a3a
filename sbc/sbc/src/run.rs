//! The daemon: one task (on a current-thread runtime) owning the sockets ([`Net`]), the trunk
//! filter, the admin channel and the ban store, and `workers` engine shards on threads of their
//! own ([`crate::shard`]). [`Daemon::run`] only waits for the next event and hands it to one
//! method per source — socket input ([`Daemon::on_input`]: filtered, then steered to its
//! shard), admin command ([`Daemon::on_admin`]), signal ([`Daemon::on_signal`]), what a shard
//! hands back ([`Daemon::on_shard`]: TCP transmits, guard actions), log tick
//! ([`Daemon::on_log_tick`]) — then [`Daemon::flush`] hands the steered batches to the shards.
//! Each shard runs its own timers and drains its own engine (UDP straight onto the sockets).
//!
//! Guard actions from the engines and the engines' guard are touched only in the block marked
//! "the engine's output and guard": a change of that API lands there.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sbc_media::stun;
use sbc_policy::Prefix;
use sbc_proto::engine::{Engine, Event, Flow, GuardAction, Shard, Side, Transmit};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::admin::{self, AdminCommand};
use crate::config::Validated;
use crate::guard::{self, EdgeGuard, GuardState, StateFile};
use crate::logsum;
use crate::net::stun::{StunWorkers, TcpBounds};
use crate::net::{Input, Net, StreamSettings};
use crate::notify::Heartbeat;
use crate::shard::{FromShard, ShardInput, Shards};
use crate::stun::{Outcome, StunService};
use crate::trunk::Trunk;

/// How many queued inputs are handled before transmits are flushed (batching under load).
const BATCH: usize = 64;

/// How long a shard may leave queued inputs untaken before the daemon counts it as hung.
const SHARD_STALL: Duration = Duration::from_secs(3);

/// How often ended log-summary intervals are emitted (see [`logsum::tick`]).
const LOG_TICK: Duration = Duration::from_secs(1);

/// Runs the daemon on a single-threaded runtime until SIGINT or SIGTERM.
pub fn run(cfg: Validated) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    rt.block_on(async {
        Daemon::start(&cfg)?.run().await;
        Ok(())
    })
}

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: re-read the allowlist.
    Reload,
    /// SIGINT or SIGTERM: stop.
    Stop,
}

/// The handlers of the signals the daemon acts on, registered at start so none is missed.
struct Signals {
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> anyhow::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
        })
    }

    /// The next signal; a stop wins over a pending reload.
    async fn recv(&mut self) -> Signal {
        tokio::select! {
            biased;
            _ = self.int.recv() => Signal::Stop,
            _ = self.term.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

pub struct Daemon {
    /// The engine shards; `sbc stats` reads [`Shards::snapshot`].
    shards: Shards,
    /// What the shards hand back (TCP transmits, guard actions).
    from_shards: mpsc::Receiver<FromShard>,
    net: Net,
    /// The provider allowlist (XDP and userspace); `None` without `trunk.allowlist`.
    trunk: Option<Trunk>,
    /// What the socket tasks read.
    inputs: mpsc::Receiver<Input>,
    /// Commands from the admin socket; closed (and ignored) when the socket could not be bound.
    admin: mpsc::Receiver<admin::Request>,
    signals: Signals,
    log_tick: tokio::time::Interval,
    /// STUN on the SIP UDP ports, and the dedicated STUN ports' workers.
    stun: Stun,
    /// The media relay's sessions (`[media] enabled`), shared with the engine's media hook,
    /// and the relay workers that carry the packets (stopped when the daemon is dropped).
    media: Option<(crate::media::SharedSessions, crate::net::relay::RelayWorkers)>,
    /// The guard (rate limits, bans), shared with the engine's guard; None when disabled.
    guard: Option<guard::Shared>,
    /// Where the ban table is kept; None: in memory only.
    state_file: Option<StateFile>,
    /// Packets of banned sources dropped before the engine.
    guard_dropped: u64,
    /// Bans shared with the other appliances (`[guard.store]`); None: this one works alone.
    store: Option<crate::store::Link>,
    /// Overload protection: tells the engine when to answer new work 503.
    pressure: crate::pressure::Pressure,
    /// The loop's sign of life: systemd's watchdog and the management listener's `/health`.
    heartbeat: Heartbeat,
}

/// STUN on the external side: on the SIP UDP ports (demultiplexed, RFC 7983) here, on the
/// engine's thread; on the dedicated UDP and TCP ports by the STUN workers (`net::stun`). Both
/// answer through the one [`StunService`] (rate limit, Binding server, counters).
struct Stun {
    service: Arc<StunService>,
    on_sip_udp: bool,
    /// The dedicated ports' threads; stopped when the daemon is dropped.
    _workers: StunWorkers,
}

impl Daemon {
    /// Binds every listen address, loads the allowlist (attaching XDP), opens the admin socket
    /// and registers the signal handlers. Runs inside the tokio runtime: the socket tasks are
    /// spawned here.
    pub fn start(cfg: &Validated) -> anyhow::Result<Daemon> {
        let (tx, inputs) = mpsc::channel::<Input>(crate::pressure::INPUT_QUEUE);
        let settings =
            StreamSettings { limits: cfg.engine.limits, idle: cfg.tcp_idle, max_connections: cfg.max_tcp_connections };
        let net = Net::bind(
            &[
                (Side::External, &cfg.external.udp, &cfg.external.tcp),
                (Side::Internal, &cfg.internal.udp, &cfg.internal.tcp),
            ],
            settings,
            tx,
        )
        .context("binding listen addresses")?;
        let trunk = Trunk::start(&cfg.trunk).map_err(|e| anyhow::anyhow!("trunk allowlist: {e}"))?;
        let (admin_tx, admin) = mpsc::channel::<admin::Request>(16);
        if let Err(e) = admin::serve(&cfg.admin_socket, admin_tx.clone()) {
            tracing::warn!(socket = %cfg.admin_socket.display(), error = %e, "admin socket unavailable; `sbc stats` and `sbc allowlist` will not reach this daemon");
        }
        let signals = Signals::register()?;
        // Before any thread exists (capabilities are per thread; later threads inherit these).
        let xdp = trunk.as_ref().is_some_and(Trunk::has_xdp);
        let kept = crate::net::privileges::drop_to(&crate::net::privileges::needed(xdp))
            .map_err(|e| anyhow::anyhow!("dropping capabilities: {e}"))?;
        tracing::info!(kept = ?kept, "capabilities dropped after set-up");
        let mut log_tick = tokio::time::interval(LOG_TICK);
        log_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let service = Arc::new(StunService::new(&cfg.stun, Instant::now())?);
        let workers = crate::net::stun::start(
            service.clone(),
            &cfg.stun.udp,
            &cfg.stun.tcp,
            cfg.stun.workers,
            TcpBounds { max_connections: cfg.stun.tcp_max_connections, idle: cfg.stun.tcp_idle },
        )
        .context("binding STUN listen addresses")?;
        let stun = Stun { service, on_sip_udp: cfg.stun.on_sip_udp, _workers: workers };
        let media = match cfg.media.clone() {
            Some(m) => {
                let (address, ports) = (m.address, m.ports);
                let sessions = Arc::new(std::sync::Mutex::new(sbc_media::session::Sessions::new(m)));
                let relay = crate::net::relay::start(sessions.clone(), address, ports, cfg.media_workers)
                    .context("starting the media relay")?;
                tracing::info!(?ports, workers = cfg.media_workers, "media relay running");
                Some((sessions, relay))
            }
            None => None,
        };
        let guard = cfg
            .guard
            .as_ref()
            .map(|g| GuardState::new(g.config.clone(), trunk.as_ref().map(Trunk::list_slot), Instant::now()));
        let state_file = cfg.guard.as_ref().and_then(|g| g.state_dir.as_deref()).map(StateFile::new);
        if let (Some(g), Some(f)) = (&guard, &state_file) {
            f.restore(&mut guard::lock(g), Instant::now());
        }
        let store = match cfg.guard.as_ref().and_then(|g| g.store.as_ref()) {
            Some(s) => Some(crate::store::Link::start(s).context("guard.store")?),
            None => None,
        };
        // The shards: one engine each, told its number, sharing the guard's state, the trunk
        // allowlist and the media sessions.
        let n = cfg.workers.max(1);
        let now = Instant::now();
        let mut engines = Vec::with_capacity(n);
        for i in 0..n {
            let shard = Shard::new(i, n).ok_or_else(|| anyhow::anyhow!("workers: {n} shards are too many"))?;
            // The configured bounds are the SBC's: each shard holds its share (rounded up).
            let share = |max: usize| max.div_ceil(n).max(1);
            let config = sbc_proto::engine::Config {
                shard,
                seed: cfg.engine.seed.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                max_transactions: share(cfg.engine.max_transactions),
                max_dialogs: share(cfg.engine.max_dialogs),
                max_registrations: share(cfg.engine.max_registrations),
                ..cfg.engine.clone()
            };
            let mut engine = Engine::new(config, now);
            install_guard(&mut engine, trunk.as_ref(), guard.as_ref());
            if let Some((m, _)) = &media {
                engine.set_media_hook(Box::new(crate::media::MediaAnchor::new(m.clone())));
            }
            engines.push(engine);
        }
        let (shard_tx, from_shards) = mpsc::channel::<FromShard>(4096);
        let udp_out = (0..n)
            .map(|_| net.udp_out())
            .collect::<Result<Vec<_>, _>>()
            .context("UDP sockets for the engine shards")?;
        let shards = Shards::start(engines, udp_out, shard_tx, guard.clone(), cfg.engine.limits.max_headers)
            .context("starting the engine shards")?;
        let heartbeat = Heartbeat::from_env(Instant::now());
        if let Some(addr) = cfg.management {
            crate::management::start(addr, admin_tx, heartbeat.beat())?;
        }
        let daemon = Daemon {
            shards,
            from_shards,
            net,
            trunk,
            inputs,
            admin,
            signals,
            log_tick,
            stun,
            media,
            guard,
            state_file,
            guard_dropped: 0,
            store,
            pressure: crate::pressure::Pressure::new(cfg.overload.clone(), Instant::now()),
            heartbeat,
        };
        tracing::info!(
            workers = n,
            external_udp = ?cfg.external.udp, external_tcp = ?cfg.external.tcp,
            internal_udp = ?cfg.internal.udp, internal_tcp = ?cfg.internal.tcp,
            cores = ?cfg.engine.cores.iter().map(|c| c.addr).collect::<Vec<_>>(),
            stun_udp = ?cfg.stun.udp, stun_tcp = ?cfg.stun.tcp, stun_workers = cfg.stun.workers,
            stun_on_sip_udp = cfg.stun.on_sip_udp,
            "sbc running"
        );
        Ok(daemon)
    }

    /// Waits for the next event, dispatches it, flushes; until a stop signal.
    pub async fn run(mut self) {
        self.heartbeat.ready(&format!("serving; version {}", env!("CARGO_PKG_VERSION")));
        if let Some(every) = self.heartbeat.ping_every() {
            tracing::info!(
                ?every,
                "systemd watchdog: WATCHDOG=1 while the daemon's loop and every shard make progress"
            );
        }
        loop {
            // Stops first, then admin commands (an operator waits), then the heartbeat (a flood
            // must not make systemd's watchdog kill a working daemon), then bans from the store
            // (rare and bounded; a flood of packets must not delay them), then what the shards
            // hand back (their queue toward us must not fill), then packets.
            tokio::select! {
                biased;
                signal = self.signals.recv() => if self.on_signal(signal).is_break() { break },
                Some(req) = self.admin.recv() => self.on_admin(req),
                _ = self.heartbeat.tick() => self.on_heartbeat(Instant::now()),
                Some(msg) = recv_store(&mut self.store) => self.on_store(msg),
                Some(out) = self.from_shards.recv() => self.on_shard(out),
                input = self.inputs.recv() => match input {
                    Some(input) => self.on_inputs(input),
                    None => break,
                },
                _ = self.log_tick.tick() => self.on_log_tick(),
            }
            self.flush();
        }
        self.heartbeat.stopping();
        self.log_stop();
    }

    /// Hands the steered inputs to their shards.
    fn flush(&mut self) {
        self.shards.flush();
    }

    /// What a shard hands back: a transmit for the connections (or a UDP socket that was
    /// full), or a guard action.
    fn on_shard(&mut self, out: FromShard) {
        match out {
            FromShard::Transmit(t) => self.net.send(t),
            FromShard::Guard(action) => self.apply(action),
        }
        for _ in 0..BATCH {
            match self.from_shards.try_recv() {
                Ok(FromShard::Transmit(t)) => self.net.send(t),
                Ok(FromShard::Guard(action)) => self.apply(action),
                Err(_) => break,
            }
        }
    }

    /// The heartbeat: the beat `/health` reads and systemd's `WATCHDOG=1`, only while every
    /// shard makes progress (this task reaching here shows its own).
    fn on_heartbeat(&mut self, now: Instant) {
        if self.shards.stalled(now, SHARD_STALL) {
            logsum::note("shard stalled", None, || {
                format!("a SIP engine shard has not taken its queued inputs for {SHARD_STALL:?}: no watchdog ping")
            });
        } else {
            self.heartbeat.on_tick(now);
        }
    }

    /// `input`, and up to [`BATCH`] more already queued, on one clock reading: one flush
    /// serves the batch.
    fn on_inputs(&mut self, input: Input) {
        let now = Instant::now();
        if let Some(o) = self.pressure.observe(now, self.inputs.len() + self.shards.queued()) {
            self.shards.set_overload(o);
        }
        self.on_input(now, input);
        for _ in 0..BATCH {
            match self.inputs.try_recv() {
                Ok(i) => self.on_input(now, i),
                Err(_) => break,
            }
        }
    }

    /// One thing a socket task read: a message for the engine (after the trunk filter), a
    /// transport error, or a connection opening or closing.
    fn on_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Datagram { flow, data } => {
                if !self.admits(&flow) {
                    return;
                }
                if flow.side == Side::External && self.stun.on_sip_udp && stun::is_stun(&data) {
                    self.on_stun(now, flow, &data);
                } else {
                    self.shards.push(ShardInput::Datagram { flow, data });
                }
            }
            Input::Stream { flow, data } => {
                if self.admits(&flow) {
                    self.shards.push(ShardInput::Stream { flow, data });
                }
            }
            Input::TransportError { flow, error } => {
                logsum::note("transport error", Some(flow.remote.ip()), || {
                    format!("transport error toward {} ({}): {error}", flow.remote, flow.side.as_str())
                });
                self.shards.push(ShardInput::TransportError { flow, error });
            }
            Input::Opened { key, id, tx } => self.net.opened(key, id, tx),
            Input::Closed { key, id } => self.net.closed(key, id),
        }
    }

    /// A STUN datagram on a SIP port: the source's rate, then the Binding server's answer,
    /// sent back on the socket it came in on.
    fn on_stun(&mut self, now: Instant, flow: Flow, data: &[u8]) {
        let outcome = {
            let mut limiter = self.stun.service.lock();
            self.stun.service.handle(&mut limiter, now, data, flow.remote)
        };
        match outcome {
            Outcome::Reply(bytes) => self.net.send(Transmit { flow, data: bytes, reconnect: None }),
            Outcome::Limited => logsum::note_info("stun rate limited", Some(flow.remote.ip()), || {
                format!("STUN requests from {} over the per-source rate: dropped", flow.remote)
            }),
            Outcome::Ignored(why) => logsum::note_info(&format!("stun ignored: {why}"), Some(flow.remote.ip()), || {
                format!("STUN datagram from {} ignored: {why}", flow.remote)
            }),
        }
    }

    /// The userspace packet filters before the engine: the trunk allowlist (defence in depth
    /// behind XDP, and the only filter where XDP is absent), then the guard's bans (external
    /// side). What they refuse is dropped silently, and counted.
    fn admits(&mut self, flow: &Flow) -> bool {
        if !self.trunk.as_mut().is_none_or(|t| t.admits_packet(flow)) {
            return false;
        }
        if flow.side == Side::External
            && let Some(g) = &self.guard
            && guard::lock(g).drop_if_banned(flow.remote.ip())
        {
            self.guard_dropped += 1;
            return false;
        }
        true
    }

    /// Executes an admin command and answers it.
    fn on_admin(&mut self, req: admin::Request) {
        let answer = self.execute(req.command);
        self.apply_guard_actions();
        let _ = req.reply.send(answer);
    }

    fn execute(&mut self, command: AdminCommand) -> Result<String, String> {
        match command {
            AdminCommand::Stats => Ok(self.stats_text()),
            AdminCommand::AllowlistShow => self.trunk.as_ref().map(Trunk::show).ok_or_else(no_trunk),
            AdminCommand::AllowlistReload => self.reload_allowlist().map(|msg| format!("{msg}\n")),
            AdminCommand::BansList => {
                let g = self.guard.as_ref().ok_or_else(no_guard)?;
                Ok(guard::lock(g).policy.bans(Instant::now()).iter().map(|b| format!("{b}\n")).collect())
            }
            AdminCommand::BansShow(p) => {
                let g = self.guard.as_ref().ok_or_else(no_guard)?;
                let shown = guard::lock(g).policy.show(Instant::now(), p.addr());
                shown.map(|b| format!("{b}\n")).ok_or_else(|| format!("{p} is not banned"))
            }
            AdminCommand::BansAdd { prefix, secs, reason } => {
                let g = self.guard.as_ref().ok_or_else(no_guard)?;
                let reason = if reason.is_empty() { "by hand".to_string() } else { reason };
                let added = guard::lock(g).add(Instant::now(), prefix, secs, &reason);
                self.save_bans();
                added
            }
            AdminCommand::BansDel(p) => {
                let g = self.guard.as_ref().ok_or_else(no_guard)?;
                let deleted = guard::lock(g).policy.delete(Instant::now(), p);
                self.save_bans();
                deleted.map(|b| format!("lifted {b}\n")).ok_or_else(|| format!("{p} is not banned"))
            }
        }
    }

    /// Writes the ban table when it changed (at most once a second from the log tick, at once
    /// after an operator's change, and at stop).
    fn save_bans(&mut self) {
        if let (Some(g), Some(f)) = (&self.guard, &self.state_file) {
            f.save_if_dirty(&mut guard::lock(g), Instant::now());
        }
    }

    fn on_signal(&mut self, signal: Signal) -> ControlFlow<()> {
        match signal {
            Signal::Stop => ControlFlow::Break(()),
            Signal::Reload => {
                self.on_reload();
                ControlFlow::Continue(())
            }
        }
    }

    /// SIGHUP: re-read the allowlist when there is one; a failure is logged, the running list
    /// stays.
    fn on_reload(&mut self) {
        if self.trunk.is_none() {
            return;
        }
        match self.reload_allowlist() {
            Ok(msg) => self.heartbeat.status(&format!("serving; {msg}")),
            Err(e) => tracing::error!(error = %e, "allowlist reload failed; the previous list stays"),
        }
    }

    fn reload_allowlist(&mut self) -> Result<String, String> {
        let msg = self.trunk.as_mut().ok_or_else(no_trunk)?.reload()?;
        if let Some(g) = &self.guard {
            let lifted = guard::lock(g).lift_exempt();
            if lifted > 0 {
                tracing::info!(lifted, "bans of prefixes the new allowlist lists were lifted");
            }
        }
        Ok(msg)
    }

    /// An announcement from the ban store (a ban or unban made elsewhere, or a reconnection).
    fn on_store(&mut self, msg: crate::store::Incoming) {
        if let (Some(s), Some(g)) = (self.store.as_mut(), &self.guard) {
            s.on_incoming(g, msg);
        }
        self.apply_guard_actions();
    }

    /// Applies the bans and unbans the policy guard decided outside any engine (an operator's
    /// `sbc bans add|del`, a ban from the store) at once: the shards, which poll the same guard,
    /// may be idle, and a banned source's packets would never wake them.
    fn apply_guard_actions(&mut self) {
        while let Some(action) = self.guard.as_ref().and_then(guard::poll_action) {
            self.apply(action);
        }
    }

    /// Emits the log summaries of an interval that ended, even when nothing new arrives.
    fn on_log_tick(&mut self) {
        logsum::tick();
        self.save_bans();
    }

    /// The `sbc stats` text: the engine's counters summed over the shards
    /// ([`Shards::snapshot`]), then every other part's.
    fn stats_text(&self) -> String {
        let snap = self.shards.snapshot();
        let st = &snap.stats;
        let (s, c, d, r) = (snap.server_transactions, snap.client_transactions, snap.dialogs, snap.registrations);
        let mut out = format!(
            "sip.requests_in {}\nsip.responses_in {}\nsip.requests_forwarded {}\nsip.responses_forwarded {}\n\
             sip.local_replies {}\nsip.rejected {}\nsip.dropped {}\nsip.retransmissions_absorbed {}\n\
             sip.retransmissions_sent {}\nsip.unacked_dialogs_ended {}\nsip.transport_errors {}\n\
             state.server_transactions {s}\nstate.client_transactions {c}\nstate.dialogs {d}\n\
             state.registrations {r}\nstate.tcp_connections {}\n",
            st.requests_in,
            st.responses_in,
            st.requests_forwarded,
            st.responses_forwarded,
            st.local_replies,
            st.rejected,
            st.dropped,
            st.retransmissions_absorbed,
            st.retransmissions_sent,
            st.unacked_dialogs_ended,
            st.transport_errors,
            self.net.connections(),
        );
        out.push_str(&format!(
            "nat.registrations {}\nnat.registers_forwarded {}\nnat.registers_absorbed {}\nnat.pings_sent {}\n\
             nat.pings_unanswered {}\nnat.registrations_lost {}\n",
            snap.nat_registrations,
            st.registers_forwarded,
            st.registers_absorbed,
            st.nat_pings_sent,
            st.nat_pings_unanswered,
            st.registrations_lost,
        ));
        out.push_str(&format!(
            "sip.workers {}\nsip.shard_inputs {}\nsip.shard_largest_batch {}\nsip.shard_queue_full {}\n",
            self.shards.count(),
            snap.inputs,
            snap.largest_batch,
            self.shards.queue_full(),
        ));
        out.push_str(&self.pressure.stats_text(st.overload_shed));
        out.push_str(&self.stun.service.stats_text());
        if let Some((m, relay)) = &self.media {
            out.push_str(&crate::media::stats_text(m));
            out.push_str(&relay.stats_text());
        }
        if let Some(t) = &self.trunk {
            out.push_str(&t.stats_text());
        }
        if let Some(g) = &self.guard {
            out.push_str(&guard::lock(g).policy.stats_text());
            out.push_str(&format!("guard.userspace_dropped_packets {}\n", self.guard_dropped));
        }
        if let Some(s) = &self.store {
            out.push_str(&s.stats_text());
        }
        out
    }

    fn log_stop(&mut self) {
        self.save_bans();
        let snap = self.shards.snapshot();
        let (s, c, d, r) = (snap.server_transactions, snap.client_transactions, snap.dialogs, snap.registrations);
        let st = &snap.stats;
        tracing::info!(
            server_txns = s,
            client_txns = c,
            dialogs = d,
            registrations = r,
            tcp = self.net.connections(),
            requests_in = st.requests_in,
            responses_in = st.responses_in,
            rejected = st.rejected,
            dropped = st.dropped,
            "sbc stopping"
        );
    }
}

/// The engines' guard actions and guard: the only places that act on them or install it.
impl Daemon {
    /// A guard's action: to the ban store when there is one (`crate::store`); a ban into the
    /// XDP blocklist, with its end, where XDP is attached (XDP lets it lapse by itself at that
    /// end; userspace drops it anyway, [`Daemon::admits`]); an unban out of it.
    fn apply(&mut self, action: GuardAction) {
        if let (Some(s), Some(g)) = (self.store.as_mut(), &self.guard) {
            s.on_action(g, &action);
        }
        let Some(t) = self.trunk.as_mut().filter(|t| t.has_xdp()) else { return };
        let (addr, len, until) = match &action {
            GuardAction::Ban { addr, prefix_len, until, .. } => (*addr, *prefix_len, Some(*until)),
            GuardAction::Unban { addr, prefix_len, .. } => (*addr, *prefix_len, None),
        };
        let Some(prefix) = Prefix::new(addr, len) else { return };
        let ban = until.is_some();
        let done = match until {
            Some(until) => t.block(prefix, until),
            None => t.unblock(prefix),
        };
        if let Err(e) = done {
            tracing::error!(%prefix, ban, error = %e, "XDP blocklist not updated (userspace still enforces the ban)");
        }
    }
}

/// Hands an engine its guard, once, at start: the trunk allowlist's check and the policy
/// guard, both reading the running allowlist through a slot a reload swaps, so their state is
/// never thrown away; every shard's engine gets the same shared state. Installed always:
/// without trunk and guard it still logs the auth failure lines (fail2ban's).
fn install_guard(engine: &mut Engine, trunk: Option<&Trunk>, guard: Option<&guard::Shared>) {
    let trunk = trunk.map(Trunk::guard);
    engine.set_guard(Box::new(EdgeGuard { trunk, state: guard.cloned() }));
}

fn no_guard() -> String {
    "the guard is disabled (guard.enabled = false)".to_string()
}

fn no_trunk() -> String {
    "no trunk.allowlist configured".to_string()
}

async fn recv_store(store: &mut Option<crate::store::Link>) -> Option<crate::store::Incoming> {
    match store {
        Some(s) => s.incoming.recv().await,
        None => std::future::pending().await,
    }
}

/// Logs an engine event (called on the shard threads).
pub fn log_event(ev: Event) {
    match ev {
        Event::CoreUp { addr } => tracing::info!(%addr, "core is up"),
        Event::CoreDown { addr } => tracing::warn!(%addr, "core is down"),
        Event::DialogEnded { dialog, why } => tracing::debug!(%dialog, ?why, "dialog ended"),
        // Outsiders trigger these at packet rate: the first of each kind per interval in full,
        // then counts per source (crate::logsum).
        Event::Overload { what } => {
            logsum::note(&format!("overload: {what}"), None, || format!("{what} limit reached: answering 503"))
        }
        Event::Rejected { flow, code, error } => {
            tracing::debug!(side = flow.side.as_str(), src = %flow.remote, code, error, "request rejected");
            logsum::note_info(&format!("rejected {code}: {error}"), Some(flow.remote.ip()), || {
                format!("request from {} ({}) rejected with {code}: {error}", flow.remote, flow.side.as_str())
            })
        }
        Event::Dropped { flow, reason } => {
            tracing::debug!(side = flow.side.as_str(), src = %flow.remote, reason, "message dropped");
            logsum::note_info(&format!("dropped: {reason}"), Some(flow.remote.ip()), || {
                format!("message from {} ({}) dropped: {reason}", flow.remote, flow.side.as_str())
            })
        }
    }
}
