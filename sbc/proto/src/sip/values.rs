//! Strict parsers for the header values a proxy decision needs: comma lists, name-addr /
//! addr-spec (RFC 3261 §20.10, §25.1), generic params, Via (§20.42), CSeq (§20.16). They work
//! on unfolded bytes and return offsets into them, so callers can splice without copying.

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

/// Splits a header value on top-level commas (outside quotes and angle brackets).
pub fn split_commas(v: &[u8]) -> Result<Vec<Range<usize>>, ValueError> {
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
    Ok(out)
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
        assert!(name_addr(&v[parts[0].clone()]).is_err() || parts.len() != 1);
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
    fn via_with_empty_params_is_rejected() {
        assert!(via(b"SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(split_commas(b"SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
    }

    #[test]
    fn cseq_over_32_bits_is_rejected() {
        assert_eq!(cseq(b"36893488147419103232 REGISTER"), Err(ValueError::BadCSeq));
        assert_eq!(cseq(b"0009 INVITE").unwrap(), (9, &b"INVITE"[..]));
    }
}
