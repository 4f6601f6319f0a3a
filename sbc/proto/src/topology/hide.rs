//! The hiding rules applied when a message crosses from one side to the other: what the
//! forwarded request and response keep, replace, mask or drop (RFC 3261 §16.6, §16.7, with
//! topology hiding), the SBC's own Via and URIs on each side, and the identity rules (which
//! hosts the outside may see). Pure functions of the message and [`Topology`]'s settings: the
//! state they need (the requester's Vias and identifiers, a dialog's replaced host) is passed
//! in by the layers that own it.

use std::borrow::Cow;
use std::net::IpAddr;

use super::{Masker, rewrite_param, rewrite_uri_host, uri_host_span};
use crate::flow::{Flow, Side};
use crate::sip::edit::Splice;
use crate::sip::message::HeaderName;
use crate::sip::sanity::Checked;
use crate::sip::uri::Transport;

/// How one side sees the SBC.
#[derive(Debug, Clone)]
pub struct SideView {
    /// Host written in our Via and Contact on this side. An IP literal is written on flows of
    /// its own family only (see [`Topology::advertise`]).
    pub advertise: String,
    /// Mask Call-ID and tags toward this side, strip configured headers, replace the other
    /// side's host names.
    pub hide: bool,
}

/// The hiding settings and the masker, fixed at start.
#[derive(Debug, Clone)]
pub struct Topology {
    masker: Masker,
    external: SideView,
    internal: SideView,
    /// Hosts left alone in identities sent to a hidden external side (lower case).
    public_hosts: Vec<Vec<u8>>,
    /// The internal side's own names and addresses and the cores' (lower case): replaced
    /// wherever they appear in From/To toward a hidden external side, the To included.
    internal_hosts: Vec<Vec<u8>>,
    /// The SBC's own external names and addresses (lower case): what a To from outside names
    /// when it carries a host we substituted.
    own_external: Vec<Vec<u8>>,
    strip_headers: Vec<String>,
    strip_credentials: bool,
    /// Each side's `advertise` as an IP address when it is one, parsed once (external, internal).
    advertise_ip: [Option<IpAddr>; 2],
}

/// What a forwarded request needs besides the message: where it goes and what crosses.
#[derive(Debug)]
pub struct Forward<'a> {
    pub from: Side,
    pub to: Flow,
    /// A new Request-URI (the dialog's remote target, a registered Contact), or unchanged.
    pub ruri: Option<&'a [u8]>,
    pub route_set: &'a [Vec<u8>],
    /// Our Contact, when the request has one.
    pub contact: Option<Vec<u8>>,
    pub branch: &'a str,
    /// The side that created the Call-ID (the dialog's caller, or the requester).
    pub call_id_native: Side,
    /// The internal party's own host, restored in the To of a request from outside.
    pub restore_to_host: Option<&'a [u8]>,
    /// Sent to a UA registered through the SBC: its To is the AOR as the core (registrar)
    /// writes it, so its host follows the identity rule (the SBC's unless public).
    pub to_registered: bool,
    /// A replacement body (the media layer's SDP), or the original.
    pub body: Option<Vec<u8>>,
}

/// Where a request's identities come from, for the identity rules (see [`Forward`]).
#[derive(Debug, Clone, Copy)]
struct Origins<'a> {
    call_id_native: Side,
    restore_to_host: Option<&'a [u8]>,
    to_registered: bool,
}

/// The requester's own view of a transaction, restored on the responses it gets.
#[derive(Debug)]
pub struct Requester<'a> {
    pub flow: Flow,
    pub vias: &'a [Vec<u8>],
    pub from: &'a [u8],
    pub to: &'a [u8],
    pub call_id: &'a [u8],
    pub record_route: &'a [Vec<u8>],
}

/// The settings [`Topology::new`] takes.
#[derive(Debug, Clone)]
pub struct Settings<'a> {
    pub secret: &'a [u8],
    /// The engine shard whose identifiers (masks, tokens) this topology writes.
    pub shard: u8,
    pub external: SideView,
    pub internal: SideView,
    /// The SBC's own external addresses (identities naming them are left alone).
    pub external_addrs: &'a [IpAddr],
    /// The SBC's internal addresses and the cores': never seen outside, in any header.
    pub internal_addrs: &'a [IpAddr],
    pub public_domains: &'a [String],
    pub strip_headers: Vec<String>,
    pub strip_credentials: bool,
}

impl Topology {
    pub fn new(s: Settings<'_>) -> Topology {
        let public_hosts = host_set(&s.external.advertise, s.external_addrs, s.public_domains);
        let internal_hosts = host_set(&s.internal.advertise, s.internal_addrs, &[]);
        let own_external = host_set(&s.external.advertise, s.external_addrs, &[]);
        let advertise_ip = [literal_ip(s.external.advertise.as_bytes()), literal_ip(s.internal.advertise.as_bytes())];
        Topology {
            advertise_ip,
            masker: Masker::for_shard(s.secret, s.shard),
            external: s.external,
            internal: s.internal,
            public_hosts,
            internal_hosts,
            own_external,
            strip_headers: s.strip_headers,
            strip_credentials: s.strip_credentials,
        }
    }

    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    pub fn side(&self, side: Side) -> &SideView {
        match side {
            Side::External => &self.external,
            Side::Internal => &self.internal,
        }
    }

    /// The host the SBC writes about itself on `flow` (Via, Contact, substituted hosts): the
    /// side's `advertise`, unless that is an IP address of the other family than the flow's,
    /// then the flow's own address. A peer is never handed an address of a family it does not
    /// speak on that flow (an IPv4-only core never sees an IPv6 address of ours, and the
    /// reverse). A flow on an unspecified address (`[::]`, `0.0.0.0`) keeps `advertise`
    /// (the config requires a usable one).
    pub fn advertise(&self, flow: Flow) -> Cow<'_, str> {
        let adv = &self.side(flow.side).advertise;
        let ip = match flow.side {
            Side::External => self.advertise_ip[0],
            Side::Internal => self.advertise_ip[1],
        };
        match ip {
            Some(ip) if ip.is_ipv4() != flow.local.is_ipv4() && !flow.local.ip().is_unspecified() => {
                Cow::Owned(flow.local.ip().to_string())
            }
            _ => Cow::Borrowed(adv),
        }
    }

    /// [`Topology::advertise`] as a URI host (an IPv6 address in brackets).
    fn advertise_host(&self, flow: Flow) -> Cow<'_, [u8]> {
        match self.advertise(flow) {
            adv if adv.contains(':') && !adv.starts_with('[') => Cow::Owned(format!("[{adv}]").into_bytes()),
            Cow::Borrowed(adv) => Cow::Borrowed(adv.as_bytes()),
            Cow::Owned(adv) => Cow::Owned(adv.into_bytes()),
        }
    }

    /// Our Contact toward a flow's side: the token, or no user part.
    pub fn contact(&self, to: Flow, token: Option<&str>) -> Vec<u8> {
        sbc_uri(&self.advertise(to), to, token, true)
    }

    /// Masks or restores an identifier whose origin is unknown (inside Replaces): what we
    /// masked comes back; anything else is masked toward a hidden side. None means unchanged.
    pub fn cross(&self, v: &[u8], side: Side) -> Option<Vec<u8>> {
        self.masker.cross(v, self.side(side).hide)
    }

    /// An identifier created on side `native` going to side `to`: restored when going home,
    /// masked when leaving for a hidden side. None means unchanged.
    pub fn ident(&self, v: &[u8], native: Side, to: Side) -> Option<Vec<u8>> {
        if native == to {
            self.masker.unmask(v)
        } else if self.side(to).hide {
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
        let adv = hostport(&self.advertise(to), to);
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
    /// hidden external side; Call-ID crossed; configured headers stripped.
    ///
    /// `call_id_native` is the side that created the Call-ID (the dialog's caller, or the
    /// requester outside a dialog). In a request the From tag is the requester's, the To tag
    /// the other side's.
    fn cross_common(&self, s: &mut Splice<'_, '_>, c: &Checked<'_>, from: Side, to: Flow, origins: Origins<'_>) {
        let Origins { call_id_native, restore_to_host, to_registered } = origins;
        let hide = self.side(to.side).hide;
        // A Call-ID naming an address of the other family (`id@2001:db8::10` toward an IPv4
        // core) is masked even toward a side that is not hidden: it would carry the other
        // side's address across. It is restored going home like any masked one.
        let call_id = self.ident(&c.call_id, call_id_native, to.side).or_else(|| {
            let host = c.call_id.rsplit(|&b| b == b'@').next().filter(|_| c.call_id.contains(&b'@'))?;
            (call_id_native != to.side && foreign_family(host, to)).then(|| self.masker.mask(&c.call_id))
        });
        if let Some(v) = call_id {
            s.set(HeaderName::CallId, &v);
        }
        let requester = from;
        let replace_hosts = hide && to.side == Side::External;
        let adv = self.advertise_host(to);
        let adv = &*adv;
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
            // The requester's identity (From) toward the outside gets the SBC's host unless it is
            // public; the To of a request is the destination's own URI and keeps its host unless
            // that is the core's or the SBC's internal address (an AOR at the core's IP).
            if replace_hosts
                && let Some(x) = rewrite_uri_host(
                    &v,
                    |host| match h.name {
                        HeaderName::From => self.hides_host(host),
                        _ if to_registered => self.hides_host(host),
                        _ => self.internal_hosts.iter().any(|k| k.eq_ignore_ascii_case(host)),
                    },
                    adv,
                )
            {
                v = x;
            }
            // Coming back in a dialog whose internal party's host we replaced: restored.
            if h.name == HeaderName::To
                && let Some(orig) = restore_to_host
                && let Some(x) =
                    rewrite_uri_host(&v, |host| self.own_external.iter().any(|k| k.eq_ignore_ascii_case(host)), orig)
            {
                v = x;
            }
            // An address of the other family than the flow's is of no use to the receiver (it
            // cannot reach it) and names the other side: ours instead (IPv4/IPv6 interworking).
            if let Some(x) = rewrite_uri_host(&v, |host| foreign_family(host, to), adv) {
                v = x;
            }
            if v != *orig {
                s.replace_at(i, v);
            }
        }
        self.cross_others(s, c, to);
    }

    /// Whether `host` in an identity sent to a hidden external side is replaced by ours.
    pub fn hides_host(&self, host: &[u8]) -> bool {
        !self.public_hosts.iter().any(|k| k.eq_ignore_ascii_case(host))
    }

    /// The `host[:port]` of an identity (a From value) that the identity rule replaces by ours
    /// toward a hidden external side; None when its host stays.
    pub fn hidden_hostport<'v>(&self, value: &'v [u8]) -> Option<&'v [u8]> {
        let (abs, host_start, host_end, end) = uri_host_span(value)?;
        let host = value.get(abs + host_start..abs + host_end)?;
        self.hides_host(host).then(|| value.get(abs + host_start..abs + end)).flatten()
    }

    /// Identity headers other than From/To get their non-public hosts replaced toward a
    /// hidden external side; configured headers are stripped toward a hidden side.
    fn cross_others(&self, s: &mut Splice<'_, '_>, c: &Checked<'_>, to: Flow) {
        let hide = self.side(to.side).hide;
        let replace_hosts = hide && to.side == Side::External;
        let adv = self.advertise_host(to);
        for (i, h) in c.msg.headers.iter().enumerate() {
            let identity = h.name == HeaderName::ReferredBy
                || (h.name == HeaderName::Other
                    && c.msg.slice(&h.name_span).eq_ignore_ascii_case(b"P-Asserted-Identity"));
            if !identity {
                continue;
            }
            let replaced = |host: &[u8]| (replace_hosts && self.hides_host(host)) || foreign_family(host, to);
            if let Some(x) = rewrite_uri_host(&c.msg.unfolded(h), replaced, &adv) {
                s.replace_at(i, x);
            }
        }
        if hide {
            for name in &self.strip_headers {
                match HeaderName::from_bytes(name.as_bytes()) {
                    HeaderName::Other => s.remove_other(name),
                    n => s.remove(n),
                };
            }
        }
    }

    /// §16.6 request forwarding, with topology hiding: one Via (ours), no Route/Record-Route of
    /// the requester's side, our Contact, identifiers crossed, credentials kept off the
    /// external side.
    pub fn build_request(&self, c: &Checked<'_>, f: Forward<'_>) -> Vec<u8> {
        let Forward {
            from,
            to,
            ruri,
            route_set,
            contact,
            branch,
            call_id_native,
            restore_to_host,
            to_registered,
            body,
        } = f;
        let msg = &c.msg;
        let mut s = Splice::new(msg);
        if let Some(u) = ruri.filter(|u| !u.is_empty()) {
            s.request_uri(u);
        } else if let Some(u) = rewrite_uri_host(msg.request_uri(), |host| foreign_family(host, to), &{
            // A Request-URI naming an address of the other family (the SBC's own, as phones
            // address it): the SBC's address on the receiving flow, port included.
            let mut hp = self.advertise_host(to).into_owned();
            hp.extend_from_slice(format!(":{}", to.local.port()).as_bytes());
            hp
        }) {
            s.request_uri(&u);
        }
        s.remove(HeaderName::Via).remove(HeaderName::Route).remove(HeaderName::RecordRoute).remove(HeaderName::Path);
        let adv = self.advertise(to);
        s.prepend("Via", &via_line(&adv, to, branch));
        for r in route_set {
            s.append("Route", r);
        }
        // §16.6 step 3.
        let mf = c.max_forwards.map_or(70, |m| m.saturating_sub(1));
        s.set(HeaderName::MaxForwards, mf.to_string().as_bytes());
        self.cross_common(&mut s, c, from, to, Origins { call_id_native, restore_to_host, to_registered });
        if to.side == Side::External && self.strip_credentials {
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
        if let Some(b) = body {
            s.body(b);
        }
        s.finish()
    }

    /// §16.7 response forwarding: our Via removed, the requester's Vias, From, To, Call-ID and
    /// Record-Route restored as it sent them (the To gaining the responder's tag, crossed), the
    /// responder's Record-Route and Contact replaced.
    pub fn build_response(
        &self,
        c: &Checked<'_>,
        from: Side,
        st: &Requester<'_>,
        contact: Option<Vec<u8>>,
        body: Option<Vec<u8>>,
    ) -> Vec<u8> {
        let msg = &c.msg;
        let to = st.flow;
        let mut s = Splice::new(msg);
        s.remove(HeaderName::Via).remove(HeaderName::RecordRoute);
        for v in st.vias {
            s.prepend("Via", v);
        }
        s.set(HeaderName::From, st.from);
        s.set(HeaderName::CallId, st.call_id);
        let mut to_value = st.to.to_vec();
        if let Some(tag) = &c.to_tag
            && rewrite_param(&to_value, "tag", |t| Some(t.to_vec())).is_none()
        {
            to_value.extend_from_slice(b";tag=");
            to_value.extend_from_slice(&self.ident(tag, from, to.side).unwrap_or_else(|| tag.to_vec()));
        }
        s.set(HeaderName::To, &to_value);
        if (101..300).contains(&c.status().unwrap_or(0)) {
            for rr in st.record_route {
                s.append("Record-Route", rr);
            }
        }
        self.cross_others(&mut s, c, to);
        match contact {
            Some(v) => {
                s.set(HeaderName::Contact, &v);
            }
            None => {
                s.remove(HeaderName::Contact);
            }
        }
        if let Some(b) = body {
            s.body(b);
        }
        s.finish()
    }
}

/// `host:port` for our side address, IPv6 bracketed.
pub fn hostport(advertise: &str, flow: Flow) -> String {
    let mut out = String::with_capacity(advertise.len() + 8);
    push_hostport(&mut out, advertise, flow);
    out
}

/// Appends `host:port` (see [`hostport`]) without the formatting machinery: it is on every
/// forwarded message's path.
fn push_hostport(out: &mut String, advertise: &str, flow: Flow) {
    let bracket = advertise.contains(':') && !advertise.starts_with('[');
    if bracket {
        out.push('[');
    }
    out.push_str(advertise);
    if bracket {
        out.push(']');
    }
    out.push(':');
    push_u32(out, u32::from(flow.local.port()));
}

/// Appends `n` in decimal.
fn push_u32(out: &mut String, n: u32) {
    let mut buf = [0u8; 10];
    for &d in crate::sip::values::decimal(n, &mut buf) {
        out.push(char::from(d));
    }
}

/// Our Via on a flow: `SIP/2.0/UDP host:port;branch=…`.
pub fn via_line(advertise: &str, flow: Flow, branch: &str) -> Vec<u8> {
    let mut out = String::with_capacity(advertise.len() + branch.len() + 32);
    out.push_str("SIP/2.0/");
    out.push_str(flow.transport.via_token());
    out.push(' ');
    push_hostport(&mut out, advertise, flow);
    out.push_str(";branch=");
    out.push_str(branch);
    out.into_bytes()
}

/// An SBC URI on a side: `<sip:token@host:port;transport=tcp>`.
pub fn sbc_uri(advertise: &str, flow: Flow, token: Option<&str>, brackets: bool) -> Vec<u8> {
    let mut s = String::with_capacity(64);
    if brackets {
        s.push('<');
    }
    s.push_str("sip:");
    if let Some(t) = token {
        s.push_str(t);
        s.push('@');
    }
    push_hostport(&mut s, advertise, flow);
    if flow.transport == Transport::Tcp {
        s.push_str(";transport=tcp");
    }
    if brackets {
        s.push('>');
    }
    s.into_bytes()
}

/// The address of a URI host that is an IP literal (`192.0.2.1`, `[2001:db8::1]`, the RFC
/// 5118 §4.10 three-colon form too); None for a name.
fn literal_ip(host: &[u8]) -> Option<IpAddr> {
    if let Some(inner) = host.strip_prefix(b"[") {
        return crate::sip::values::ipv6_address(inner.strip_suffix(b"]")?).map(IpAddr::V6);
    }
    let s = std::str::from_utf8(host).ok()?;
    // A bare IPv6 address is how `advertise` may be written (a URI host never is: RFC 5118 §4.2).
    s.parse().ok()
}

/// Whether `host` is an IP address of the other family than the flow it is sent on.
fn foreign_family(host: &[u8], flow: Flow) -> bool {
    // Without a colon a host is a name or an IPv4 address: never foreign on an IPv4 flow.
    if flow.local.is_ipv4() && !host.contains(&b':') {
        return false;
    }
    literal_ip(host).is_some_and(|ip| ip.is_ipv4() != flow.local.is_ipv4())
}

/// The hosts an identity sent to a hidden external side may keep: the configured public
/// domains and the SBC's own external names and addresses. Lower case; IPv6 both bare and
/// bracketed.
fn host_set(advertise: &str, addrs: &[IpAddr], names: &[String]) -> Vec<Vec<u8>> {
    let mut hosts: Vec<String> = vec![advertise.to_owned()];
    hosts.extend(addrs.iter().map(IpAddr::to_string));
    hosts.extend(names.iter().cloned());
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
