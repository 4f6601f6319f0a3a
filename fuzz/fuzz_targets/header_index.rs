//! Fuzzes the zero-copy header index (sbc_proto::sip::message), the strict value parsers
//! (sbc_proto::sip::values) on every header, the URI adapter, and the sanity checks.
//! Beyond "never panics", every range a parser returns must lie inside what it was given.
#![no_main]

use std::ops::Range;

use libfuzzer_sys::fuzz_target;
use sbc_proto::sip::message::{Message, unfold};
use sbc_proto::sip::uri::{SipUri, user_part};
use sbc_proto::sip::{check, values};

const MAX_HEADERS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::index(data, MAX_HEADERS) else { return };
    assert!(msg.headers.len() <= MAX_HEADERS);
    assert!(msg.body_start as usize <= data.len());
    let _ = (msg.method(), msg.status(), msg.reason(), msg.request_version(), msg.body());
    let _ = uri(msg.request_uri());

    for h in &msg.headers {
        let raw = msg.slice(&h.value_span);
        assert!(h.value_span.end as usize <= data.len() && h.line_span.end as usize <= data.len());
        let v = msg.unfolded(h);
        // Unfolding collapses CR, LF and runs of SP/HTAB (RFC 3261 §7.3.1).
        assert!(!v.iter().any(|&b| b == b'\r' || b == b'\n' || b == b'\t'), "unfolded value keeps LWS: {v:?}");
        assert!(!v.windows(2).any(|w| w == b"  "), "unfolded value keeps a double space");
        assert!(v.len() <= raw.len());
        assert_eq!(&*unfold(&v), &*v, "unfold is not idempotent");
        values_of(&v);
    }

    match check(msg) {
        Ok(c) => {
            assert!(!c.call_id.is_empty());
            assert_ne!(c.branch.as_deref(), Some(&b"z9hG4bK"[..]));
            assert!(c.max_forwards.is_none_or(|m| m <= 255));
            if c.msg.is_request() {
                assert!(c.msg.terminated);
            }
        }
        Err(e) => {
            let (_, err) = *e;
            let _ = err.reaction();
            let _ = err.to_string();
        }
    }
});

fn inside(r: &Range<usize>, len: usize) {
    assert!(r.start <= r.end && r.end <= len, "range {r:?} outside 0..{len}");
}

fn values_of(v: &[u8]) {
    if let Ok(parts) = values::split_commas(v) {
        for r in parts {
            inside(&r, v.len());
            assert!(!r.is_empty());
            let e = &v[r];
            if let Ok(na) = values::name_addr(e) {
                inside(&na.uri, e.len());
                inside(&na.params, e.len());
                assert!(!na.uri.is_empty());
                let _ = uri(&e[na.uri.clone()]);
                let p = &e[na.params.clone()];
                let _ = params(p);
                let _ = values::param(p, "tag");
                let _ = values::has_param(p, "lr");
            }
            if let Ok(via) = values::via(e) {
                assert!(!via.host.is_empty());
                let _ = via.branch();
                let _ = params(via.params);
            }
        }
    }
    // Also on the whole value, for headers that are never lists.
    let _ = values::name_addr(v);
    let _ = values::via(v);
    let _ = values::cseq(v);
    let _ = params(v);
    let _ = values::check_params(v);
    let _ = values::parse_u32_lenient(v);
}

/// Drains the params iterator; it must stop after its first error.
fn params(p: &[u8]) -> usize {
    let mut n = 0;
    let mut it = values::params(p);
    while let Some(item) = it.next() {
        n += 1;
        assert!(n <= p.len() + 1, "params iterator does not terminate");
        match item {
            Ok((name, _value)) => assert!(!name.is_empty()),
            Err(_) => {
                assert!(it.next().is_none(), "params iterator yields after an error");
                break;
            }
        }
    }
    n
}

fn uri(u: &[u8]) -> Option<()> {
    let _ = user_part(u);
    let parsed = SipUri::parse(u).ok()?;
    let _ = parsed.socket_addr();
    Some(())
}
