//! The splicing editor: a forwarded message is the original bytes with some header lines
//! dropped or replaced and some added, never a re-serialisation through a parser. Whatever the
//! proxy does not understand passes byte-exact (RFC 4475 §3.1.1.1: unknown headers unchanged).

use std::net::{IpAddr, SocketAddr};

use super::message::{HeaderName, Message};
use super::values;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Keep,
    Drop,
    Replace(Vec<u8>),
    /// Replaced by `Splice::values[range]` (values given by reference are copied there, into
    /// one buffer per message instead of one allocation each).
    ReplaceWith(std::ops::Range<usize>),
}

/// Builds one outgoing message from an indexed one.
#[derive(Debug)]
pub struct Splice<'m, 'a> {
    msg: &'m Message<'a>,
    start_line: Option<Vec<u8>>,
    actions: Vec<Action>,
    top: Vec<u8>,
    tail: Vec<u8>,
    values: Vec<u8>,
    body: Option<Vec<u8>>,
}

/// The name a replaced header is written with: the canonical one, or as received.
fn header_name<'m>(msg: &Message<'m>, h: &super::message::Header) -> &'m str {
    match h.name {
        HeaderName::Other => std::str::from_utf8(msg.slice(&h.name_span)).unwrap_or("X-Invalid"),
        n => n.canonical(),
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

impl<'m, 'a> Splice<'m, 'a> {
    pub fn new(msg: &'m Message<'a>) -> Self {
        Splice {
            msg,
            start_line: None,
            actions: vec![Action::Keep; msg.headers.len()],
            top: Vec::with_capacity(128),
            tail: Vec::new(),
            values: Vec::new(),
            body: None,
        }
    }

    /// Replaces the Request-URI (requests only); the version is normalised to SIP/2.0.
    pub fn request_uri(&mut self, uri: &[u8]) -> &mut Self {
        let mut sl = Vec::with_capacity(uri.len() + 24);
        sl.extend_from_slice(self.msg.method_bytes());
        sl.push(b' ');
        sl.extend_from_slice(uri);
        sl.extend_from_slice(b" SIP/2.0");
        self.start_line = Some(sl);
        self
    }

    /// Drops every header with this name.
    pub fn remove(&mut self, name: HeaderName) -> &mut Self {
        for (h, a) in self.msg.headers.iter().zip(self.actions.iter_mut()) {
            if h.name == name {
                *a = Action::Drop;
            }
        }
        self
    }

    /// Drops every unknown header with this name (case-insensitive).
    pub fn remove_other(&mut self, name: &str) -> &mut Self {
        for (h, a) in self.msg.headers.iter().zip(self.actions.iter_mut()) {
            if h.name == HeaderName::Other && self.msg.slice(&h.name_span).eq_ignore_ascii_case(name.as_bytes()) {
                *a = Action::Drop;
            }
        }
        self
    }

    /// Replaces header number `idx` (index into `msg.headers`) with `name: value`.
    pub fn replace_at(&mut self, idx: usize, value: Vec<u8>) -> &mut Self {
        if let Some(a) = self.actions.get_mut(idx) {
            *a = Action::Replace(value);
        }
        self
    }

    /// Replaces the first header with this name and drops the others; appends if absent.
    pub fn set(&mut self, name: HeaderName, value: &[u8]) -> &mut Self {
        let mut done = false;
        for (h, a) in self.msg.headers.iter().zip(self.actions.iter_mut()) {
            if h.name == name {
                *a = if done {
                    Action::Drop
                } else {
                    let start = self.values.len();
                    self.values.extend_from_slice(value);
                    Action::ReplaceWith(start..self.values.len())
                };
                done = true;
            }
        }
        if !done {
            self.append(name.canonical(), value);
        }
        self
    }

    /// Adds a header before all others (where a proxy puts its Via, RFC 3261 §16.6 step 8).
    pub fn prepend(&mut self, name: &str, value: &[u8]) -> &mut Self {
        push_header(&mut self.top, name, value);
        self
    }

    pub fn append(&mut self, name: &str, value: &[u8]) -> &mut Self {
        push_header(&mut self.tail, name, value);
        self
    }

    pub fn body(&mut self, body: Vec<u8>) -> &mut Self {
        self.body = Some(body);
        self
    }

    /// Writes the message; Content-Length is always rewritten to the real body length.
    pub fn finish(&self) -> Vec<u8> {
        let msg = self.msg;
        let body = self.body.as_deref().unwrap_or(msg.body());
        // One allocation: the original, what is added, what replaced values and body may add.
        let replaced: usize = self
            .actions
            .iter()
            .map(|a| match a {
                Action::Replace(v) => v.len() + 24,
                Action::ReplaceWith(r) => r.len() + 24,
                _ => 0,
            })
            .sum();
        let cap = msg.buf.len() + self.top.len() + self.tail.len() + replaced + body.len() + 64;
        let mut out = Vec::with_capacity(cap);
        match &self.start_line {
            Some(sl) => out.extend_from_slice(sl),
            None => out.extend_from_slice(msg.slice(&msg.start_line)),
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.top);
        for (h, a) in msg.headers.iter().zip(self.actions.iter()) {
            if h.name == HeaderName::ContentLength {
                continue;
            }
            match a {
                Action::Keep => {
                    out.extend_from_slice(msg.slice(&h.line_span));
                    if !out.ends_with(b"\r\n") {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                Action::Drop => {}
                Action::Replace(v) => push_header(&mut out, header_name(msg, h), v),
                Action::ReplaceWith(r) => {
                    push_header(&mut out, header_name(msg, h), self.values.get(r.clone()).unwrap_or_default())
                }
            }
        }
        out.extend_from_slice(&self.tail);
        out.extend_from_slice(b"Content-Length: ");
        let mut digits = [0u8; 10];
        out.extend_from_slice(values::decimal(u32::try_from(body.len()).unwrap_or(u32::MAX), &mut digits));
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
        out
    }
}

/// The top Via of a received request, as its responses must carry it (RFC 3261 §18.2.1,
/// RFC 3581 §4): `received=<source IP>` when the sent-by host is not that IP, or when `rport`
/// is present; an empty `rport` filled with the source port. A `received`/`rport` value the
/// sender wrote itself is replaced. The IP is written without brackets (RFC 5118 §4.5).
/// `via` is one Via header value: only its first element is touched. A value that does not
/// parse is returned unchanged (sanity checks reject such requests before this).
pub fn stamp_via(via: &[u8], source: SocketAddr) -> Vec<u8> {
    let first = match values::split_commas(via) {
        Ok(ranges) => ranges.into_iter().next().map(|r| values::trim_range(via, r)),
        Err(_) => None,
    };
    let Some(first) = first else { return via.to_vec() };
    let elem = via.get(first.clone()).unwrap_or_default();
    let Ok(parsed) = values::via(elem) else { return via.to_vec() };
    let params_at = first.start + (parsed.params.as_ptr() as usize - elem.as_ptr() as usize);
    let rport = values::has_param(parsed.params, "rport");
    let host = parsed.host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")).unwrap_or(parsed.host);
    let same_ip = std::str::from_utf8(host).ok().and_then(|h| h.parse::<IpAddr>().ok()) == Some(source.ip());
    if same_ip && !rport {
        return via.to_vec();
    }
    let mut out = Vec::with_capacity(via.len() + 48);
    out.extend_from_slice(via.get(..params_at).unwrap_or_default());
    for (name, value) in values::params(parsed.params).map_while(Result::ok) {
        if name.eq_ignore_ascii_case(b"received") || name.eq_ignore_ascii_case(b"rport") {
            continue;
        }
        out.push(b';');
        out.extend_from_slice(name);
        if let Some(v) = value {
            out.push(b'=');
            out.extend_from_slice(v);
        }
    }
    out.extend_from_slice(b";received=");
    out.extend_from_slice(source.ip().to_string().as_bytes());
    if rport {
        out.extend_from_slice(b";rport=");
        out.extend_from_slice(source.port().to_string().as_bytes());
    }
    out.extend_from_slice(via.get(first.end..).unwrap_or_default());
    out
}

/// A response generated by the proxy itself (RFC 3261 §8.2.6, §16.7): Via, From, To, Call-ID
/// and CSeq copied from the request, a To tag added when the request had none, the top Via
/// stamped with where the request came from ([`stamp_via`]).
pub fn reply(
    req: &Message<'_>,
    source: SocketAddr,
    code: u16,
    reason: &str,
    to_tag: Option<&[u8]>,
    extra: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut top_via = true;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"SIP/2.0 ");
    out.extend_from_slice(code.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in &req.headers {
        match h.name {
            HeaderName::Via if top_via => {
                top_via = false;
                push_header(&mut out, "Via", &stamp_via(&req.unfolded(h), source));
            }
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                push_header(&mut out, h.name.canonical(), &req.unfolded(h));
            }
            HeaderName::To => {
                let v = req.unfolded(h);
                let mut v = v.into_owned();
                if let Some(tag) = to_tag {
                    let has_tag = super::values::name_addr(&v)
                        .ok()
                        .is_some_and(|na| v.get(na.params).is_some_and(|p| super::values::has_param(p, "tag")));
                    if !has_tag {
                        v.extend_from_slice(b";tag=");
                        v.extend_from_slice(tag);
                    }
                }
                push_header(&mut out, "To", &v);
            }
            _ => {}
        }
    }
    for (name, value) in extra {
        push_header(&mut out, name, value);
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] = b"INVITE sip:bob@b SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nX-Odd:  keep  me \r\nl: 3\r\nContact: <sip:a@a>\r\n\r\nabc";

    #[test]
    fn untouched_headers_are_copied_byte_exact() {
        let m = Message::index(REQ, 16).unwrap();
        let mut s = Splice::new(&m);
        s.remove(HeaderName::Via)
            .prepend("Via", b"SIP/2.0/UDP sbc;branch=z9hG4bKx")
            .set(HeaderName::Contact, b"<sip:t@sbc>");
        let out = s.finish();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "INVITE sip:bob@b SIP/2.0\r\nVia: SIP/2.0/UDP sbc;branch=z9hG4bKx\r\nX-Odd:  keep  me \r\nContact: <sip:t@sbc>\r\nContent-Length: 3\r\n\r\nabc"
        );
    }

    #[test]
    fn reply_adds_to_tag_once() {
        let m = Message::index(b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK2\r\nTo: <sip:a>\r\nFrom: <sip:b>;tag=1\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n", 16).unwrap();
        let r =
            String::from_utf8(reply(&m, "192.0.2.9:5060".parse().unwrap(), 483, "Too Many Hops", Some(b"xyz"), &[]))
                .unwrap();
        assert!(r.starts_with("SIP/2.0 483 Too Many Hops\r\n"));
        assert!(r.contains("To: <sip:a>;tag=xyz\r\n"));
        assert!(r.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn received_is_added_when_sent_by_is_not_the_source_rfc3261_18_2_1() {
        let src: SocketAddr = "203.0.113.50:5060".parse().unwrap();
        let v = stamp_via(b"SIP/2.0/UDP 192.168.77.2:5060;branch=z9hG4bKa", src);
        assert_eq!(v, b"SIP/2.0/UDP 192.168.77.2:5060;branch=z9hG4bKa;received=203.0.113.50");
        // Same IP, no rport: untouched.
        let v = stamp_via(b"SIP/2.0/UDP 203.0.113.50:5062;branch=z9hG4bKa", src);
        assert_eq!(v, b"SIP/2.0/UDP 203.0.113.50:5062;branch=z9hG4bKa");
        // A host name is never the source IP.
        let v = stamp_via(b"SIP/2.0/TCP pc.example.com;branch=z9hG4bKa", src);
        assert_eq!(v, b"SIP/2.0/TCP pc.example.com;branch=z9hG4bKa;received=203.0.113.50");
    }

    #[test]
    fn empty_rport_is_filled_and_received_added_rfc3581_4() {
        let src: SocketAddr = "203.0.113.50:40123".parse().unwrap();
        let v = stamp_via(b"SIP/2.0/UDP 192.168.77.2:5060;branch=z9hG4bKa;rport, SIP/2.0/UDP 10.1.1.1", src);
        assert_eq!(
            v,
            &b"SIP/2.0/UDP 192.168.77.2:5060;branch=z9hG4bKa;received=203.0.113.50;rport=40123, SIP/2.0/UDP 10.1.1.1"[..]
        );
        // rport with the same IP still gets received (RFC 3581 §4), and a forged value is replaced.
        let v = stamp_via(b"SIP/2.0/UDP 203.0.113.50:5060;rport=1;received=10.9.9.9;branch=z9hG4bKa", src);
        assert_eq!(v, b"SIP/2.0/UDP 203.0.113.50:5060;branch=z9hG4bKa;received=203.0.113.50;rport=40123");
    }

    #[test]
    fn ipv6_received_has_no_brackets_rfc5118_4_5() {
        let src: SocketAddr = "[2001:db8::9]:5060".parse().unwrap();
        let v = stamp_via(b"SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKa;rport", src);
        assert_eq!(v, b"SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKa;received=2001:db8::9;rport=5060");
        let v = stamp_via(b"SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKa", src);
        assert_eq!(v, b"SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKa");
    }
}
