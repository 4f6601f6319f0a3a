//! Strict parsers for the header values a proxy decision needs: comma lists, name-addr /
//! addr-spec (RFC 3261 §20.10, §25.1), generic params, Via (§20.42), CSeq (§20.16). They work
//! on unfolded bytes and return offsets into them, so callers can splice without copying.

use std::net::Ipv6Addr;
use std::ops::Range;

use super::message::{is_token_char, is_ws};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("empty element in a list")]
    EmptyElement,
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    #[error("unbalanced angle brackets")]
    UnbalancedBrackets,
    #[error("invalid display name")]
    BadDisplayName,
    #[error("whitespace inside an addr-spec")]
    SpaceInUri,
    #[error("URI with '?' or ',' outside angle brackets")]
    UnbracketedUri,
    #[error("empty or invalid parameter")]
    BadParam,
    #[error("invalid Via")]
    BadVia,
    #[error("invalid CSeq")]
    BadCSeq,
    #[error("invalid number")]
    BadNumber,
    #[error("IPv6 address without \"[\" \"]\" (RFC 5118 §4.2)")]
    UnbracketedIpv6,
    #[error("invalid host or port")]
    BadHostPort,
}

fn skip_ws(v: &[u8], mut i: usize) -> usize {
    while v.get(i).copied().is_some_and(is_ws) {
        i += 1;
    }
    i
}

/// Index just past the closing quote of a quoted-string starting at `i` (which holds `"`).
fn skip_quoted(v: &[u8], mut i: usize) -> Result<usize, ValueError> {
    i += 1;
    loop {
        match v.get(i) {
            None => return Err(ValueError::UnterminatedQuote),
            Some(b'\\') => i += 2,
            Some(b'"') => return Ok(i + 1),
            Some(_) => i += 1,
        }
    }
}

/// The elements of a comma-separated header value: one (the common case, no allocation) or
/// several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commas {
    One(Range<usize>),
    Many(Vec<Range<usize>>),
}

impl Commas {
    pub fn len(&self) -> usize {
        match self {
            Commas::One(_) => 1,
            Commas::Many(v) => v.len(),
        }
    }
    /// Only for [`Commas::default`]: a split value has at least one element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn first(&self) -> Option<&Range<usize>> {
        match self {
            Commas::One(r) => Some(r),
            Commas::Many(v) => v.first(),
        }
    }
}

/// No elements (what a value that failed to split is taken as, e.g. `unwrap_or_default()`).
impl Default for Commas {
    fn default() -> Self {
        Commas::Many(Vec::new())
    }
}

impl IntoIterator for Commas {
    type Item = Range<usize>;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Range<usize>>, std::vec::IntoIter<Range<usize>>>;
    fn into_iter(self) -> Self::IntoIter {
        match self {
            Commas::One(r) => Some(r).into_iter().chain(Vec::new()),
            Commas::Many(v) => None.into_iter().chain(v),
        }
    }
}

/// Splits a header value on top-level commas (outside quotes and angle brackets).
pub fn split_commas(v: &[u8]) -> Result<Commas, ValueError> {
    // The common case, one element: no comma and no quoted string to look into.
    if memchr::memchr2(b',', b'"', v).is_none() {
        let r = trim_range(v, 0..v.len());
        return if r.is_empty() { Err(ValueError::EmptyElement) } else { Ok(Commas::One(r)) };
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut angle = false;
    while let Some(&b) = v.get(i) {
        match b {
            b'"' if !angle => {
                i = skip_quoted(v, i)?;
                continue;
            }
            b'<' => angle = true,
            b'>' => angle = false,
            b',' if !angle => {
                out.push(trim_range(v, start..i));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(trim_range(v, start..v.len()));
    if out.iter().any(|r| r.is_empty()) {
        return Err(ValueError::EmptyElement);
    }
    Ok(Commas::Many(out))
}

pub fn trim_range(v: &[u8], mut r: Range<usize>) -> Range<usize> {
    while r.start < r.end && v.get(r.start).copied().is_some_and(is_ws) {
        r.start += 1;
    }
    while r.end > r.start && v.get(r.end - 1).copied().is_some_and(is_ws) {
        r.end -= 1;
    }
    r
}

/// A parsed name-addr or addr-spec with its trailing header parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The URI without angle brackets.
    pub uri: Range<usize>,
    /// Everything from the first `;` after the URI (or after `>`), `;` included; may be empty.
    pub params: Range<usize>,
    pub bracketed: bool,
}

/// RFC 3261 §25.1: `(name-addr / addr-spec) *(SEMI generic-param)`, on an unfolded element.
pub fn name_addr(v: &[u8]) -> Result<NameAddr, ValueError> {
    let i = skip_ws(v, 0);
    // Find '<' at top level (outside quotes); everything before it is the display name.
    let mut j = i;
    let mut lt = None;
    while let Some(&b) = v.get(j) {
        match b {
            b'"' => {
                j = skip_quoted(v, j)?;
                continue;
            }
            b'<' => {
                lt = Some(j);
                break;
            }
            _ => {}
        }
        j += 1;
    }
    if let Some(lt) = lt {
        check_display_name(v.get(i..lt).unwrap_or_default())?;
        let gt = v
            .get(lt..)
            .and_then(|r| r.iter().position(|&b| b == b'>'))
            .map(|p| lt + p)
            .ok_or(ValueError::UnbalancedBrackets)?;
        let uri = lt + 1..gt;
        let u = v.get(uri.clone()).unwrap_or_default();
        if u.is_empty() || u.iter().any(|b| b.is_ascii_whitespace() || *b == b'<') {
            return Err(ValueError::SpaceInUri);
        }
        let p = skip_ws(v, gt + 1);
        let params = p..v.len();
        check_params(v.get(params.clone()).unwrap_or_default())?;
        return Ok(NameAddr { uri, params, bracketed: true });
    }
    if v.contains(&b'>') || v.contains(&b'"') {
        return Err(ValueError::UnbalancedBrackets);
    }
    // addr-spec: URI runs to the first ';' (header params) — RFC 3261 §20: a URI with '?' or ','
    // must be bracketed.
    let end = v.get(i..).and_then(|r| r.iter().position(|&b| b == b';')).map_or(v.len(), |p| i + p);
    let uri = trim_range(v, i..end);
    let u = v.get(uri.clone()).unwrap_or_default();
    if u.is_empty() || u.iter().any(|b| b.is_ascii_whitespace()) {
        return Err(ValueError::SpaceInUri);
    }
    if u.contains(&b'?') || u.contains(&b',') {
        return Err(ValueError::UnbracketedUri);
    }
    let params = end..v.len();
    check_params(v.get(params.clone()).unwrap_or_default())?;
    Ok(NameAddr { uri, params, bracketed: false })
}

/// display-name = *(token LWS) / quoted-string
fn check_display_name(d: &[u8]) -> Result<(), ValueError> {
    let d = d.get(trim_range(d, 0..d.len())).unwrap_or_default();
    if d.is_empty() {
        return Ok(());
    }
    if d.first() == Some(&b'"') {
        let end = skip_quoted(d, 0)?;
        return if end == d.len() { Ok(()) } else { Err(ValueError::BadDisplayName) };
    }
    if d.iter().all(|&b| is_token_char(b) || is_ws(b)) { Ok(()) } else { Err(ValueError::BadDisplayName) }
}

/// `*( SEMI generic-param )` with LWS allowed around `;` and `=`: no empty params.
pub fn check_params(p: &[u8]) -> Result<(), ValueError> {
    for item in params(p) {
        item?;
    }
    Ok(())
}

/// Iterates `;name[=value]` pairs; values may be quoted strings.
pub fn params(p: &[u8]) -> impl Iterator<Item = Result<(&[u8], Option<&[u8]>), ValueError>> {
    let mut i = skip_ws(p, 0);
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || i >= p.len() {
            return None;
        }
        if p.get(i) != Some(&b';') {
            failed = true;
            return Some(Err(ValueError::BadParam));
        }
        i = skip_ws(p, i + 1);
        let ns = i;
        while p.get(i).copied().is_some_and(is_token_char) {
            i += 1;
        }
        let name = p.get(ns..i).unwrap_or_default();
        if name.is_empty() {
            failed = true;
            return Some(Err(ValueError::BadParam));
        }
        i = skip_ws(p, i);
        let mut value = None;
        if p.get(i) == Some(&b'=') {
            i = skip_ws(p, i + 1);
            let vs = i;
            if p.get(i) == Some(&b'"') {
                match skip_quoted(p, i) {
                    Ok(e) => i = e,
                    Err(e) => {
                        failed = true;
                        return Some(Err(e));
                    }
                }
            } else {
                // token / host (IPv6 references included)
                while p.get(i).is_some_and(|&b| is_token_char(b) || b == b':' || b == b'[' || b == b']') {
                    i += 1;
                }
            }
            if i == vs {
                failed = true;
                return Some(Err(ValueError::BadParam));
            }
            value = p.get(vs..i);
            i = skip_ws(p, i);
        }
        Some(Ok((name, value)))
    })
}

/// The value of parameter `name` (case-insensitive) in a params section.
pub fn param<'a>(p: &'a [u8], name: &str) -> Option<&'a [u8]> {
    params(p).map_while(Result::ok).find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).and_then(|(_, v)| v)
}

/// Whether parameter `name` is present (with or without a value).
pub fn has_param(p: &[u8], name: &str) -> bool {
    params(p).map_while(Result::ok).any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
}

/// RFC 3261 §20.42 via-parm, on one unfolded comma element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via<'a> {
    pub transport: &'a [u8],
    pub host: &'a [u8],
    pub port: Option<u16>,
    pub params: &'a [u8],
}

impl<'a> Via<'a> {
    pub fn branch(&self) -> Option<&'a [u8]> {
        param(self.params, "branch")
    }
}

pub fn via(v: &[u8]) -> Result<Via<'_>, ValueError> {
    // sent-protocol = name LWS? "/" LWS? version LWS? "/" LWS? transport
    let mut i = skip_ws(v, 0);
    let mut parts = [0..0, 0..0, 0..0];
    for (n, part) in parts.iter_mut().enumerate() {
        let s = i;
        while v.get(i).copied().is_some_and(is_token_char) {
            i += 1;
        }
        if i == s {
            return Err(ValueError::BadVia);
        }
        *part = s..i;
        i = skip_ws(v, i);
        if n < 2 {
            if v.get(i) != Some(&b'/') {
                return Err(ValueError::BadVia);
            }
            i = skip_ws(v, i + 1);
        }
    }
    let [name, version, transport] = parts;
    if !v.get(name).unwrap_or_default().eq_ignore_ascii_case(b"SIP") || v.get(version) != Some(b"2.0") {
        return Err(ValueError::BadVia);
    }
    // sent-by = host [ COLON port ]
    let hs = i;
    if v.get(i) == Some(&b'[') {
        while v.get(i).is_some_and(|&b| b != b']') {
            i += 1;
        }
        i += 1;
    } else {
        while v.get(i).is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
            i += 1;
        }
    }
    let host = v.get(hs..i).ok_or(ValueError::BadVia)?;
    if host.is_empty() || i > v.len() {
        return Err(ValueError::BadVia);
    }
    // An IPv6reference holds an IPv6 address (the three-colon form tolerated, RFC 5118 §4.10).
    if let Some(inner) = host.strip_prefix(b"[") {
        ipv6_address(inner.strip_suffix(b"]").unwrap_or_default()).ok_or(ValueError::BadVia)?;
    }
    i = skip_ws(v, i);
    let mut port = None;
    if v.get(i) == Some(&b':') {
        i = skip_ws(v, i + 1);
        let ps = i;
        while v.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        port = Some(parse_u32(v.get(ps..i).unwrap_or_default())?.try_into().map_err(|_| ValueError::BadVia)?);
        i = skip_ws(v, i);
    }
    let params = v.get(i..).unwrap_or_default();
    check_params(params).map_err(|_| ValueError::BadVia)?;
    Ok(Via { transport: v.get(transport).unwrap_or_default(), host, port, params })
}

/// The address inside an IPv6reference's brackets (RFC 3261 §25.1). The three-colon form RFC
/// 3261's ABNF inherited from RFC 2373 (`2001:db8:::192.0.2.1`) is tolerated and read as the
/// RFC 4291 two-colon one (RFC 5118 §4.10); IPv4-mapped addresses parse as any other (§4.9).
pub fn ipv6_address(inner: &[u8]) -> Option<Ipv6Addr> {
    let s = std::str::from_utf8(inner).ok()?;
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    // Only "hexseq::" followed by ":" IPv4address is the ABNF's bug; anything else stays invalid.
    let (head, v4) = s.split_once(":::")?;
    if !v4.contains('.') || v4.contains(':') {
        return None;
    }
    format!("{head}::{v4}").parse().ok()
}

/// RFC 3261 §25.1 `hostport = host [ ":" port ]`, the whole of `v`. The host is returned as
/// written (brackets included); everything inside "[" "]" is the address (RFC 5118 §4.3: a
/// "port" there is part of it). An IPv6 address without brackets is refused (RFC 5118 §4.2).
pub fn hostport(v: &[u8]) -> Result<(&[u8], Option<u16>), ValueError> {
    let host_end = if v.first() == Some(&b'[') {
        let close = v.iter().position(|&b| b == b']').ok_or(ValueError::BadHostPort)?;
        ipv6_address(v.get(1..close).unwrap_or_default()).ok_or(ValueError::BadHostPort)?;
        close + 1
    } else {
        v.iter().position(|&b| !(b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')).unwrap_or(v.len())
    };
    let host = v.get(..host_end).unwrap_or_default();
    let rest = v.get(host_end..).unwrap_or_default();
    if host.is_empty() {
        return Err(ValueError::BadHostPort);
    }
    if rest.is_empty() {
        return Ok((host, None));
    }
    let port = rest.strip_prefix(b":").ok_or(ValueError::BadHostPort)?;
    match parse_u32(port).ok().and_then(|p| u16::try_from(p).ok()) {
        Some(p) => Ok((host, Some(p))),
        // "2001:db8::10" read as host "2001" and port "db8::10": the brackets are missing.
        None if std::str::from_utf8(v).is_ok_and(|s| s.parse::<Ipv6Addr>().is_ok()) => Err(ValueError::UnbracketedIpv6),
        None => Err(ValueError::BadHostPort),
    }
}

/// Parses a non-empty run of digits (leading zeros allowed) that fits in `u32`.
pub fn parse_u32(d: &[u8]) -> Result<u32, ValueError> {
    if d.is_empty() || d.len() > 10 || !d.iter().all(u8::is_ascii_digit) {
        return Err(ValueError::BadNumber);
    }
    let mut n: u64 = 0;
    for &b in d {
        n = n * 10 + u64::from(b - b'0');
    }
    u32::try_from(n).map_err(|_| ValueError::BadNumber)
}

/// A decimal with leading zeros and surrounding whitespace allowed ("0068").
pub fn parse_u32_lenient(d: &[u8]) -> Result<u32, ValueError> {
    let d = d.get(trim_range(d, 0..d.len())).unwrap_or_default();
    let first_nz = d.iter().position(|&b| b != b'0').unwrap_or(d.len().saturating_sub(1));
    parse_u32(d.get(first_nz..).unwrap_or_default())
}

/// RFC 3261 §20.16 CSeq: `1*DIGIT LWS Method`; the number must fit in 32 bits.
pub fn cseq(v: &[u8]) -> Result<(u32, &[u8]), ValueError> {
    let i = skip_ws(v, 0);
    let mut j = i;
    while v.get(j).is_some_and(u8::is_ascii_digit) {
        j += 1;
    }
    let num = parse_u32_lenient(v.get(i..j).unwrap_or_default()).map_err(|_| ValueError::BadCSeq)?;
    let k = skip_ws(v, j);
    if k == j {
        return Err(ValueError::BadCSeq);
    }
    let method = v.get(k..).unwrap_or_default();
    let method = method.get(trim_range(method, 0..method.len())).unwrap_or_default();
    if method.is_empty() || !method.iter().all(|&b| is_token_char(b)) {
        return Err(ValueError::BadCSeq);
    }
    Ok((num, method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_with_quoted_display_name_and_params() {
        let v = br#""Quoted string \"\"" <sip:jdrosen@example.com> ; newparam = newvalue ; secondparam ; q = 0.33"#;
        let na = name_addr(v).unwrap();
        assert_eq!(&v[na.uri.clone()], b"sip:jdrosen@example.com");
        assert_eq!(param(&v[na.params.clone()], "q"), Some(&b"0.33"[..]));
        assert!(has_param(&v[na.params], "secondparam"));
    }

    #[test]
    fn empty_params_are_rejected() {
        assert_eq!(name_addr(br#""Joe" <sip:joe@example.org>;;;;"#), Err(ValueError::BadParam));
    }

    #[test]
    fn unquoted_display_name_with_comma_is_rejected_as_list_or_name() {
        // The comma makes two list elements; the first has no URI brackets.
        let v = b"Bell, Alexander <sip:a.g.bell@example.com>;tag=43";
        let parts = split_commas(v).unwrap();
        assert!(name_addr(&v[parts.first().unwrap().clone()]).is_err() || parts.len() != 1);
    }

    #[test]
    fn spaces_inside_brackets_are_rejected() {
        assert_eq!(name_addr(br#""Watson, Thomas" < sip:t.watson@example.org >"#), Err(ValueError::SpaceInUri));
    }

    #[test]
    fn unterminated_quote_is_rejected() {
        assert_eq!(name_addr(br#""Mr. J. User <sip:j.user@example.com>"#), Err(ValueError::UnterminatedQuote));
    }

    #[test]
    fn addr_spec_with_question_mark_must_be_bracketed() {
        assert_eq!(name_addr(b"sip:user@example.com?Route=%3Csip:sip.example.com%3E"), Err(ValueError::UnbracketedUri));
    }

    #[test]
    fn via_with_lws_everywhere_parses() {
        let v = via(b"SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8").unwrap();
        assert_eq!(v.transport, b"TCP");
        assert_eq!(v.host, b"spindle.example.com");
        assert_eq!(v.branch(), Some(&b"z9hG4bK9ikj8"[..]));
    }

    #[test]
    fn via_with_ipv6_sent_by_and_received_with_or_without_brackets_parses_rfc5118_4_5() {
        let v = via(b"SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3-111").unwrap();
        assert_eq!((v.host, v.port), (&b"[2001:db8::9:1]"[..], None));
        assert_eq!(param(v.params, "received"), Some(&b"[2001:db8::9:255]"[..]));
        assert_eq!(v.branch(), Some(&b"z9hG4bKas3-111"[..]));
        let v = via(b"SIP/2.0/UDP [::ffff:192.0.2.10]:19823;received=2001:db8::9:255;branch=z9hG4bKas3").unwrap();
        assert_eq!((v.host, v.port), (&b"[::ffff:192.0.2.10]"[..], Some(19823)));
        assert_eq!(param(v.params, "received"), Some(&b"2001:db8::9:255"[..]));
    }

    #[test]
    fn via_with_a_bracketed_host_that_is_no_ipv6_address_is_rejected() {
        assert_eq!(via(b"SIP/2.0/UDP [2001:db8::9:1;branch=z9hG4bKa"), Err(ValueError::BadVia));
        assert_eq!(via(b"SIP/2.0/UDP [example.com]:5060;branch=z9hG4bKa"), Err(ValueError::BadVia));
        assert!(via(b"SIP/2.0/UDP 2001:db8::9:1;branch=z9hG4bKa").is_err());
    }

    #[test]
    fn via_with_empty_params_is_rejected() {
        assert!(via(b"SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(split_commas(b"SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
    }

    #[test]
    fn unbracketed_ipv6_host_is_refused_rfc5118_4_2() {
        assert_eq!(hostport(b"2001:db8::10"), Err(ValueError::UnbracketedIpv6));
        assert_eq!(hostport(b"[2001:db8::10]"), Ok((&b"[2001:db8::10]"[..], None)));
    }

    #[test]
    fn port_inside_brackets_is_part_of_the_address_rfc5118_4_3() {
        assert_eq!(hostport(b"[2001:db8::10:5070]"), Ok((&b"[2001:db8::10:5070]"[..], None)));
        assert_eq!(hostport(b"[2001:db8::10]:5070"), Ok((&b"[2001:db8::10]"[..], Some(5070))));
    }

    #[test]
    fn three_colon_ipv6_reference_is_tolerated_rfc5118_4_10() {
        let two: Ipv6Addr = "2001:db8::192.0.2.1".parse().unwrap();
        assert_eq!(ipv6_address(b"2001:db8:::192.0.2.1"), Some(two));
        assert_eq!(ipv6_address(b"2001:db8::192.0.2.1"), Some(two));
        assert_eq!(ipv6_address(b"2001:db8:::1"), None);
        assert_eq!(ipv6_address(b"2001:::db8:::192.0.2.1"), None);
    }

    #[test]
    fn ipv4_mapped_ipv6_reference_parses_rfc5118_4_9() {
        assert_eq!(ipv6_address(b"::ffff:192.0.2.10"), "::ffff:192.0.2.10".parse().ok());
        assert_eq!(hostport(b"[::ffff:192.0.2.10]:19823").map(|h| h.1), Ok(Some(19823)));
    }

    #[test]
    fn malformed_hostports_are_refused() {
        for bad in [&b""[..], b"[2001:db8::10", b"[zz]", b"host:", b"host:99999", b"host:5060x", b"[::1]x", b"a b"] {
            assert!(hostport(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(hostport(b"example.com:5060"), Ok((&b"example.com"[..], Some(5060))));
    }

    #[test]
    fn cseq_over_32_bits_is_rejected() {
        assert_eq!(cseq(b"36893488147419103232 REGISTER"), Err(ValueError::BadCSeq));
        assert_eq!(cseq(b"0009 INVITE").unwrap(), (9, &b"INVITE"[..]));
    }
}

/// Appends `n` as two lower-case hex digits (the shard id in the SBC's identifiers).
pub fn push_hex2(out: &mut String, n: u8) {
    for d in [n >> 4, n & 0xf] {
        out.push(char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 }));
    }
}

/// Appends `n` as 16 lower-case hex digits (what `format!("{n:016x}")` writes), for the
/// branches, tags and tokens the SBC makes on every call.
pub fn push_hex16(out: &mut String, n: u64) {
    for shift in (0..16).rev() {
        let d = ((n >> (shift * 4)) & 0xf) as u8;
        out.push(char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 }));
    }
}

/// `n` in decimal, written into `buf`: the digits without the formatting machinery (on every
/// forwarded message's path: Content-Length, Max-Forwards, ports).
pub fn decimal(n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    let mut n = n;
    while let Some(d) = i.checked_sub(1).and_then(|j| buf.get_mut(j)) {
        *d = b'0' + (n % 10) as u8;
        i -= 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.get(i..).unwrap_or_default()
}

#[cfg(test)]
mod decimal_tests {
    use super::decimal;

    #[test]
    fn push_hex16_writes_what_format_does() {
        for n in [0u64, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            let mut s = String::new();
            super::push_hex16(&mut s, n);
            assert_eq!(s, format!("{n:016x}"));
        }
    }

    #[test]
    fn decimal_writes_every_u32_as_display_does() {
        for n in [0u32, 7, 10, 99, 100, 5060, 65535, 1_000_000, u32::MAX] {
            let mut buf = [0u8; 10];
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes(), "{n}");
        }
    }
}
