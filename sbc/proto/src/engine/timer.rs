//! The engine's own timers (the transaction layer keeps its own): core probing, the wait for
//! a 2xx's ACK, the sweep of idle dialogs and expired bindings; and what happens when a client
//! transaction fails for good (timeout, transport error). Entries are never cancelled: a fired
//! entry re-checks the state it refers to (which records its own due times) and does nothing
//! when it is stale.

use std::time::Instant;

use super::*;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// RFC 3261 §13.3.1.4: the 2xx of the dialog with this token must have been ACKed by now.
    AckWait(String),
    /// OPTIONS probing of the cores.
    Probe,
    /// Expiry of dialogs and registrations.
    Sweep,
    /// NAT keepalive pings that are due.
    Ping,
}

impl Engine {
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

    pub(super) fn fire(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::Probe => self.probe(now),
            Timer::AckWait(token) => self.ack_timeout(now, token),
            Timer::Ping => {
                self.ping(now);
                self.schedule(now + PING_TICK, Timer::Ping);
            }
            Timer::Sweep => {
                self.dialogs.expire(now);
                self.regs.expire(now);
                self.report_ended(now);
                self.schedule(now + SWEEP, Timer::Sweep);
            }
        }
    }

    /// Timer B / F: no final response. Probes mark the core down; forwarded requests try the
    /// next core or get 408 (§16.8).
    pub(super) fn client_timed_out(&mut self, now: Instant, ct: ClientTxn) {
        self.client_failed(now, ct, 408, "Request Timeout");
    }

    /// A client transaction that will get no response: the next core when it was a core that
    /// failed and nothing was relayed yet, otherwise `code` to the requester.
    pub(super) fn client_failed(&mut self, now: Instant, ct: ClientTxn, code: u16, reason: &'static str) {
        match &ct.purpose {
            Purpose::Probe(idx) => {
                let idx = *idx;
                self.set_core(idx, false);
            }
            Purpose::Ping(token) => {
                if self.regs.ping_unanswered(token) {
                    tracing::info!(token = %token, remote = %ct.flow.remote, "registration ended: keepalive pings unanswered");
                }
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
                if let Some(sk) = &ct.server {
                    if ct.method == Method::Invite
                        && ctx.creates_dialog
                        && let Some(d) = &ctx.dialog
                    {
                        self.end_dialog_unconfirmed(now, d);
                    }
                    self.answer_server(now, sk, code, reason);
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
        // RFC 5626 §5.3: a registration whose flow failed is gone (the UA must register anew).
        let lost = self.regs.flow_failed(&flow);
        if lost > 0 {
            tracing::info!(remote = %flow.remote, bindings = lost, "registrations ended: their flow failed");
        }
        for key in keys {
            let Some(ct) = self.txns.take_client(&key) else { continue };
            let to_ua_flow = matches!(&ct.purpose, Purpose::Forward(c) if c.to_binding);
            let (code, reason) = if to_ua_flow { (430, "Flow Failed") } else { (503, "Service Unavailable") };
            self.client_failed(now, ct, code, reason);
        }
    }

    /// OPTIONS to every UA behind NAT whose ping is due: the request (and its answer) crosses
    /// the NAT and keeps the binding the UA's flow lives in from expiring.
    pub(super) fn ping(&mut self, now: Instant) {
        while let Some((token, flow, contact)) = self.regs.next_ping(now) {
            let branch = self.new_branch();
            let tag = self.random_hex();
            let call_id = self.random_hex();
            let advertise = self.topology.advertise(flow).into_owned();
            let data = build::options_probe(&advertise, flow, Some(&contact), &branch, &tag, &call_id);
            let ping =
                Outgoing { flow, method: Method::Options, data, branch, purpose: Purpose::Ping(token), server: None };
            self.start_client(now, ping);
        }
    }

    pub(super) fn probe(&mut self, now: Instant) {
        let Some(interval) = self.cfg.probe_interval else { return };
        for idx in 0..self.cores.len() {
            let Some(flow) = self.core_flow(idx) else { continue };
            let branch = self.new_branch();
            let tag = self.random_hex();
            let call_id = self.random_hex();
            let data = build::options_probe(&self.topology.advertise(flow), flow, None, &branch, &tag, &call_id);
            let probe =
                Outgoing { flow, method: Method::Options, data, branch, purpose: Purpose::Probe(idx), server: None };
            self.start_client(now, probe);
        }
        self.schedule(now + interval, Timer::Probe);
    }
}
