//! Caller-ID policy per provider (the operator's rule: a call with a given caller ID comes only
//! from the account it is bound to, or through a provider that allows changing it).
//!
//! `providers.cli_allowed = 'N'`: the provider does not let us change the caller ID of calls we
//! send it, so a call to it must carry the provider's own number,
//! `providers.dynamic_calls_caller_id`. `'Y'`: any caller ID passes. The allowlist file carries
//! both per provider ([`crate::allowlist::Allowlist::cli_policy`]); [`check`] decides for one
//! out-of-dialog INVITE towards the provider, from the user parts of its From and
//! P-Asserted-Identity headers. Sans-IO: bytes in, a verdict out.

use std::fmt;

/// Longest `dynamic_calls_caller_id` accepted (the column is `VARCHAR(30)`).
pub const MAX_NUMBER: usize = 30;

/// A provider's caller-ID policy, from `providers.cli_allowed` and
/// `providers.dynamic_calls_caller_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliPolicy {
    /// `cli_allowed = 'Y'`: the provider lets us send any caller ID.
    pub allowed: bool,
    /// The provider's number, normalised by [`Number::parse`]; `None` when not set.
    pub number: Option<Number>,
}

/// A telephone number: digits, with an optional leading `+` (kept as written, compared
/// without it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Number(String);

impl Number {
    /// Digits with an optional leading `+`; RFC 3966 visual separators (`-`, `.`, `(`, `)`)
    /// are dropped. `None` for anything else, empty, or longer than [`MAX_NUMBER`].
    pub fn parse(s: &[u8]) -> Option<Number> {
        let (plus, rest) = match s.split_first() {
            Some((b'+', r)) => (true, r),
            _ => (false, s),
        };
        let mut out = String::with_capacity(s.len().min(MAX_NUMBER + 1));
        if plus {
            out.push('+');
        }
        for &b in rest {
            match b {
                b'0'..=b'9' => out.push(char::from(b)),
                b'-' | b'.' | b'(' | b')' => {}
                _ => return None,
            }
            if out.len() > MAX_NUMBER {
                return None;
            }
        }
        if out.len() == usize::from(plus) { None } else { Some(Number(out)) }
    }

    /// The digits, without the `+`.
    pub fn digits(&self) -> &str {
        self.0.strip_prefix('+').unwrap_or(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Same number: the same digits, with or without `+`.
    pub fn same(&self, other: &Number) -> bool {
        self.digits() == other.digits()
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What [`check`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The provider allows any caller ID (`cli_allowed = 'Y'`).
    Allowed,
    /// Every caller ID of the request is the provider's number.
    Matches,
    /// `cli_allowed = 'N'` but no number is set: nothing to compare with, the call passes and
    /// is counted.
    NoNumber,
    /// `cli_allowed = 'N'` and a caller ID that is not the provider's number (or none at all).
    Forbidden { number: Number },
}

/// The user part of a caller-ID URI (`sip:USER@host`, `sips:`, `tel:NUMBER`) without its
/// parameters; `None` when it has none.
pub fn uri_user(uri: &[u8]) -> Option<&[u8]> {
    uri.get(uri_user_range(uri)?)
}

/// Where [`uri_user`] is in `uri` (for splicing in another number).
pub fn uri_user_range(uri: &[u8]) -> Option<std::ops::Range<usize>> {
    let colon = uri.iter().position(|&b| b == b':')?;
    let scheme = uri.get(..colon)?;
    let start = colon + 1;
    let rest = uri.get(start..)?;
    let user = if scheme.eq_ignore_ascii_case(b"tel") {
        rest
    } else {
        let at = rest.iter().position(|&b| b == b'@')?;
        rest.get(..at)?
    };
    // `user;phone-context=...` (RFC 3261 §19.1.6) and `tel:NUMBER;params`; a password after ':'.
    let end = user.iter().position(|&b| b == b';' || b == b':').unwrap_or(user.len());
    if end == 0 { None } else { Some(start..start + end) }
}

/// Decides for one out-of-dialog INVITE towards a provider with `policy`: `callers` are the
/// user parts of its From and of every P-Asserted-Identity (`None` for a URI without one).
pub fn check<'a>(policy: &CliPolicy, callers: impl IntoIterator<Item = Option<&'a [u8]>>) -> Verdict {
    if policy.allowed {
        return Verdict::Allowed;
    }
    let Some(number) = &policy.number else { return Verdict::NoNumber };
    let mut any = false;
    for c in callers {
        any = true;
        let ok = c.and_then(Number::parse).is_some_and(|n| n.same(number));
        if !ok {
            return Verdict::Forbidden { number: number.clone() };
        }
    }
    if any { Verdict::Matches } else { Verdict::Forbidden { number: number.clone() } }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Number {
        Number::parse(s.as_bytes()).unwrap()
    }

    fn deny(num: &str) -> CliPolicy {
        CliPolicy { allowed: false, number: Some(n(num)) }
    }

    #[test]
    fn number_parse() {
        assert_eq!(Number::parse(b"+74951815283").unwrap().digits(), "74951815283");
        assert_eq!(Number::parse(b"7-495-(181)-52.83").unwrap().as_str(), "74951815283");
        for bad in [&b""[..], b"+", b"alice", b"7495 181", b"++7", b"7495a", &[b'1'; 31]] {
            assert_eq!(Number::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(Number::parse(&[b'1'; 30]).is_some());
        assert!(n("+74951815283").same(&n("74951815283")));
        assert!(!n("74951815283").same(&n("74951815284")));
    }

    #[test]
    fn user_parts() {
        assert_eq!(uri_user(b"sip:+74951815283@10.0.0.1;user=phone"), Some(&b"+74951815283"[..]));
        assert_eq!(uri_user(b"sips:100;phone-context=x@h"), Some(&b"100"[..]));
        assert_eq!(uri_user(b"sip:alice:secret@h"), Some(&b"alice"[..]));
        assert_eq!(uri_user(b"tel:+74951815283;ext=1"), Some(&b"+74951815283"[..]));
        assert_eq!(uri_user(b"sip:example.com"), None);
        assert_eq!(uri_user(b"nonsense"), None);
        assert_eq!(uri_user(b"sip:@h"), None);
        assert_eq!(uri_user_range(b"sip:100;x=y@h"), Some(4..7));
    }

    #[test]
    fn verdicts() {
        let p = deny("74951815283");
        let from = Some(&b"+74951815283"[..]);
        assert_eq!(check(&p, [from]), Verdict::Matches);
        assert_eq!(check(&p, [from, Some(&b"74951815283"[..])]), Verdict::Matches);
        // A matching From with a foreign PAI is still forbidden: the PAI is what the provider bills.
        assert_eq!(check(&p, [from, Some(&b"100"[..])]), Verdict::Forbidden { number: n("74951815283") });
        assert_eq!(check(&p, [Some(&b"alice"[..])]), Verdict::Forbidden { number: n("74951815283") });
        assert_eq!(check(&p, [None]), Verdict::Forbidden { number: n("74951815283") });
        assert_eq!(check(&p, []), Verdict::Forbidden { number: n("74951815283") });
        let open = CliPolicy { allowed: true, number: None };
        assert_eq!(check(&open, [Some(&b"alice"[..])]), Verdict::Allowed);
        let unset = CliPolicy { allowed: false, number: None };
        assert_eq!(check(&unset, [Some(&b"alice"[..])]), Verdict::NoNumber);
    }
}
