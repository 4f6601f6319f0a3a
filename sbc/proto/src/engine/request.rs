//! Requests: retransmissions and ACK/CANCEL matching through the transaction layer, the
//! guard, routing (dialog, registration, core, address), forwarding on a client transaction,
//! REGISTER's Contact tokens, the SBC's own answers.

use std::time::{Duration, Instant};

use super::*;

impl Engine {
    pub(super) fn on_request(&mut self, now: Instant, flow: Flow, req: &Checked<'_>) {
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
            Admit::Reject { code, reason, retry_after } => {
                let secs = retry_after.map(|s| s.to_string());
                let extra: Vec<(&str, &[u8])> =
                    secs.as_deref().map(|s| ("Retry-After", s.as_bytes())).into_iter().collect();
                return self.local_reply(now, flow, req, code, reason, &extra);
            }
            Admit::Drop => return self.drop_msg(flow, "refused by guard".into()),
            Admit::Rewrite(bytes) => {
                let checked = Message::index(&bytes, self.cfg.limits.max_headers)
                    .map_err(SipError::from)
                    .and_then(|m| sanity::check(m).map_err(|bad| bad.1));
                return match checked {
                    Ok(c) if c.branch == req.branch && c.sent_by == req.sent_by && c.method == req.method => {
                        self.admitted(now, flow, &c, key)
                    }
                    Ok(_) => self.drop_msg(flow, "the guard's rewrite changed the transaction".into()),
                    Err(e) => self.drop_msg(flow, format!("the guard's rewrite does not parse: {e}")),
                };
            }
        }
        self.admitted(now, flow, req, key);
    }

    /// A request the guard let through (possibly rewritten): overload shedding, the SBC's own
    /// answers, routing and forwarding.
    fn admitted(&mut self, now: Instant, flow: Flow, req: &Checked<'_>, key: ServerKey) {
        if let Some(o) = self.overload
            && self.sheddable(req, flow)
        {
            return self.shed(flow, req, o);
        }
        // A REGISTER's Contacts, parsed once: for the registration cache's own answer, else for
        // forwarding (where a malformed list gets its 400 from the server transaction).
        let mut register = None;
        if req.method == Method::Register {
            let list = self.register_contact_list(req);
            if let Ok(l) = &list
                && self.absorb_register(now, flow, req, l)
            {
                return;
            }
            register = Some(list);
        }
        if req.method == Method::Options && req.to_tag.is_none() && self.addressed_to_sbc(req, flow) {
            // RFC 3261 §11.2: an OPTIONS naming the SBC itself (a keepalive, a health check) is
            // answered by the SBC, not relayed to the core.
            return self.local_reply(now, flow, req, 200, "OK", &[("Allow", ALLOW), ("Accept", b"application/sdp")]);
        }
        // The bound is on requests in progress; answered transactions that only linger to
        // absorb retransmissions (64·T1 over UDP) are bounded at the same number by ending the
        // oldest early. Counting them against new work refused every new call once the rate
        // times 32 s passed the limit — at 3125 calls/s with the default 200000, CPU idle
        // (issue 16).
        self.txns.evict_lingering(self.cfg.max_transactions);
        if self.txns.pending_server() >= self.cfg.max_transactions {
            self.events.push_back(Event::Overload { what: "transactions" });
            return self.local_reply(now, flow, req, 503, "Service Unavailable", &[("Retry-After", b"5")]);
        }
        let route = match self.route_request(req, flow) {
            Ok(r) => r,
            Err((code, reason)) => return self.local_reply(now, flow, req, code, reason, &[]),
        };
        // §16.2: a stateful proxy answers INVITE with 100 Trying itself (and again to its
        // retransmissions).
        let trying = (req.method == Method::Invite).then(|| reply(&req.msg, flow.remote, 100, "Trying", None, &[]));
        if let Some(t) = &trying {
            self.send(flow, t.clone());
        }
        let local_tag = self.random_hex();
        let mut vias = build::via_values(&req.msg);
        if let Some(top) = vias.first_mut() {
            // §18.2.1 / RFC 3581 §4: responses tell the UA where its request came from.
            *top = crate::sip::edit::stamp_via(top, flow.remote);
        }
        let header = |n: HeaderName| req.msg.first(n).map(|h| req.msg.unfolded(h).into_owned()).unwrap_or_default();
        let st = ServerTxn {
            flow,
            method: req.method,
            vias,
            from: header(HeaderName::From),
            to: header(HeaderName::To),
            call_id: req.call_id.to_vec(),
            cseq: header(HeaderName::CSeq),
            record_route: if req.method.creates_dialog() { build::record_routes(&req.msg) } else { Vec::new() },
            state: ServerState::Proceeding,
            last_response: trying,
            client: None,
            local_tag,
            retransmit: None,
            expires: now + self.cfg.timers.t64() * 3,
            reply_to: (flow.transport != Transport::Udp).then(|| SocketAddr::new(flow.remote.ip(), req.sent_by_port)),
            credentials: has_credentials(&req.msg),
        };
        self.txns.insert_server(key.clone(), st);
        if let Err((code, reason)) = self.forward_request(now, flow, req, route, key.clone(), register) {
            self.answer_server(now, &key, code, reason);
        }
    }

    /// Under overload: whether `req` would start new work (see [`Engine::set_overload`]).
    fn sheddable(&self, req: &Checked<'_>, flow: Flow) -> bool {
        if req.to_tag.is_some() {
            return false;
        }
        match req.method {
            Method::Ack | Method::Cancel | Method::Bye | Method::Prack => false,
            // A health check or keepalive the SBC answers itself costs no state.
            Method::Options => !self.addressed_to_sbc(req, flow),
            _ => true,
        }
    }

    /// 503 + Retry-After (RFC 3261 §21.5.4), stateless and without an event per request (a
    /// burst would turn into a log flood): the daemon logs entering and leaving overload, the
    /// counter says how many were shed.
    fn shed(&mut self, flow: Flow, req: &Checked<'_>, o: Overload) {
        let mut digits = [0u8; 10];
        let secs = crate::sip::values::decimal(o.retry_after, &mut digits);
        let tag = self.random_hex();
        let resp =
            reply(&req.msg, flow.remote, 503, "Service Unavailable", Some(tag.as_bytes()), &[("Retry-After", secs)]);
        self.send(flow, resp);
        self.stats.overload_shed += 1;
    }

    /// A Request-URI without a user part whose host and port are the address the request
    /// arrived on (or the side's advertised host): the request is for the SBC itself.
    pub(super) fn addressed_to_sbc(&self, req: &Checked<'_>, flow: Flow) -> bool {
        let Ok(target) = SipUri::parse(req.msg.request_uri()) else { return false };
        if target.user.is_some() {
            return false;
        }
        let port = target.port_or_default();
        let host_is_ours = match &target.host {
            uri::Host::Ip(ip) => *ip == flow.local.ip(),
            uri::Host::Name(n) => n.eq_ignore_ascii_case(&self.side_cfg(flow.side).advertise),
        };
        host_is_ours && port == flow.local.port()
    }

    pub(super) fn route_request(&self, req: &Checked<'_>, flow: Flow) -> Result<Route, (u16, &'static str)> {
        let ruri = req.msg.request_uri();
        if let Some(user) = uri::user_part(ruri).and_then(|u| std::str::from_utf8(u).ok()) {
            if self.dialogs.contains(user) {
                return Ok(Route::Dialog(user.to_string()));
            }
            if let Some(b) = self.regs.get(user)
                && b.side != flow.side
            {
                return Ok(Route::Binding(user.to_string()));
            }
            if req.to_tag.is_none() && Masker::is_token(b'r', user.as_bytes()) && !self.dialogs.contains(user) {
                // A registration we no longer hold (expired, unregistered, its NAT binding lost):
                // the UA is not reachable now (RFC 3261 §21.4.18).
                return Err((480, "Temporarily Unavailable"));
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
                let ours = [&self.cfg.external, &self.cfg.internal].iter().any(|c| c.listens_on(remote));
                if ours {
                    // A Request-URI naming the SBC itself without a token of ours: it would loop.
                    return Err((482, "Loop Detected"));
                }
                let transport = target.transport.unwrap_or(Transport::Udp);
                let local = self.cfg.external.local_for(transport, remote).ok_or((503, "Service Unavailable"))?;
                Ok(Route::Address(Flow { side: Side::External, transport, local, remote }))
            }
        }
    }

    /// The first core that is up and not yet tried; without probing, cores are assumed up.
    pub(super) fn pick_core(&self, tried: &[usize]) -> Option<usize> {
        let candidates = || self.cores.iter().enumerate().filter(|(i, _)| !tried.contains(i));
        candidates()
            .find(|(_, c)| c.up)
            .or_else(|| if self.cfg.probe_interval.is_none() { candidates().next() } else { None })
            .map(|(i, _)| i)
    }

    pub(super) fn core_flow(&self, idx: usize) -> Option<Flow> {
        let c = self.cores.get(idx)?;
        let local = self.cfg.internal.local_for(c.target.transport, c.target.addr)?;
        Some(Flow { side: Side::Internal, transport: c.target.transport, local, remote: c.target.addr })
    }

    /// Builds and sends the forwarded request on a new client transaction. `register`: a
    /// REGISTER's parsed Contacts (None for any other method).
    pub(super) fn forward_request(
        &mut self,
        now: Instant,
        flow: Flow,
        req: &Checked<'_>,
        route: Route,
        server: ServerKey,
        register: Option<Result<RegisterContacts, Refusal>>,
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
                let b = self.regs.get(token).ok_or((480, "Temporarily Unavailable"))?;
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
                ctx.internal_host = req
                    .msg
                    .first(HeaderName::From)
                    .and_then(|h| self.topology.hidden_hostport(&req.msg.unfolded(h)).map(<[u8]>::to_vec));
            }
        }
        // Before anything is built or held for the request: the media seam may refuse it (its
        // offer cannot be anchored: the relay is full, or the SDP is unusable).
        let body = match self.media_body(now, req, ctx.dialog.as_deref(), flow.side, to_flow.side, None) {
            Ok(b) => b,
            Err(MediaRefusal { code, reason, retry_after }) => {
                let secs = retry_after.map(|s| s.to_string());
                let extra: Vec<(&str, &[u8])> =
                    secs.as_deref().map(|s| ("Retry-After", s.as_bytes())).into_iter().collect();
                self.answer_server_with(now, &server, code, reason, &extra);
                return Ok(());
            }
        };
        let contact = if let Some(list) = register {
            let (value, tokens) = self.register_contacts(now, flow, to_flow, req, list?)?;
            ctx.registration = tokens;
            self.stats.registers_forwarded += 1;
            value
        } else {
            Some(self.topology.contact(to_flow, ctx.dialog.as_deref()))
        };
        let branch = self.new_branch();
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
                to_registered: ctx.to_binding,
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
    pub(super) fn start_client(&mut self, now: Instant, req: Outgoing) -> String {
        let probe_timeout = self.cfg.probe_timeout;
        self.txns.start_client(now, req, probe_timeout, &mut self.out)
    }

    /// The media seam's replacement for a body crossing sides (None: unchanged, or no body), or
    /// its refusal of the request carrying it (see [`BodyVerdict::Refuse`]: a response or an
    /// ACK is never refused, its body is emptied instead). `answered_offer`: for a response,
    /// whether its request carried a body.
    pub(super) fn media_body(
        &mut self,
        now: Instant,
        c: &Checked<'_>,
        dialog: Option<&str>,
        from: Side,
        to: Side,
        answered_offer: Option<bool>,
    ) -> Result<Option<Vec<u8>>, MediaRefusal> {
        let Some(hook) = self.media.as_mut() else { return Ok(None) };
        let body = c.msg.body();
        if body.is_empty() {
            return Ok(None);
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
        match hook.on_body(now, &crossing) {
            BodyVerdict::Keep => Ok(None),
            BodyVerdict::Replace(b) => Ok(Some(b)),
            BodyVerdict::Refuse { code, reason, retry_after } if c.status().is_none() && c.method != Method::Ack => {
                Err(MediaRefusal { code, reason, retry_after })
            }
            BodyVerdict::Refuse { .. } => Ok(Some(Vec::new())),
        }
    }

    /// The Contacts of a REGISTER, each with the token the registrar will know it by: the UA's
    /// RFC 5626 instance and reg-id when it sends them, else the AOR, the REGISTER's Call-ID and
    /// the Contact's position — so a device re-registering from a changed NAT port or with a
    /// changed Contact refreshes one binding at the registrar instead of adding one.
    pub(super) fn register_contact_list(&self, req: &Checked<'_>) -> Result<RegisterContacts, Refusal> {
        let aor = req.msg.value(HeaderName::To).unwrap_or_default();
        let default_expires = req.msg.value(HeaderName::Expires).and_then(|v| values::parse_u32_lenient(v).ok());
        let mut list = RegisterContacts::default();
        let mut index = 0u32;
        for h in req.msg.all(HeaderName::Contact) {
            let v = req.msg.unfolded(h);
            if &*v == b"*" {
                list.star = true;
                continue;
            }
            for r in values::split_commas(&v).map_err(|_| (400, "Bad Request"))? {
                let elem = v.get(r).unwrap_or_default();
                let na = values::name_addr(elem).map_err(|_| (400, "Bad Request"))?;
                let uri = elem.get(na.uri.clone()).unwrap_or_default().to_vec();
                let params = elem.get(na.params.clone()).unwrap_or_default().to_vec();
                let masker = self.topology.masker();
                let token = match (values::param(&params, "+sip.instance"), values::param(&params, "reg-id")) {
                    (Some(instance), reg_id) => masker.token(b'r', &[aor, instance, reg_id.unwrap_or_default()]),
                    (None, _) => masker.token(b'r', &[aor, &req.call_id, &index.to_le_bytes()]),
                };
                index += 1;
                // RFC 3261 §10.2.1.1: the Contact's parameter, else the header, else 3600.
                let expires = values::param(&params, "expires")
                    .and_then(|e| values::parse_u32_lenient(e).ok())
                    .or(default_expires)
                    .unwrap_or(3600);
                list.contacts.push(RegisterContact { uri, params, token, expires });
            }
        }
        Ok(list)
    }

    /// RFC 5626-style edge registration: a refresh from a UA behind NAT that the registration
    /// cache may answer itself (see [`crate::registration`]) gets its 200 here.
    pub(super) fn absorb_register(
        &mut self,
        now: Instant,
        flow: Flow,
        req: &Checked<'_>,
        list: &RegisterContacts,
    ) -> bool {
        if self.cfg.nat.register_expiry.is_none() || self.regs.is_empty() || list.star {
            return false;
        }
        let requested = list.contacts.iter().map(|c| c.expires).min().unwrap_or(0);
        let keys: Vec<(&str, &[u8])> = list.contacts.iter().map(|c| (c.token.as_str(), c.uri.as_slice())).collect();
        let Some(grant) = self.regs.absorb(now, &flow, &req.call_id, req.cseq, &keys, requested) else {
            return false;
        };
        let contact = list
            .contacts
            .iter()
            .map(|c| contact_with_expires(&c.uri, &c.params, grant))
            .collect::<Vec<_>>()
            .join(&b", "[..]);
        let expires = grant.to_string();
        self.local_reply(now, flow, req, 200, "OK", &[("Contact", &contact), ("Expires", expires.as_bytes())]);
        true
    }

    /// REGISTER: each Contact becomes a token URI on the registrar's side (§10.2.1); the
    /// registration cache remembers the UA's real Contact and flow, and whether it is behind NAT.
    pub(super) fn register_contacts(
        &mut self,
        now: Instant,
        flow: Flow,
        to: Flow,
        req: &Checked<'_>,
        list: RegisterContacts,
    ) -> Result<(Option<Vec<u8>>, Vec<String>), Refusal> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        if list.star {
            out.push(b"*".to_vec());
        }
        let contact_ip = list.contacts.first().and_then(|c| match SipUri::parse(&c.uri).ok()?.host {
            uri::Host::Ip(ip) => Some(ip),
            uri::Host::Name(_) => None,
        });
        let sent_by = req.sent_by.as_slice();
        let sent_by_host = sent_by.iter().rposition(|&b| b == b':').and_then(|i| sent_by.get(..i)).unwrap_or(sent_by);
        let claims = nat::Claims { via_host: sent_by_host, via_port: req.sent_by_port, contact_ip };
        let nat = nat::behind_nat(self.side_cfg(flow.side).nat, &flow, &claims);
        let mut tokens = Vec::new();
        for c in list.contacts {
            let pending = now + self.cfg.timers.t64();
            let reg = Registering {
                token: &c.token,
                side: flow.side,
                contact: c.uri,
                flow,
                nat,
                call_id: &req.call_id,
                cseq: req.cseq,
            };
            if self.regs.register(reg, pending).is_err() {
                self.events.push_back(Event::Overload { what: "registrations" });
                return Err((503, "Service Unavailable"));
            }
            let mut e = self.topology.contact(to, Some(&c.token));
            e.extend_from_slice(&c.params);
            out.push(e);
            tokens.push(c.token);
        }
        Ok(((!out.is_empty()).then(|| out.join(&b", "[..])), tokens))
    }

    pub(super) fn forward_ack(&mut self, now: Instant, flow: Flow, req: &Checked<'_>) {
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
        let contact = Some(self.topology.contact(to.flow, Some(&route)));
        // An ACK cannot be refused: a refused answer in it is forwarded as an empty body.
        let body =
            self.media_body(now, req, Some(&route), flow.side, to.flow.side, None).unwrap_or_else(|_| Some(Vec::new()));
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
                to_registered: false,
                body,
            },
        );
        self.send(to.flow, data);
        self.stats.requests_forwarded += 1;
    }

    /// §9.2: `cancel_key` is the CANCEL's own transaction; the INVITE it cancels has the same
    /// branch and sent-by (§17.2.3).
    pub(super) fn on_cancel(&mut self, now: Instant, flow: Flow, req: &Checked<'_>, cancel_key: ServerKey) {
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
                credentials: false,
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
    pub(super) fn send_cancel(&mut self, now: Instant, invite_key: &str) {
        self.txns.cancel(now, invite_key, &mut self.out);
    }

    /// Finishes a server transaction with a response the SBC makes itself (408, 503...).
    pub(super) fn answer_server(&mut self, now: Instant, key: &ServerKey, code: u16, reason: &str) {
        self.answer_server_with(now, key, code, reason, &[]);
    }

    /// As [`Self::answer_server`], with `extra` header fields (e.g. a Retry-After).
    pub(super) fn answer_server_with(
        &mut self,
        now: Instant,
        key: &ServerKey,
        code: u16,
        reason: &str,
        extra: &[(&str, &[u8])],
    ) {
        let Some(st) = self.txns.server(key) else { return };
        let resp = build::local_response(st, code, reason, extra);
        let outcome = Final {
            requester: st.flow,
            method: st.method,
            code,
            by_sbc: true,
            credentials: st.credentials,
            to: &st.to,
            call_id: &st.call_id,
            dialog: None,
        };
        self.guard.on_final(now, &outcome);
        self.txns.respond(now, key, code, resp, &mut self.out);
        self.stats.local_replies += 1;
    }
}

/// The media seam's refusal of a request (see [`BodyVerdict::Refuse`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct MediaRefusal {
    pub code: u16,
    pub reason: &'static str,
    pub retry_after: Option<u32>,
}

/// A REGISTER's Contacts (see [`Engine::register_contact_list`]).
#[derive(Debug, Default)]
pub(super) struct RegisterContacts {
    /// `Contact: *` (remove every binding, RFC 3261 §10.2.2).
    pub star: bool,
    pub contacts: Vec<RegisterContact>,
}

#[derive(Debug)]
pub(super) struct RegisterContact {
    pub uri: Vec<u8>,
    /// The Contact's header parameters as sent (`;expires=..;+sip.instance=..`).
    pub params: Vec<u8>,
    pub token: String,
    /// The expiry asked for (RFC 3261 §10.2.1.1).
    pub expires: u32,
}

/// `<uri>` with the UA's parameters, its `expires` replaced by `expires`.
pub(super) fn contact_with_expires(uri: &[u8], params: &[u8], expires: u32) -> Vec<u8> {
    let mut e = Vec::with_capacity(uri.len() + params.len() + 16);
    e.push(b'<');
    e.extend_from_slice(uri);
    e.push(b'>');
    for p in values::params(params).map_while(Result::ok) {
        if p.0.eq_ignore_ascii_case(b"expires") {
            continue;
        }
        e.push(b';');
        e.extend_from_slice(p.0);
        if let Some(v) = p.1 {
            e.push(b'=');
            e.extend_from_slice(v);
        }
    }
    e.extend_from_slice(format!(";expires={expires}").as_bytes());
    e
}

/// The request carries Authorization or Proxy-Authorization (RFC 3261 §22.2, §22.3).
pub(super) fn has_credentials(msg: &Message<'_>) -> bool {
    msg.other("Authorization").is_some() || msg.other("Proxy-Authorization").is_some()
}
