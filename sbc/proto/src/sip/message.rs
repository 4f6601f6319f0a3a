//! The header index: one pass over a framed message that records where the start line, every
//! header (name, value, whole line including folded continuations) and the body are, without
//! copying. Nothing here decides validity beyond what is needed to find boundaries; `sanity`
//! judges, `framer` bounds.

use std::borrow::Cow;
use std::ops::Range;

use super::method::Method;

/// Offsets into the message buffer. `u32` keeps the index small; messages are bounded far below 4 GiB.
pub type Span = Range<u32>;

fn span(r: Range<usize>) -> Span {
    // Messages are bounded by `Limits::max_message_bytes` (≤ 64 KiB by validation) long before here.
    (r.start as u32)..(r.end as u32)
}

/// RFC 3261 §7.3.3 compact forms and the full names the proxy needs to recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Contact,
    ContentLength,
    ContentType,
    ContentEncoding,
    Route,
    RecordRoute,
    Require,
    ProxyRequire,
    Supported,
    Unsupported,
    Expires,
    UserAgent,
    Server,
    ReferTo,
    ReferredBy,
    Replaces,
    Event,
    AllowEvents,
    Subject,
    SessionExpires,
    Path,
    Other,
}

impl HeaderName {
    /// Case-insensitive lookup, compact forms included (RFC 3261 §7.3.3, RFC 3515, RFC 4028).
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        if name.len() == 1 {
            return match name.first().map(u8::to_ascii_lowercase) {
                Some(b'v') => HeaderName::Via,
                Some(b'f') => HeaderName::From,
                Some(b't') => HeaderName::To,
                Some(b'i') => HeaderName::CallId,
                Some(b'm') => HeaderName::Contact,
                Some(b'l') => HeaderName::ContentLength,
                Some(b'c') => HeaderName::ContentType,
                Some(b'e') => HeaderName::ContentEncoding,
                Some(b'k') => HeaderName::Supported,
                Some(b's') => HeaderName::Subject,
                Some(b'r') => HeaderName::ReferTo,
                Some(b'b') => HeaderName::ReferredBy,
                Some(b'o') => HeaderName::Event,
                Some(b'u') => HeaderName::AllowEvents,
                Some(b'x') => HeaderName::SessionExpires,
                _ => HeaderName::Other,
            };
        }
        // Bucketed by length: at most five names to compare, most buckets one or two.
        let candidates: &[(&[u8], HeaderName)] = match name.len() {
            2 => &[(b"to", HeaderName::To)],
            3 => &[(b"via", HeaderName::Via)],
            4 => &[(b"from", HeaderName::From), (b"cseq", HeaderName::CSeq), (b"path", HeaderName::Path)],
            5 => &[(b"route", HeaderName::Route), (b"event", HeaderName::Event)],
            6 => &[(b"server", HeaderName::Server)],
            7 => &[
                (b"call-id", HeaderName::CallId),
                (b"contact", HeaderName::Contact),
                (b"require", HeaderName::Require),
                (b"expires", HeaderName::Expires),
                (b"subject", HeaderName::Subject),
            ],
            8 => &[(b"refer-to", HeaderName::ReferTo), (b"replaces", HeaderName::Replaces)],
            9 => &[(b"supported", HeaderName::Supported)],
            10 => &[(b"user-agent", HeaderName::UserAgent)],
            11 => &[(b"unsupported", HeaderName::Unsupported), (b"referred-by", HeaderName::ReferredBy)],
            12 => &[
                (b"max-forwards", HeaderName::MaxForwards),
                (b"record-route", HeaderName::RecordRoute),
                (b"content-type", HeaderName::ContentType),
                (b"allow-events", HeaderName::AllowEvents),
            ],
            13 => &[(b"proxy-require", HeaderName::ProxyRequire)],
            14 => &[(b"content-length", HeaderName::ContentLength)],
            15 => &[(b"session-expires", HeaderName::SessionExpires)],
            16 => &[(b"content-encoding", HeaderName::ContentEncoding)],
            _ => &[],
        };
        if candidates.is_empty() {
            return HeaderName::Other;
        }
        // Lower-cased once (a known name has at most 16 bytes), then plain comparisons.
        let mut lower = [0u8; 16];
        lower.iter_mut().zip(name).for_each(|(d, s)| *d = s.to_ascii_lowercase());
        let lower = lower.get(..name.len()).unwrap_or_default();
        candidates.iter().find(|(n, _)| *n == lower).map_or(HeaderName::Other, |(_, h)| *h)
    }

    /// The canonical spelling used when the proxy writes a header of its own.
    pub fn canonical(self) -> &'static str {
        match self {
            HeaderName::Via => "Via",
            HeaderName::From => "From",
            HeaderName::To => "To",
            HeaderName::CallId => "Call-ID",
            HeaderName::CSeq => "CSeq",
            HeaderName::MaxForwards => "Max-Forwards",
            HeaderName::Contact => "Contact",
            HeaderName::ContentLength => "Content-Length",
            HeaderName::ContentType => "Content-Type",
            HeaderName::ContentEncoding => "Content-Encoding",
            HeaderName::Route => "Route",
            HeaderName::RecordRoute => "Record-Route",
            HeaderName::Require => "Require",
            HeaderName::ProxyRequire => "Proxy-Require",
            HeaderName::Supported => "Supported",
            HeaderName::Unsupported => "Unsupported",
            HeaderName::Expires => "Expires",
            HeaderName::UserAgent => "User-Agent",
            HeaderName::Server => "Server",
            HeaderName::ReferTo => "Refer-To",
            HeaderName::ReferredBy => "Referred-By",
            HeaderName::Replaces => "Replaces",
            HeaderName::Event => "Event",
            HeaderName::AllowEvents => "Allow-Events",
            HeaderName::Subject => "Subject",
            HeaderName::SessionExpires => "Session-Expires",
            HeaderName::Path => "Path",
            HeaderName::Other => "",
        }
    }
}

/// One header line (with its folded continuations).
#[derive(Debug, Clone)]
pub struct Header {
    pub name: HeaderName,
    /// The name as written.
    pub name_span: Span,
    /// The value: after the colon and leading whitespace, up to the final CRLF, folds included.
    pub value_span: Span,
    /// The whole line(s) including the terminating CRLF, for splicing.
    pub line_span: Span,
    /// The value needs [`unfold`] (a fold, a tab, two spaces in a row): decided once while
    /// indexing, so [`Message::unfolded`] of the common, plain value is a borrow and no scan.
    pub folded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

/// Why a buffer could not be indexed at all (as opposed to indexed but insane: `sanity`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("empty message")]
    Empty,
    #[error("start line is not a SIP request or status line")]
    BadStartLine,
    #[error("more than {max} header lines")]
    TooManyHeaders { max: usize },
    #[error("header line {line} has no colon or no name")]
    BadHeaderLine { line: usize },
}

/// An indexed SIP message borrowing its bytes.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub buf: &'a [u8],
    pub kind: Kind,
    /// Request: method token. Response: "SIP/2.0"-like version token.
    pub start: [Span; 3],
    pub start_line: Span,
    pub headers: Vec<Header>,
    /// A header line that could not be split into name and value (index into lines), kept so
    /// `sanity` can answer 400 with the headers that did parse.
    pub bad_header_line: Option<usize>,
    /// True when the header section ended with an empty line (CRLF CRLF).
    pub terminated: bool,
    /// Where the body starts (end of the empty line) — or end of buffer when not terminated.
    pub body_start: u32,
}

pub(crate) fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Finds the next CRLF at or after `from`; returns the index of CR.
pub(crate) fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let hay = buf.get(from..)?;
    let mut i = 0;
    while let Some(pos) = hay.get(i..).and_then(|h| memchr::memchr(b'\r', h)) {
        let at = i + pos;
        if hay.get(at + 1) == Some(&b'\n') {
            return Some(from + at);
        }
        i = at + 1;
    }
    None
}

pub(crate) fn trim(buf: &[u8], mut r: Range<usize>) -> Range<usize> {
    while r.start < r.end && buf.get(r.start).is_some_and(|b| b.is_ascii_whitespace()) {
        r.start += 1;
    }
    while r.end > r.start && buf.get(r.end - 1).is_some_and(|b| b.is_ascii_whitespace()) {
        r.end -= 1;
    }
    r
}

impl<'a> Message<'a> {
    /// Indexes `buf`, which must start at the start line (leading CRLFs already skipped by the
    /// framer). At most `max_headers` header lines are accepted.
    pub fn index(buf: &'a [u8], max_headers: usize) -> Result<Message<'a>, IndexError> {
        if buf.is_empty() {
            return Err(IndexError::Empty);
        }
        let sl_end = find_crlf(buf, 0).unwrap_or(buf.len());
        let line = buf.get(..sl_end).ok_or(IndexError::BadStartLine)?;
        let (kind, start) = parse_start_line(line)?;
        let mut headers = Vec::with_capacity(16);
        let mut bad_header_line = None;
        let mut pos = (sl_end + 2).min(buf.len());
        let mut terminated = false;
        let mut body_start = buf.len();
        let mut line_no = 0usize;
        while pos < buf.len() {
            // Empty line: end of the header section.
            if buf.get(pos..pos + 2) == Some(b"\r\n") {
                terminated = true;
                body_start = pos + 2;
                break;
            }
            line_no += 1;
            // A header spans this line and every following line starting with SP/HTAB (folding).
            let mut end = find_crlf(buf, pos).unwrap_or(buf.len());
            while end + 2 < buf.len() && buf.get(end + 2).copied().is_some_and(is_ws) {
                end = find_crlf(buf, end + 2).unwrap_or(buf.len());
            }
            let line_end = (end + 2).min(buf.len());
            let this = pos..end;
            pos = line_end;
            let Some(colon) = buf.get(this.clone()).and_then(|l| memchr::memchr(b':', l)) else {
                bad_header_line.get_or_insert(line_no);
                continue;
            };
            let name = trim(buf, this.start..this.start + colon);
            let name_bytes = buf.get(name.clone()).unwrap_or_default();
            if name.is_empty() || !name_bytes.iter().all(|&b| is_token_char(b)) {
                bad_header_line.get_or_insert(line_no);
                continue;
            }
            if headers.len() >= max_headers {
                return Err(IndexError::TooManyHeaders { max: max_headers });
            }
            let value = trim(buf, this.start + colon + 1..this.end);
            let folded = needs_unfold(buf.get(value.clone()).unwrap_or_default());
            headers.push(Header {
                name: HeaderName::from_bytes(name_bytes),
                name_span: span(name),
                value_span: span(value),
                line_span: span(this.start..line_end),
                folded,
            });
        }
        Ok(Message {
            buf,
            kind,
            start,
            start_line: span(0..sl_end),
            headers,
            bad_header_line,
            terminated,
            body_start: body_start as u32,
        })
    }

    pub fn slice(&self, s: &Span) -> &'a [u8] {
        self.buf.get(s.start as usize..s.end as usize).unwrap_or_default()
    }

    pub fn is_request(&self) -> bool {
        self.kind == Kind::Request
    }

    /// Request method (requests only).
    pub fn method(&self) -> Method {
        match self.kind {
            Kind::Request => Method::from_bytes(self.slice(&self.start[0])),
            Kind::Response => Method::Other,
        }
    }
    pub fn method_bytes(&self) -> &'a [u8] {
        self.slice(&self.start[0])
    }
    /// Request-URI (requests only), as written.
    pub fn request_uri(&self) -> &'a [u8] {
        self.slice(&self.start[1])
    }
    /// The SIP-Version token of a request.
    pub fn request_version(&self) -> &'a [u8] {
        self.slice(&self.start[2])
    }
    /// Status code of a response, None if it is not three digits.
    pub fn status(&self) -> Option<u16> {
        if self.kind != Kind::Response {
            return None;
        }
        let c = self.slice(&self.start[1]);
        if c.len() != 3 || !c.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(c).ok()?.parse().ok()
    }
    pub fn reason(&self) -> &'a [u8] {
        self.slice(&self.start[2])
    }

    pub fn all(&self, name: HeaderName) -> impl Iterator<Item = &Header> + '_ {
        self.headers.iter().filter(move |h| h.name == name)
    }
    pub fn first(&self, name: HeaderName) -> Option<&Header> {
        self.headers.iter().find(|h| h.name == name)
    }
    /// Raw value (folds included) of the first header with this name.
    pub fn value(&self, name: HeaderName) -> Option<&'a [u8]> {
        self.first(name).map(|h| self.slice(&h.value_span))
    }
    /// Value with folding collapsed to single spaces (RFC 3261 §7.3.1).
    pub fn unfolded(&self, h: &Header) -> Cow<'a, [u8]> {
        let v = self.slice(&h.value_span);
        if h.folded { unfold(v) } else { Cow::Borrowed(v) }
    }
    pub fn other(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name == HeaderName::Other && self.slice(&h.name_span).eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| self.slice(&h.value_span))
    }

    /// Every bytes after the header section (the framer has already cut it to Content-Length).
    pub fn body(&self) -> &'a [u8] {
        self.buf.get(self.body_start as usize..).unwrap_or_default()
    }
}

/// Collapses LWS (CRLF followed by whitespace, runs of SP/HTAB) into one SP.
pub fn unfold(v: &[u8]) -> Cow<'_, [u8]> {
    if !needs_unfold(v) {
        return Cow::Borrowed(v);
    }
    let mut out = Vec::with_capacity(v.len());
    let mut in_ws = false;
    for &b in v {
        if b == b'\r' || b == b'\n' || is_ws(b) {
            if !in_ws {
                out.push(b' ');
                in_ws = true;
            }
        } else {
            out.push(b);
            in_ws = false;
        }
    }
    Cow::Owned(out)
}

/// Whether [`unfold`] would change `v`: a CR, LF or HTAB, or two spaces in a row. One pass
/// over the bytes; the common, unfolded value costs no allocation.
fn needs_unfold(v: &[u8]) -> bool {
    memchr::memchr3(b'\r', b'\n', b'\t', v).is_some()
        || memchr::memchr_iter(b' ', v).any(|i| v.get(i + 1) == Some(&b' '))
}

/// RFC 3261 §25.1 token characters.
pub fn is_token_char(b: u8) -> bool {
    TOKEN_CHARS.get(usize::from(b)).copied().unwrap_or(false)
}

/// [`is_token_char`] as a table: it is asked for every byte of every header name and parameter.
// A u8 index into 256 entries, in a constant: it cannot panic (`get_mut` is not const).
#[allow(clippy::indexing_slicing)]
static TOKEN_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0u8;
    loop {
        t[b as usize] = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~');
        if b == u8::MAX {
            break t;
        }
        b += 1;
    }
};

fn parse_start_line(line: &[u8]) -> Result<(Kind, [Span; 3]), IndexError> {
    // Split on single SPs; the third part (version / reason phrase) takes the rest.
    let sp1 = line.iter().position(|&b| b == b' ').ok_or(IndexError::BadStartLine)?;
    let rest_from = sp1 + 1;
    if line.starts_with(b"SIP/") {
        let rest = line.get(rest_from..).unwrap_or_default();
        let sp2 = rest.iter().position(|&b| b == b' ');
        let (code, reason) = match sp2 {
            Some(p) => (rest_from..rest_from + p, rest_from + p + 1..line.len()),
            None => (rest_from..line.len(), line.len()..line.len()),
        };
        return Ok((Kind::Response, [span(0..sp1), span(code), span(reason)]));
    }
    let method = 0..sp1;
    if method.is_empty() {
        return Err(IndexError::BadStartLine);
    }
    // The Request-URI is everything up to the last SP: `sanity` rejects embedded LWS and a bad
    // version; indexing stays permissive so a 400 can still be built.
    let last_sp = line.iter().rposition(|&b| b == b' ').ok_or(IndexError::BadStartLine)?;
    if last_sp <= sp1 {
        // No version at all: "METHOD uri".
        return Ok((Kind::Request, [span(method), span(rest_from..line.len()), span(line.len()..line.len())]));
    }
    Ok((Kind::Request, [span(method), span(rest_from..last_sp), span(last_sp + 1..line.len())]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_long_names_map_to_the_same_header() {
        assert_eq!(HeaderName::from_bytes(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"VIA"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"i"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"Call-Id"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"l"), HeaderName::ContentLength);
        assert_eq!(HeaderName::from_bytes(b"X-Foo"), HeaderName::Other);
        // Every name the proxy knows comes back from its canonical spelling, in any case.
        let all = [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
            HeaderName::MaxForwards,
            HeaderName::Contact,
            HeaderName::ContentLength,
            HeaderName::ContentType,
            HeaderName::ContentEncoding,
            HeaderName::Route,
            HeaderName::RecordRoute,
            HeaderName::Require,
            HeaderName::ProxyRequire,
            HeaderName::Supported,
            HeaderName::Unsupported,
            HeaderName::Expires,
            HeaderName::UserAgent,
            HeaderName::Server,
            HeaderName::ReferTo,
            HeaderName::ReferredBy,
            HeaderName::Replaces,
            HeaderName::Event,
            HeaderName::AllowEvents,
            HeaderName::Subject,
            HeaderName::SessionExpires,
            HeaderName::Path,
        ];
        for h in all {
            assert_eq!(HeaderName::from_bytes(h.canonical().as_bytes()), h, "{h:?}");
            assert_eq!(HeaderName::from_bytes(h.canonical().to_ascii_uppercase().as_bytes()), h, "{h:?}");
        }
    }

    #[test]
    fn folded_header_value_spans_continuation_lines() {
        let m = b"OPTIONS sip:a@b SIP/2.0\r\nSubject: one\r\n two\r\nTo: <sip:x@y>\r\n\r\n";
        let msg = Message::index(m, 10).unwrap();
        assert_eq!(msg.headers.len(), 2);
        assert_eq!(&*msg.unfolded(&msg.headers[0]), b"one two");
        assert_eq!(msg.value(HeaderName::To), Some(&b"<sip:x@y>"[..]));
        assert!(msg.terminated);
    }

    #[test]
    fn tabs_and_double_spaces_are_unfolded_plain_values_borrowed() {
        let m = b"OPTIONS sip:a@b SIP/2.0\r\nSubject: a\tb  c\r\nTo: <sip:x@y> ;tag=1\r\n\r\n";
        let msg = Message::index(m, 10).unwrap();
        assert!(msg.headers[0].folded && !msg.headers[1].folded);
        assert_eq!(&*msg.unfolded(&msg.headers[0]), b"a b c");
        assert!(matches!(msg.unfolded(&msg.headers[1]), Cow::Borrowed(b"<sip:x@y> ;tag=1")));
    }

    #[test]
    fn header_count_is_bounded() {
        let mut m = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        for _ in 0..5 {
            m.extend_from_slice(b"X: y\r\n");
        }
        m.extend_from_slice(b"\r\n");
        assert_eq!(Message::index(&m, 4).unwrap_err(), IndexError::TooManyHeaders { max: 4 });
    }

    #[test]
    fn status_line_parses_with_empty_reason() {
        let msg = Message::index(b"SIP/2.0 100 \r\n\r\n", 4).unwrap();
        assert_eq!(msg.status(), Some(100));
        assert_eq!(msg.reason(), b"");
    }
}
