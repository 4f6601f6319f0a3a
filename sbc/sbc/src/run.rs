//! The engine task: owns the sans-IO engine, feeds it socket input and timer ticks, puts its
//! transmits on the wire, and turns its events into logs.

use std::time::Instant;

use anyhow::Context;
use sbc_proto::engine::{Engine, Event, Side};
use tokio::sync::mpsc;

use crate::config::Validated;
use crate::net::{Input, Net, StreamSettings};

/// How many queued inputs are handled before transmits are flushed (batching under load).
const BATCH: usize = 64;

pub fn run(cfg: Validated) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    rt.block_on(main_loop(cfg))
}

async fn main_loop(cfg: Validated) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Input>(4096);
    let settings = StreamSettings {
        limits: cfg.engine.limits,
        idle: cfg.tcp_idle,
        max_connections: cfg.max_tcp_connections,
    };
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
    tracing::info!(
        external_udp = ?cfg.external.udp, external_tcp = ?cfg.external.tcp,
        internal_udp = ?cfg.internal.udp, internal_tcp = ?cfg.internal.tcp,
        cores = ?cfg.engine.cores.iter().map(|c| c.addr).collect::<Vec<_>>(),
        "sbc running"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
    loop {
        let deadline = engine.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            input = rx.recv() => {
                let Some(input) = input else { break };
                let now = Instant::now();
                handle(&mut engine, &mut net, now, input);
                for _ in 0..BATCH {
                    match rx.try_recv() {
                        Ok(i) => handle(&mut engine, &mut net, now, i),
                        Err(_) => break,
                    }
                }
            }
            _ = sleep_until(deadline) => engine.handle_timeout(Instant::now()),
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
        server_txns = s, client_txns = c, dialogs = d, registrations = r, tcp = net.connections(),
        requests_in = st.requests_in, responses_in = st.responses_in, rejected = st.rejected, dropped = st.dropped,
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

fn handle(engine: &mut Engine, net: &mut Net, now: Instant, input: Input) {
    match input {
        Input::Datagram { flow, data } => engine.handle_datagram(now, flow, &data),
        Input::Stream { flow, data } => engine.handle_stream_message(now, flow, &data),
        Input::Opened { key, id, tx } => net.opened(key, id, tx),
        Input::Closed { key, id } => net.closed(key, id),
    }
}

fn log_event(ev: Event) {
    match ev {
        Event::CoreUp { addr } => tracing::info!(%addr, "core is up"),
        Event::CoreDown { addr } => tracing::warn!(%addr, "core is down"),
        Event::Overload { what } => tracing::warn!(what, "limit reached: answering 503"),
        Event::Rejected { flow, code, error } => {
            tracing::debug!(side = flow.side.as_str(), src = %flow.remote, code, error, "request rejected")
        }
        Event::Dropped { flow, reason } => {
            tracing::debug!(side = flow.side.as_str(), src = %flow.remote, reason, "message dropped")
        }
    }
}
