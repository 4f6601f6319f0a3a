//! Sanity checks on an indexed message (RFC 3261 §8.2, §16.3; RFC 4475's torture cases), and
//! the few facts every later layer needs, extracted once: Call-ID, CSeq, tags, top Via branch.

use std::borrow::Cow;

use super::error::SipError;
use super::message::{Header, HeaderName, Kind, Message};
use super::method::Method;
use super::values::{self, ValueError};

/// A message that passed the checks, with the identifiers the transaction and dialog layers use.
#[derive(Debug, Clone)]
pub struct Checked<'a> {
    pub msg: Message<'a>,
    /// The request's method, or for a response the CSeq method.
    pub method: Method,
    pub cseq: u32,
    pub call_id: Cow<'a, [u8]>,
    pub from_tag: Option<Cow<'a, [u8]>>,
    pub to_tag: Option<Cow<'a, [u8]>>,
    /// The branch of the topmost Via (None for RFC 2543 peers, RFC 4475 §3.4.1).
    pub branch: Option<Cow<'a, [u8]>>,
    /// The topmost Via's sent-by, normalised for matching: host in lower case, `:port` always
    /// written (the transport's default when absent). RFC 3261 §17.2.3 matches on it.
    pub sent_by: Vec<u8>,
    /// The port of that sent-by (the transport's default when absent): where a response goes
    /// when its TCP connection is gone (§18.2.2).
    pub sent_by_port: u16,
    pub max_forwards: Option<u32>,
}

impl<'a> Checked<'a> {
    pub fn status(&self) -> Option<u16> {
        self.msg.status()
    }
}

fn single<'m>(msg: &'m Message<'_>, name: HeaderName) -> Result<&'m Header, SipError> {
    let mut it = msg.all(name);
    let h = it.next().ok_or(SipError::Missing(name))?;
    if it.next().is_some() {
        return Err(SipError::Duplicate(name));
    }
    Ok(h)
}

fn bad(name: HeaderName) -> impl Fn(ValueError) -> SipError {
    move |error| SipError::BadHeader { name, error }
}

/// Extracts `param` from a name-addr header value, borrowing when the value is not folded.
fn name_addr_param<'a>(v: Cow<'a, [u8]>, name: HeaderName, param: &str) -> Result<Option<Cow<'a, [u8]>>, SipError> {
    let na = values::name_addr(&v).map_err(bad(name))?;
    let found = v.get(na.params.clone()).and_then(|p| values::param(p, param)).map(|t| {
        let off = t.as_ptr() as usize - v.as_ptr() as usize;
        off..off + t.len()
    });
    Ok(found.map(|r| match &v {
        Cow::Borrowed(b) => Cow::Borrowed(b.get(r).unwrap_or_default()),
        Cow::Owned(o) => Cow::Owned(o.get(r).unwrap_or_default().to_vec()),
    }))
}

/// `part` (a slice of `whole`) with `whole`'s lifetime when `whole` borrows the message: no
/// copy for the common, unfolded value.
fn borrow_from<'a>(whole: &Cow<'a, [u8]>, part: &[u8]) -> Cow<'a, [u8]> {
    let off = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    match whole {
        Cow::Borrowed(b) => match b.get(off..off + part.len()) {
            Some(p) => Cow::Borrowed(p),
            None => Cow::Owned(part.to_vec()),
        },
        Cow::Owned(_) => Cow::Owned(part.to_vec()),
    }
}

/// Every check a proxy makes before it forwards or answers. Request failures map to a
/// response via [`SipError::reaction`]; response failures mean "drop".
pub fn check<'a>(msg: Message<'a>) -> Result<Checked<'a>, Box<(Message<'a>, SipError)>> {
    match check_inner(&msg) {
        Ok(parts) => Ok(Checked {
            msg,
            method: parts.method,
            cseq: parts.cseq,
            call_id: parts.call_id,
            from_tag: parts.from_tag,
            to_tag: parts.to_tag,
            branch: parts.branch,
            sent_by: parts.sent_by,
            sent_by_port: parts.sent_by_port,
            max_forwards: parts.max_forwards,
        }),
        Err(e) => Err(Box::new((msg, e))),
    }
}

struct Parts<'a> {
    method: Method,
    cseq: u32,
    call_id: Cow<'a, [u8]>,
    from_tag: Option<Cow<'a, [u8]>>,
    to_tag: Option<Cow<'a, [u8]>>,
    branch: Option<Cow<'a, [u8]>>,
    sent_by: Vec<u8>,
    sent_by_port: u16,
    max_forwards: Option<u32>,
}

fn default_port(via: &values::Via<'_>) -> u16 {
    via.port.unwrap_or(if via.transport.eq_ignore_ascii_case(b"TLS") { 5061 } else { 5060 })
}

/// `host:port` of a Via, host lower-cased, the transport's default port written out; an IPv6
/// reference in its canonical form (RFC 5952), so that the same address written differently
/// (`[2001:DB8::1]`, `[2001:db8:0::1]`, RFC 5118 §4.10's `[2001:db8:::192.0.2.1]`) is the same
/// sent-by when transactions are matched (RFC 3261 §17.2.3).
fn normalised_sent_by(via: &values::Via<'_>) -> Vec<u8> {
    let port = default_port(via);
    let v6 = via.host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")).and_then(values::ipv6_address);
    let mut out = match v6 {
        Some(ip) => format!("[{ip}]").into_bytes(),
        None => via.host.to_ascii_lowercase(),
    };
    out.push(b':');
    let mut digits = [0u8; 10];
    out.extend_from_slice(values::decimal(u32::from(port), &mut digits));
    out
}

fn check_inner<'a>(msg: &Message<'a>) -> Result<Parts<'a>, SipError> {
    if msg.bad_header_line.is_some() {
        return Err(SipError::BadHeaderLine);
    }
    let method = match msg.kind {
        Kind::Request => check_request_line(msg)?,
        Kind::Response => {
            if msg.slice(&msg.start[0]) != b"SIP/2.0" {
                return Err(SipError::VersionNotSupported(String::from_utf8_lossy(msg.slice(&msg.start[0])).into()));
            }
            match msg.status() {
                Some(100..=699) => Method::Other,
                _ => return Err(SipError::BadStatus),
            }
        }
    };
    if !msg.terminated {
        return Err(SipError::Unterminated);
    }
    // Single-valued headers the proxy relies on (RFC 4475 §3.3.8: duplicates are fatal).
    let call_id = msg.unfolded(single(msg, HeaderName::CallId)?);
    if call_id.is_empty() || call_id.iter().any(|b| b.is_ascii_whitespace()) {
        return Err(SipError::BadHeader { name: HeaderName::CallId, error: ValueError::SpaceInUri });
    }
    let cseq_value = msg.unfolded(single(msg, HeaderName::CSeq)?);
    let (cseq, cseq_method) = values::cseq(&cseq_value).map_err(bad(HeaderName::CSeq))?;
    let from_tag = name_addr_param(msg.unfolded(single(msg, HeaderName::From)?), HeaderName::From, "tag")?;
    let to_tag = name_addr_param(msg.unfolded(single(msg, HeaderName::To)?), HeaderName::To, "tag")?;
    let mut max_forwards = None;
    if msg.all(HeaderName::MaxForwards).count() > 1 {
        return Err(SipError::Duplicate(HeaderName::MaxForwards));
    }
    if let Some(h) = msg.first(HeaderName::MaxForwards) {
        // RFC 4475 §3.1.2.4: an overlarge value may be treated as absent; cap it at 255.
        max_forwards = Some(match values::parse_u32_lenient(&msg.unfolded(h)) {
            Ok(n) => n.min(255),
            Err(_) if msg.unfolded(h).iter().all(u8::is_ascii_digit) => 255,
            Err(e) => return Err(bad(HeaderName::MaxForwards)(e)),
        });
    }
    // Every Via element must parse; the top one's branch identifies the transaction.
    let mut branch: Option<Cow<'a, [u8]>> = None;
    let mut sent_by = Vec::new();
    let mut sent_by_port = 5060;
    let mut first = true;
    for h in msg.all(HeaderName::Via) {
        let v = msg.unfolded(h);
        for r in values::split_commas(&v).map_err(bad(HeaderName::Via))? {
            let via = values::via(v.get(r).unwrap_or_default()).map_err(bad(HeaderName::Via))?;
            if first {
                branch = via.branch().map(|b| borrow_from(&v, b));
                sent_by = normalised_sent_by(&via);
                sent_by_port = default_port(&via);
                first = false;
            }
        }
    }
    if first {
        return Err(SipError::Missing(HeaderName::Via));
    }
    if branch.as_deref() == Some(&b"z9hG4bK"[..]) {
        return Err(SipError::BadBranch);
    }
    for h in msg.all(HeaderName::Contact) {
        let v = msg.unfolded(h);
        if &*v == b"*" {
            continue;
        }
        for r in values::split_commas(&v).map_err(bad(HeaderName::Contact))? {
            values::name_addr(v.get(r).unwrap_or_default()).map_err(bad(HeaderName::Contact))?;
        }
    }
    let method = match msg.kind {
        Kind::Request => {
            let m = msg.method_bytes();
            if m != cseq_method {
                return Err(SipError::CSeqMismatch { method_known: method != Method::Other });
            }
            if msg.first(HeaderName::ProxyRequire).is_some() {
                let list: Vec<String> = msg
                    .all(HeaderName::ProxyRequire)
                    .map(|h| String::from_utf8_lossy(&msg.unfolded(h)).trim().to_string())
                    .collect();
                return Err(SipError::BadExtension(list.join(", ")));
            }
            if max_forwards == Some(0) {
                return Err(SipError::TooManyHops);
            }
            method
        }
        Kind::Response => Method::from_bytes(cseq_method),
    };
    Ok(Parts { method, cseq, call_id, from_tag, to_tag, branch, sent_by, sent_by_port, max_forwards })
}

fn check_request_line(msg: &Message<'_>) -> Result<Method, SipError> {
    let version = msg.request_version();
    if version != b"SIP/2.0" {
        if version.len() > 4 && version.get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/")) {
            return Err(SipError::VersionNotSupported(String::from_utf8_lossy(version).into()));
        }
        return Err(SipError::BadRequestLine);
    }
    if !msg.method_bytes().iter().all(|&b| super::message::is_token_char(b)) {
        return Err(SipError::BadRequestLine);
    }
    let uri = msg.request_uri();
    if uri.is_empty() || uri.iter().any(|b| b.is_ascii_whitespace()) {
        return Err(SipError::BadRequestUri("whitespace in Request-URI"));
    }
    if uri.first() == Some(&b'<') {
        return Err(SipError::BadRequestUri("Request-URI in angle brackets"));
    }
    let colon = uri.iter().position(|&b| b == b':').ok_or(SipError::BadRequestUri("no scheme"))?;
    let scheme = uri.get(..colon).unwrap_or_default();
    if scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips") {
        // RFC 3261 §19.1.5: headers in a Request-URI are not allowed (RFC 4475 §3.1.2.11).
        // A '?' in the userinfo is legal (§3.1.1.2): only look after the last '@'.
        let host_part = uri.iter().rposition(|&b| b == b'@').map_or(uri, |at| uri.get(at..).unwrap_or_default());
        if host_part.contains(&b'?') {
            return Err(SipError::BadRequestUri("escaped headers in Request-URI"));
        }
        // §25.1 hostport: an IPv6 address must be in brackets (RFC 5118 §4.2: 400, never
        // forwarded); inside them, everything is the address (§4.3).
        let after_scheme = uri.get(colon + 1..).unwrap_or_default();
        let userinfo_end = after_scheme.iter().rposition(|&b| b == b'@').map_or(0, |at| at + 1);
        let rest = after_scheme.get(userinfo_end..).unwrap_or_default();
        let hostport = rest.split(|&b| b == b';').next().unwrap_or_default();
        values::hostport(hostport).map_err(|e| {
            SipError::BadRequestUri(match e {
                ValueError::UnbracketedIpv6 => "IPv6 address without brackets in Request-URI",
                _ => "invalid host or port in Request-URI",
            })
        })?;
    } else if !scheme.eq_ignore_ascii_case(b"tel") {
        return Err(SipError::UnsupportedUriScheme);
    }
    Ok(msg.method())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::error::Reaction;

    fn request(ruri: &str) -> Vec<u8> {
        format!(
            "REGISTER {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111\r\n\
             To: <sip:user@example.com>\r\nFrom: <sip:user@example.com>;tag=81x2\r\nCall-ID: c1\r\n\
             CSeq: 98176 REGISTER\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn checked(ruri: &str) -> Result<(), SipError> {
        let data = request(ruri);
        let msg = Message::index(&data, 64).unwrap();
        check(msg).map(|_| ()).map_err(|b| b.1)
    }

    #[test]
    fn request_uri_with_unbracketed_ipv6_is_400_rfc5118_4_2() {
        let e = checked("sip:2001:db8::10").unwrap_err();
        assert_eq!(e, SipError::BadRequestUri("IPv6 address without brackets in Request-URI"));
        assert!(matches!(e.reaction(), Reaction::Reply { code: 400, .. }), "{:?}", e.reaction());
        assert!(checked("sip:user@2001:db8::10;transport=udp").is_err());
    }

    #[test]
    fn request_uri_ipv6_references_pass_rfc5118_4_1_4_3_4_4_4_10() {
        for ok in [
            "sip:[2001:db8::10]",
            "sip:[2001:db8::10:5070]",
            "sip:[2001:db8::10]:5070",
            "sip:user@[2001:db8:::192.0.2.1]",
            "sip:user@[::ffff:192.0.2.10]:5060;transport=udp",
            "sips:example.com",
        ] {
            assert_eq!(checked(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn request_uri_with_bad_host_or_port_is_400() {
        for bad in ["sip:[2001:db8::10", "sip:[2001:db8::10]x", "sip:host:port", "sip:user@"] {
            assert!(matches!(checked(bad), Err(SipError::BadRequestUri(_))), "{bad}");
        }
    }
}
