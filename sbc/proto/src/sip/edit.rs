//! The splicing editor: a forwarded message is the original bytes with some header lines
//! dropped or replaced and some added, never a re-serialisation through a parser. Whatever the
//! proxy does not understand passes byte-exact (RFC 4475 §3.1.1.1: unknown headers unchanged).

use super::message::{HeaderName, Message};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Keep,
    Drop,
    Replace(Vec<u8>),
}

/// Builds one outgoing message from an indexed one.
#[derive(Debug)]
pub struct Splice<'m, 'a> {
    msg: &'m Message<'a>,
    start_line: Option<Vec<u8>>,
    actions: Vec<Action>,
    top: Vec<u8>,
    tail: Vec<u8>,
    body: Option<Vec<u8>>,
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
            top: Vec::new(),
            tail: Vec::new(),
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
                *a = if done { Action::Drop } else { Action::Replace(value.to_vec()) };
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
        let mut out = Vec::with_capacity(msg.buf.len() + self.top.len() + self.tail.len() + 64);
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
                Action::Replace(v) => {
                    let name = match h.name {
                        HeaderName::Other => std::str::from_utf8(msg.slice(&h.name_span)).unwrap_or("X-Invalid"),
                        n => n.canonical(),
                    };
                    push_header(&mut out, name, v);
                }
            }
        }
        out.extend_from_slice(&self.tail);
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
        out
    }
}

/// A response generated by the proxy itself (RFC 3261 §8.2.6, §16.7): Via, From, To, Call-ID
/// and CSeq copied from the request, a To tag added when the request had none.
pub fn reply(req: &Message<'_>, code: u16, reason: &str, to_tag: Option<&[u8]>, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"SIP/2.0 ");
    out.extend_from_slice(code.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in &req.headers {
        match h.name {
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
        let r = String::from_utf8(reply(&m, 483, "Too Many Hops", Some(b"xyz"), &[])).unwrap();
        assert!(r.starts_with("SIP/2.0 483 Too Many Hops\r\n"));
        assert!(r.contains("To: <sip:a>;tag=xyz\r\n"));
        assert!(r.ends_with("Content-Length: 0\r\n\r\n"));
    }
}
