//! How the engine writes messages: the forwarded request and response (spliced from the
//! original), and the few it writes from scratch (ACK, CANCEL, OPTIONS probe, its own replies).

use super::{Config, Engine, Flow, Side};
use crate::sip::edit::Splice;
use crate::sip::message::{HeaderName, Message};
use crate::sip::sanity::Checked;
use crate::sip::uri::Transport;
use crate::sip::values;
use crate::topology::{rewrite_param, rewrite_uri_host};
use crate::transaction::ServerTxn;

/// `host:port` for our side address, IPv6 bracketed.
fn hostport(advertise: &str, flow: Flow) -> String {
    let port = flow.local.port();
    if advertise.contains(':') && !advertise.starts_with('[') {
        format!("[{advertise}]:{port}")
    } else {
        format!("{advertise}:{port}")
    }
}

pub(super) fn via_line(advertise: &str, flow: Flow, branch: &str) -> Vec<u8> {
    format!("SIP/2.0/{} {};branch={}", flow.transport.via_token(), hostport(advertise, flow), branch).into_bytes()
}

/// An SBC URI on a side: `<sip:token@host:port;transport=tcp>`.
pub(super) fn sbc_uri(advertise: &str, flow: Flow, token: Option<&str>, brackets: bool) -> Vec<u8> {
    let mut s = String::with_capacity(64);
    if brackets {
        s.push('<');
    }
    s.push_str("sip:");
    if let Some(t) = token {
        s.push_str(t);
        s.push('@');
    }
    s.push_str(&hostport(advertise, flow));
    if flow.transport == Transport::Tcp {
        s.push_str(";transport=tcp");
    }
    if brackets {
        s.push('>');
    }
    s.into_bytes()
}

/// The request's Via values, top first, to restore on its responses.
pub(super) fn via_values(msg: &Message<'_>) -> Vec<Vec<u8>> {
    msg.all(HeaderName::Via).map(|h| msg.unfolded(h).into_owned()).collect()
}

/// The first Contact's URI, without brackets.
pub(super) fn contact_uri(msg: &Message<'_>) -> Option<Vec<u8>> {
    let v = msg.unfolded(msg.first(HeaderName::Contact)?);
    let first = values::split_commas(&v).ok()?.into_iter().next()?;
    let elem = v.get(first)?;
    let na = values::name_addr(elem).ok()?;
    elem.get(na.uri).map(<[u8]>::to_vec)
}

/// Every Record-Route element, in message order.
pub(super) fn record_routes(msg: &Message<'_>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for h in msg.all(HeaderName::RecordRoute) {
        let v = msg.unfolded(h);
        if let Ok(parts) = values::split_commas(&v) {
            out.extend(parts.into_iter().filter_map(|r| v.get(r).map(<[u8]>::to_vec)));
        }
    }
    out
}

/// The internal side's addresses (the SBC's internal advertise and listen addresses, the
/// cores'): a To naming one of these toward a hidden external side is the core's view of the
/// callee (a registered user addressed at the core), never the destination's own URI.
pub(super) fn internal_hosts(cfg: &Config) -> Vec<Vec<u8>> {
    let mut hosts: Vec<String> = vec![cfg.internal.advertise.clone()];
    hosts.extend(cfg.internal.udp.iter().chain(cfg.internal.tcp.iter()).map(|a| a.ip().to_string()));
    hosts.extend(cfg.cores.iter().map(|c| c.addr.ip().to_string()));
    lower_hosts(hosts)
}

/// The hosts an identity sent to a hidden external side may keep: the configured public
/// domains and the SBC's own external names and addresses. Lower case; IPv6 both bare and
/// bracketed.
pub(super) fn public_hosts(cfg: &Config) -> Vec<Vec<u8>> {
    let mut hosts: Vec<String> = vec![cfg.external.advertise.clone()];
    hosts.extend(cfg.external.udp.iter().chain(cfg.external.tcp.iter()).map(|a| a.ip().to_string()));
    hosts.extend(cfg.public_domains.iter().cloned());
    lower_hosts(hosts)
}

/// Lower case, IPv6 both bare and bracketed, sorted, no duplicates.
fn lower_hosts(hosts: Vec<String>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for h in hosts {
        let h = h.to_ascii_lowercase();
        if h.contains(':') && !h.starts_with('[') {
            out.push(format!("[{h}]").into_bytes());
        }
        out.push(h.into_bytes());
    }
    out.sort();
    out.dedup();
    out
}

pub(super) fn replace_bytes(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len() + to.len());
    let mut i = 0;
    while i < hay.len() {
        if !from.is_empty() && hay.get(i..i + from.len()) == Some(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.extend(hay.get(i).copied());
            i += 1;
        }
    }
    out
}

/// Re-points our Via at a different flow of the same side (failover to another core).
pub(super) fn retarget_via(request: &[u8], advertise: &str, old: Flow, new: Flow) -> Vec<u8> {
    let a = format!("SIP/2.0/{} {}", old.transport.via_token(), hostport(advertise, old));
    let b = format!("SIP/2.0/{} {}", new.transport.via_token(), hostport(advertise, new));
    replace_bytes(request, a.as_bytes(), b.as_bytes())
}

/// §9.1 CANCEL / §17.1.1.3 ACK built from the INVITE we sent: same Request-URI, top Via, Route,
/// From, Call-ID and CSeq number; the ACK takes the To of the response.
pub(super) fn cancel_or_ack(invite: &[u8], method: &str, to: Option<&[u8]>, max_headers: usize) -> Option<Vec<u8>> {
    let m = Message::index(invite, max_headers).ok()?;
    let mut out = Vec::with_capacity(invite.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(m.request_uri());
    out.extend_from_slice(b" SIP/2.0\r\n");
    let mut cseq = None;
    for h in &m.headers {
        let v = m.slice(&h.value_span);
        match h.name {
            HeaderName::Via | HeaderName::Route | HeaderName::From | HeaderName::CallId => {
                out.extend_from_slice(h.name.canonical().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
            HeaderName::To => {
                out.extend_from_slice(b"To: ");
                out.extend_from_slice(to.unwrap_or(v));
                out.extend_from_slice(b"\r\n");
            }
            HeaderName::CSeq => cseq = values::cseq(v).ok().map(|(n, _)| n),
            _ => {}
        }
    }
    out.extend_from_slice(
        format!("CSeq: {} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n", cseq?).as_bytes(),
    );
    Some(out)
}

/// A final response the SBC makes for a server transaction whose request it no longer holds.
pub(super) fn local_response(st: &ServerTxn, code: u16, reason: &str) -> Vec<u8> {
    // §8.2.6.2: the request's Via, From, Call-ID and CSeq; its To with our tag added.
    let mut out = format!("SIP/2.0 {code} {reason}\r\n").into_bytes();
    let mut header = |name: &str, value: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    for v in &st.vias {
        header("Via", v);
    }
    header("From", &st.from);
    let mut to = st.to.clone();
    if rewrite_param(&to, "tag", |t| Some(t.to_vec())).is_none() {
        to.extend_from_slice(b";tag=");
        to.extend_from_slice(st.local_tag.as_bytes());
    }
    header("To", &to);
    header("Call-ID", &st.call_id);
    header("CSeq", &st.cseq);
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}

/// RFC 3261 §13.3.1.4: the BYE the SBC sends a callee whose 2xx was never ACKed, built from
/// that 2xx as the callee sent it (its From/To/Call-ID are the callee's view of the dialog).
pub(super) fn unacked_bye(
    advertise: &str,
    flow: Flow,
    branch: &str,
    resp: &Message<'_>,
    target: &[u8],
    route_set: &[Vec<u8>],
    cseq: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"BYE ");
    out.extend_from_slice(target);
    out.extend_from_slice(b" SIP/2.0\r\n");
    let mut header = |name: &str, value: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    header("Via", &via_line(advertise, flow, branch));
    for r in route_set {
        header("Route", r);
    }
    header("Max-Forwards", b"70");
    for name in [HeaderName::From, HeaderName::To, HeaderName::CallId] {
        if let Some(h) = resp.first(name) {
            header(name.canonical(), &resp.unfolded(h));
        }
    }
    header("CSeq", format!("{} BYE", cseq.wrapping_add(1)).as_bytes());
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}

pub(super) fn options_probe(advertise: &str, flow: Flow, branch: &str, tag: &str, call_id: &str) -> Vec<u8> {
    let target = match flow.remote {
        std::net::SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        a => a.to_string(),
    };
    let via = String::from_utf8_lossy(&via_line(advertise, flow, branch)).into_owned();
    let me = hostport(advertise, flow);
    format!(
        "OPTIONS sip:{target} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: <sip:sbc@{me}>;tag={tag}\r\n\
         To: <sip:{target}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Percent-encoding for a Replaces value inside a URI header part (RFC 3891 §4.1, RFC 3261 §19.1.1).
fn pct_encode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() + 16);
    for &b in v {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

fn pct_decode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while let Some(&b) = v.get(i) {
        if b == b'%'
            && let Some(h) = v
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    out
}

impl Engine {
    /// Masks or restores an identifier whose origin is unknown (inside Replaces): what we
    /// masked comes back; anything else is masked toward a hidden side. None means unchanged.
    fn cross(&self, v: &[u8], side: Side) -> Option<Vec<u8>> {
        self.masker.cross(v, self.side_cfg(side).hide)
    }

    /// An identifier created on side `native` going to side `to`: restored when going home,
    /// masked when leaving for a hidden side. None means unchanged.
    fn ident(&self, v: &[u8], native: Side, to: Side) -> Option<Vec<u8>> {
        if native == to {
            self.masker.unmask(v)
        } else if self.side_cfg(to).hide {
            Some(self.masker.mask(v))
        } else {
            None
        }
    }

    /// RFC 3891 Replaces value `call-id;to-tag=a;from-tag=b` with each identifier crossed.
    fn cross_replaces(&self, v: &[u8], side: Side) -> Vec<u8> {
        let mut parts = v.split(|&b| b == b';');
        let call_id = parts.next().unwrap_or_default();
        let mut out = self.cross(call_id, side).unwrap_or_else(|| call_id.to_vec());
        for p in parts {
            out.push(b';');
            let (k, val) = match p.iter().position(|&b| b == b'=') {
                Some(eq) => (p.get(..eq).unwrap_or_default(), p.get(eq + 1..)),
                None => (p, None),
            };
            out.extend_from_slice(k);
            if let Some(val) = val {
                out.push(b'=');
                let tagish = k.eq_ignore_ascii_case(b"to-tag") || k.eq_ignore_ascii_case(b"from-tag");
                match tagish.then(|| self.cross(val, side)).flatten() {
                    Some(x) => out.extend_from_slice(&x),
                    None => out.extend_from_slice(val),
                }
            }
        }
        out
    }

    /// Refer-To (RFC 3515): the target is re-pointed at us on the receiving side, so the
    /// referee's new request comes through the SBC; an embedded Replaces is crossed.
    fn cross_refer_to(&self, v: &[u8], to: Flow) -> Option<Vec<u8>> {
        let adv = hostport(&self.side_cfg(to.side).advertise, to);
        let mut out = rewrite_uri_host(v, |_| true, adv.as_bytes()).unwrap_or_else(|| v.to_vec());
        let key = b"Replaces=";
        if let Some(pos) = out.windows(key.len()).position(|w| w.eq_ignore_ascii_case(key)) {
            let start = pos + key.len();
            let end = out
                .get(start..)
                .and_then(|r| r.iter().position(|&b| b == b'&' || b == b'>'))
                .map_or(out.len(), |p| start + p);
            let decoded = pct_decode(out.get(start..end).unwrap_or_default());
            let crossed = pct_encode(&self.cross_replaces(&decoded, to.side));
            out.splice(start..end, crossed);
        }
        Some(out)
    }

    /// From/To (and identity headers): tags crossed, internal host names replaced toward a
    /// hidden external side; Call-ID crossed; configured headers stripped; body hook.
    ///
    /// `call_id_native` is the side that created the Call-ID (the dialog's caller, or the
    /// requester outside a dialog). In a request the From tag is the requester's, the To tag
    /// the other side's.
    fn cross_common(
        &mut self,
        s: &mut Splice<'_, '_>,
        c: &Checked<'_>,
        from: Side,
        to: Flow,
        call_id_native: Side,
        restore_to_host: Option<&[u8]>,
    ) {
        let hide = self.side_cfg(to.side).hide;
        let adv_own = self.cfg.external.advertise.clone();
        if let Some(v) = self.ident(&c.call_id, call_id_native, to.side) {
            s.set(HeaderName::CallId, &v);
        }
        let requester = from;
        let replace_hosts = hide && to.side == Side::External;
        let adv = self.cfg.external.advertise.clone();
        for (i, h) in c.msg.headers.iter().enumerate() {
            if !matches!(h.name, HeaderName::From | HeaderName::To) {
                continue;
            }
            let orig = c.msg.unfolded(h);
            let mut v = orig.to_vec();
            let tag_native = match h.name {
                HeaderName::From => Some(requester),
                HeaderName::To => Some(requester.other()),
                _ => None,
            };
            if let Some(native) = tag_native
                && let Some(x) = rewrite_param(&v, "tag", |t| self.ident(t, native, to.side))
            {
                v = x;
            }
            // The requester's identity (From) toward the outside gets the SBC's host; the To of a
            // request is the destination's own URI and stays, unless it names the internal side
            // (the core addressing a registered user at itself).
            if replace_hosts
                && h.name == HeaderName::From
                && let Some(x) = rewrite_uri_host(&v, |host| self.hides_host(host), adv.as_bytes())
            {
                v = x;
            }
            if replace_hosts
                && h.name == HeaderName::To
                && let Some(x) = rewrite_uri_host(
                    &v,
                    |host| self.internal_hosts.iter().any(|k| k.eq_ignore_ascii_case(host)),
                    adv.as_bytes(),
                )
            {
                v = x;
            }
            // Coming back in a dialog whose internal party's host we replaced: restored.
            if h.name == HeaderName::To
                && let Some(orig) = restore_to_host
                && let Some(x) = rewrite_uri_host(&v, |host| host.eq_ignore_ascii_case(adv_own.as_bytes()), orig)
            {
                v = x;
            }
            if v != *orig {
                s.replace_at(i, v);
            }
        }
        self.cross_others(s, c, from, to);
    }

    /// Whether `host` in an identity sent to a hidden external side is replaced by ours.
    pub(super) fn hides_host(&self, host: &[u8]) -> bool {
        !self.public_hosts.iter().any(|k| k.eq_ignore_ascii_case(host))
    }

    /// Identity headers other than From/To get their non-public hosts replaced toward a
    /// hidden external side; configured headers are stripped toward a hidden side; the body
    /// hook sees every body.
    fn cross_others(&mut self, s: &mut Splice<'_, '_>, c: &Checked<'_>, from: Side, to: Flow) {
        let hide = self.side_cfg(to.side).hide;
        if hide && to.side == Side::External {
            let adv = self.cfg.external.advertise.clone();
            for (i, h) in c.msg.headers.iter().enumerate() {
                let identity = h.name == HeaderName::ReferredBy
                    || (h.name == HeaderName::Other
                        && c.msg.slice(&h.name_span).eq_ignore_ascii_case(b"P-Asserted-Identity"));
                if identity
                    && let Some(x) = rewrite_uri_host(&c.msg.unfolded(h), |host| self.hides_host(host), adv.as_bytes())
                {
                    s.replace_at(i, x);
                }
            }
        }
        if hide {
            for name in &self.cfg.strip_headers {
                match HeaderName::from_bytes(name.as_bytes()) {
                    HeaderName::Other => s.remove_other(name),
                    n => s.remove(n),
                };
            }
        }
        if let Some(hook) = self.body_hook.as_mut()
            && !c.msg.body().is_empty()
        {
            let ct = c.msg.value(HeaderName::ContentType).unwrap_or_default();
            if let Some(b) = hook.rewrite(from, to.side, ct, c.msg.body()) {
                s.body(b);
            }
        }
    }

    /// §16.6 request forwarding, with topology hiding: one Via (ours), no Route/Record-Route of
    /// the requester's side, our Contact, identifiers crossed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build_request(
        &mut self,
        c: &Checked<'_>,
        from: Side,
        to: Flow,
        ruri: Option<&[u8]>,
        route_set: &[Vec<u8>],
        contact: Option<Vec<u8>>,
        branch: &str,
        call_id_native: Side,
        restore_to_host: Option<&[u8]>,
    ) -> Vec<u8> {
        let msg = &c.msg;
        let mut s = Splice::new(msg);
        if let Some(u) = ruri.filter(|u| !u.is_empty()) {
            s.request_uri(u);
        }
        s.remove(HeaderName::Via).remove(HeaderName::Route).remove(HeaderName::RecordRoute).remove(HeaderName::Path);
        let adv = self.side_cfg(to.side).advertise.clone();
        s.prepend("Via", &via_line(&adv, to, branch));
        for r in route_set {
            s.append("Route", r);
        }
        // §16.6 step 3.
        let mf = c.max_forwards.map_or(70, |m| m.saturating_sub(1));
        s.set(HeaderName::MaxForwards, mf.to_string().as_bytes());
        self.cross_common(&mut s, c, from, to, call_id_native, restore_to_host);
        if to.side == Side::External && self.cfg.strip_credentials {
            // Digest credentials answer the core's challenge; the other party has no use for them.
            s.remove_other("Authorization").remove_other("Proxy-Authorization");
        }
        match contact {
            Some(v) if msg.first(HeaderName::Contact).is_some() => {
                s.set(HeaderName::Contact, &v);
            }
            _ => {}
        }
        for (i, h) in msg.headers.iter().enumerate() {
            match h.name {
                HeaderName::ReferTo => {
                    if let Some(v) = self.cross_refer_to(&msg.unfolded(h), to) {
                        s.replace_at(i, v);
                    }
                }
                HeaderName::Replaces => {
                    let v = self.cross_replaces(&msg.unfolded(h), to.side);
                    s.replace_at(i, v);
                }
                _ => {}
            }
        }
        s.finish()
    }

    /// §16.7 response forwarding: our Via removed, the requester's Vias, From, To, Call-ID and
    /// Record-Route restored as it sent them (the To gaining the responder's tag, crossed), the
    /// responder's Record-Route and Contact replaced.
    pub(super) fn build_response(
        &mut self,
        c: &Checked<'_>,
        from: Side,
        st: &ServerTxn,
        contact: Option<Vec<u8>>,
    ) -> Vec<u8> {
        let msg = &c.msg;
        let to = st.flow;
        let mut s = Splice::new(msg);
        s.remove(HeaderName::Via).remove(HeaderName::RecordRoute);
        for v in &st.vias {
            s.prepend("Via", v);
        }
        s.set(HeaderName::From, &st.from);
        s.set(HeaderName::CallId, &st.call_id);
        let mut to_value = st.to.clone();
        if let Some(tag) = &c.to_tag
            && rewrite_param(&to_value, "tag", |t| Some(t.to_vec())).is_none()
        {
            to_value.extend_from_slice(b";tag=");
            to_value.extend_from_slice(&self.ident(tag, from, to.side).unwrap_or_else(|| tag.to_vec()));
        }
        s.set(HeaderName::To, &to_value);
        if (101..300).contains(&c.status().unwrap_or(0)) {
            for rr in &st.record_route {
                s.append("Record-Route", rr);
            }
        }
        self.cross_others(&mut s, c, from, to);
        match contact {
            Some(v) => {
                s.set(HeaderName::Contact, &v);
            }
            None => {
                s.remove(HeaderName::Contact);
            }
        }
        s.finish()
    }
}
