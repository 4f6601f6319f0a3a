//! The messages the engine writes from scratch (ACK, CANCEL, OPTIONS probe, the BYE for an
//! unACKed 2xx, its own replies) and what it reads out of messages for its state (Vias,
//! Contact, Record-Route). Forwarded messages are built by [`crate::topology`].

use super::Flow;
use crate::sip::message::{HeaderName, Message};
use crate::sip::values;
use crate::topology::{Topology, hostport, rewrite_param, via_line};
use crate::transaction::ServerTxn;

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

/// Re-points our Via at a different flow of the same side (failover to another core, perhaps
/// of the other family or transport).
pub(super) fn retarget_via(request: &[u8], topology: &Topology, old: Flow, new: Flow) -> Vec<u8> {
    let a = format!("SIP/2.0/{} {}", old.transport.via_token(), hostport(&topology.advertise(old), old));
    let b = format!("SIP/2.0/{} {}", new.transport.via_token(), hostport(&topology.advertise(new), new));
    replace_bytes(request, a.as_bytes(), b.as_bytes())
}

/// A final response the SBC makes for a server transaction whose request it no longer holds.
pub(super) fn local_response(st: &ServerTxn, code: u16, reason: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
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
    for (name, value) in extra {
        header(name, value);
    }
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

/// An OPTIONS of the SBC's own: a core probe (to the core's address) or a NAT keepalive ping
/// (to the UA's registered Contact, sent over its flow).
pub(super) fn options_probe(
    advertise: &str,
    flow: Flow,
    target: Option<&[u8]>,
    branch: &str,
    tag: &str,
    call_id: &str,
) -> Vec<u8> {
    let target = match (target, flow.remote) {
        (Some(uri), _) => String::from_utf8_lossy(uri).into_owned(),
        (None, std::net::SocketAddr::V6(a)) => format!("sip:[{}]:{}", a.ip(), a.port()),
        (None, a) => format!("sip:{a}"),
    };
    let via = String::from_utf8_lossy(&via_line(advertise, flow, branch)).into_owned();
    let me = hostport(advertise, flow);
    format!(
        "OPTIONS {target} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: <sip:sbc@{me}>;tag={tag}\r\n\
         To: <{target}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}
