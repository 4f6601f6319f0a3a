//! Responses: what the transaction layer makes of them, failover on 503, and for relayed
//! ones the dialog and registration bookkeeping (dialogs created and confirmed, the unACKed-2xx
//! wait, bindings confirmed by the registrar) before the requester gets them.

use std::time::{Duration, Instant};

use super::*;

impl Engine {
    pub(super) fn on_response(&mut self, now: Instant, flow: Flow, resp: &Checked<'_>) {
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
            ClientStep::PingAnswered(token) => self.regs.ping_answered(&token),
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
    pub(super) fn fail_over(&mut self, now: Instant, key: &str) -> bool {
        let Some(ct) = self.txns.client(key) else { return false };
        let Some(next) = self.next_core(&ct.purpose) else { return false };
        let (method, flow, request, branch) = (ct.method, ct.flow, ct.request.clone(), ct.branch.clone());
        let Some((purpose, server)) = self.txns.detach(key) else { return false };
        self.restart_on_core(now, next, method, flow, &request, &branch, purpose, server);
        true
    }

    /// Dialog/registration bookkeeping, then the response goes to the requester. The forwarding
    /// context is lent out of the client transaction for the duration.
    pub(super) fn relay_response(&mut self, now: Instant, key: &str, resp: &Checked<'_>, code: u16) {
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
    pub(super) fn relay_with(
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
                Some(self.topology.contact(to_flow, dialog_token.as_deref()))
            }
        } else {
            None
        };
        let body = self
            .media_body(now, resp, dialog_token.as_deref(), from_flow.side, to_flow.side, Some(ctx.offer_in_request))
            .unwrap_or_else(|_| Some(Vec::new()));
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
                credentials: st.credentials,
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
    pub(super) fn upsert_dialog(
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
    pub(super) fn await_ack(&mut self, now: Instant, token: &str, responder: Flow, resp: &Checked<'_>) {
        let branch = self.new_branch();
        let deadline = now + self.cfg.timers.t64();
        let Some(d) = self.dialogs.get_mut(token) else { return };
        let leg = d.leg(responder.side);
        let adv = self.topology.advertise(responder);
        let bye = build::unacked_bye(&adv, responder, &branch, &resp.msg, &leg.target, &leg.route_set, resp.cseq);
        d.ack_wait = Some(AckWait { deadline, flow: responder, branch, bye });
        self.schedule(deadline, Timer::AckWait(token.to_string()));
    }

    pub(super) fn ack_timeout(&mut self, now: Instant, token: String) {
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
    /// with the expiry the registration cache grants (the registrar's, or the short one of a UA
    /// behind NAT); bindings follow the registrar.
    pub(super) fn registered_contacts(
        &mut self,
        now: Instant,
        resp: &Checked<'_>,
        ctx: &ForwardCtx,
        code: u16,
    ) -> Option<Vec<u8>> {
        if code >= 300 {
            self.regs.refused(&ctx.registration);
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
                if expires == 0 {
                    continue;
                }
                let Some((granted, b)) = self.regs.confirm(now, &token, expires) else { continue };
                out.push(request::contact_with_expires(&b.contact, params, granted));
                seen.push(token);
            }
        }
        for t in &ctx.registration {
            if !seen.contains(t) {
                // Unregistered, or not kept by the registrar: gone at once.
                self.regs.remove(t);
            }
        }
        (!out.is_empty()).then(|| out.join(&b", "[..]))
    }

    /// The next untried core for a request forwarded to a core, if one is up (or assumed up).
    pub(super) fn next_core(&self, purpose: &Purpose) -> Option<(usize, Flow)> {
        let Purpose::Forward(ctx) = purpose else { return None };
        ctx.core?;
        let next = self.pick_core(&ctx.tried)?;
        Some((next, self.core_flow(next)?))
    }

    /// Sends a request whose core failed to core `next` on a new client transaction (new
    /// branch, our Via re-pointed), for the same server transaction.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn restart_on_core(
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
        let data = build::retarget_via(&data, &self.topology, old_flow, flow);
        self.start_client(now, Outgoing { flow, method, data, branch, purpose, server });
    }

    /// Ends a dialog (the dialog layer's one place) and tells the media seam and the daemon.
    pub(super) fn end_dialog(&mut self, now: Instant, token: &str, why: DialogEnd) {
        self.dialogs.end(token, why);
        self.report_ended(now);
    }

    pub(super) fn end_dialog_unconfirmed(&mut self, now: Instant, token: &str) {
        self.dialogs.end_unconfirmed(token);
        self.report_ended(now);
    }

    pub(super) fn report_ended(&mut self, now: Instant) {
        while let Some((token, why)) = self.dialogs.poll_ended() {
            tracing::debug!(dialog = %token, ?why, "dialog ended");
            if let Some(m) = self.media.as_mut() {
                m.on_dialog_end(now, &token, why);
            }
            self.events.push_back(Event::DialogEnded { dialog: token, why });
        }
    }

    pub(super) fn set_core(&mut self, idx: usize, up: bool) {
        let Some(c) = self.cores.get_mut(idx) else { return };
        if c.up != up {
            c.up = up;
            let addr = c.target.addr;
            self.events.push_back(if up { Event::CoreUp { addr } } else { Event::CoreDown { addr } });
        }
    }
}
