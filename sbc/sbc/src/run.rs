//! The engine task: owns the sans-IO engine, feeds it socket input and timer ticks, puts its
//! transmits on the wire, and turns its events into logs.

use std::time::Instant;

use anyhow::Context;
use sbc_proto::engine::{Engine, Event, Side};
use tokio::sync::mpsc;

use crate::admin::{self, AdminCommand};
use crate::config::Validated;
use crate::logsum;
use crate::net::{Input, Net, StreamSettings};
use crate::trunk::Trunk;

/// How many queued inputs are handled before transmits are flushed (batching under load).
const BATCH: usize = 64;

pub fn run(cfg: Validated) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    rt.block_on(main_loop(cfg))
}

async fn main_loop(cfg: Validated) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Input>(4096);
    let settings =
        StreamSettings { limits: cfg.engine.limits, idle: cfg.tcp_idle, max_connections: cfg.max_tcp_connections };
    let mut net = Net::bind(
        &[
            (Side::External, &cfg.external.udp, &cfg.external.tcp),
            (Side::Internal, &cfg.internal.udp, &cfg.internal.tcp),
        ],
        settings,
        tx,
    )
    .context("binding listen addresses")?;
    let mut engine = Engine::new(cfg.engine.clone(), Instant::now());
    let mut trunk = Trunk::start(&cfg.trunk).map_err(|e| anyhow::anyhow!("trunk allowlist: {e}"))?;
    if let Some(t) = &trunk {
        engine.set_guard(Box::new(t.guard()));
    }
    let (admin_tx, mut admin_rx) = mpsc::channel::<admin::Request>(16);
    if let Err(e) = admin::serve(&cfg.admin_socket, admin_tx) {
        tracing::warn!(socket = %cfg.admin_socket.display(), error = %e, "admin socket unavailable; `sbc stats` and `sbc allowlist` will not reach this daemon");
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("SIGHUP handler")?;
    tracing::info!(
        external_udp = ?cfg.external.udp, external_tcp = ?cfg.external.tcp,
        internal_udp = ?cfg.internal.udp, internal_tcp = ?cfg.internal.tcp,
        cores = ?cfg.engine.cores.iter().map(|c| c.addr).collect::<Vec<_>>(),
        "sbc running"
    );
    let mut int =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).context("SIGINT handler")?;
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
    let mut log_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    log_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let deadline = engine.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                if let Some(t) = trunk.as_mut() {
                    match t.reload() {
                        Ok(_) => engine.set_guard(Box::new(t.guard())),
                        Err(e) => tracing::error!(error = %e, "allowlist reload failed; the previous list stays"),
                    }
                }
            }
            Some(req) = admin_rx.recv() => {
                let answer = command(req.command, &mut engine, &mut trunk, &net);
                let _ = req.reply.send(answer);
            }
            input = rx.recv() => {
                let Some(input) = input else { break };
                let now = Instant::now();
                handle(&mut engine, &mut net, trunk.as_mut(), now, input);
                for _ in 0..BATCH {
                    match rx.try_recv() {
                        Ok(i) => handle(&mut engine, &mut net, trunk.as_mut(), now, i),
                        Err(_) => break,
                    }
                }
            }
            _ = sleep_until(deadline) => engine.handle_timeout(Instant::now()),
            _ = log_tick.tick() => crate::logsum::tick(),
        }
        while let Some(t) = engine.poll_transmit() {
            net.send(t);
        }
        while let Some(ev) = engine.poll_event() {
            log_event(ev);
        }
    }
    let (s, c, d, r) = engine.sizes();
    let st = engine.stats();
    tracing::info!(
        server_txns = s,
        client_txns = c,
        dialogs = d,
        registrations = r,
        tcp = net.connections(),
        requests_in = st.requests_in,
        responses_in = st.responses_in,
        rejected = st.rejected,
        dropped = st.dropped,
        "sbc stopping"
    );
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Executes an admin command on the engine task.
fn command(cmd: AdminCommand, engine: &mut Engine, trunk: &mut Option<Trunk>, net: &Net) -> Result<String, String> {
    match cmd {
        AdminCommand::Stats => {
            let st = engine.stats();
            let (s, c, d, r) = engine.sizes();
            let mut out = format!(
                "sip.requests_in {}\nsip.responses_in {}\nsip.requests_forwarded {}\nsip.responses_forwarded {}\n\
                 sip.local_replies {}\nsip.rejected {}\nsip.dropped {}\nsip.retransmissions_absorbed {}\n\
                 sip.retransmissions_sent {}\nstate.server_transactions {s}\nstate.client_transactions {c}\n\
                 state.dialogs {d}\nstate.registrations {r}\nstate.tcp_connections {}\n",
                st.requests_in,
                st.responses_in,
                st.requests_forwarded,
                st.responses_forwarded,
                st.local_replies,
                st.rejected,
                st.dropped,
                st.retransmissions_absorbed,
                st.retransmissions_sent,
                net.connections(),
            );
            if let Some(t) = trunk {
                out.push_str(&t.stats_text());
            }
            Ok(out)
        }
        AdminCommand::AllowlistShow => {
            trunk.as_ref().map(Trunk::show).ok_or_else(|| "no trunk.allowlist configured".to_string())
        }
        AdminCommand::AllowlistReload => {
            let t = trunk.as_mut().ok_or_else(|| "no trunk.allowlist configured".to_string())?;
            let msg = t.reload()?;
            engine.set_guard(Box::new(t.guard()));
            Ok(format!("{msg}\n"))
        }
    }
}

fn handle(engine: &mut Engine, net: &mut Net, trunk: Option<&mut Trunk>, now: Instant, input: Input) {
    if let (Input::Datagram { flow, .. } | Input::Stream { flow, .. }, Some(t)) = (&input, trunk)
        && !t.admits_packet(flow)
    {
        // Defence in depth behind XDP (and the only filter where XDP is absent): silent.
        return;
    }
    match input {
        Input::Datagram { flow, data } => engine.handle_datagram(now, flow, &data),
        Input::Stream { flow, data } => engine.handle_stream_message(now, flow, &data),
        Input::TransportError { flow, error } => {
            logsum::note("transport error", Some(flow.remote.ip()), || {
                format!("transport error toward {} ({}): {error}", flow.remote, flow.side.as_str())
            });
            engine.handle_transport_error(now, flow);
        }
        Input::Opened { key, id, tx } => net.opened(key, id, tx),
        Input::Closed { key, id } => net.closed(key, id),
    }
}

fn log_event(ev: Event) {
    match ev {
        Event::CoreUp { addr } => tracing::info!(%addr, "core is up"),
        Event::CoreDown { addr } => tracing::warn!(%addr, "core is down"),
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
