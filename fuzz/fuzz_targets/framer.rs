//! Fuzzes the bounded framer (sbc_proto::sip::framer): one UDP datagram, and the same bytes as
//! a TCP stream delivered in two reads split at a position chosen by the first input byte.
//! Beyond "never panics", it asserts the bounds the framer promises to its callers, under the
//! default limits and under tight ones that small inputs can exceed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sbc_proto::sip::framer::{Datagram, Limits, StreamFramer, StreamItem, content_length, frame_datagram};
use sbc_proto::sip::{Message, SipError};

/// Small enough that ordinary inputs reach every bound (message, header count, body, the
/// stream's 2 × message buffer cap); `Limits::default()` needs inputs over 16 KiB for that.
const TIGHT: Limits = Limits { max_message_bytes: 512, max_headers: 8, max_body_bytes: 128 };

fuzz_target!(|data: &[u8]| {
    run(data, &Limits::default());
    run(data, &TIGHT);
});

fn run(data: &[u8], limits: &Limits) {
    datagram(data, limits);

    // Stream: all of `data`, split in two reads; the first byte scales the split point over
    // the whole input so long messages get split in their body as well as in their headers.
    let at = data.first().map_or(0, |&b| usize::from(b) * data.len() / 255);
    let (a, b) = data.split_at(at.min(data.len()));
    let split = stream(&[a, b], limits);
    let whole = stream(&[data], limits);
    // Delivering the same bytes in two reads instead of one must cut out the same messages
    // (RFC 3261 §18.3: framing depends on Content-Length only, never on read boundaries).
    // Pings are not compared (a CRLFCRLF split across reads may legitimately count twice) nor
    // are runs that hit an error (a smaller read can stay under a size cap a larger one hits),
    // nor pending bytes (a run of ≥ 4 lone CRs/LFs is discarded only when seen in one read).
    if let (Ok(s), Ok(w)) = (&split, &whole) {
        assert_eq!(s.0, w.0, "messages differ when the stream is split at {at}");
    }
}

fn datagram(data: &[u8], limits: &Limits) {
    match frame_datagram(data, limits) {
        Datagram::Keepalive => {
            assert!(data.iter().all(|&b| b == b'\r' || b == b'\n'), "keepalive with non-CRLF bytes");
        }
        Datagram::Message(m) => {
            assert!(data.len() <= limits.max_message_bytes);
            assert!(m.buf.len() <= data.len());
            // The message is a sub-slice of the datagram.
            let off = m.buf.as_ptr() as usize - data.as_ptr() as usize;
            assert!(off + m.buf.len() <= data.len());
            assert!(m.headers.len() <= limits.max_headers);
            assert!(m.body_start as usize <= m.buf.len(), "body_start past the end of the message");
            assert!(m.body().len() <= limits.max_body_bytes, "body {} > max_body_bytes", m.body().len());
            check_spans(&m);
            // Content-Length cuts the body exactly (RFC 4475 §3.1.1.8).
            if let Ok(Some(cl)) = content_length(&m) {
                assert_eq!(m.body().len(), cl, "body length differs from Content-Length");
            }
        }
        Datagram::Invalid { msg, error } => {
            if let Some(m) = msg {
                check_spans(&m);
            }
            let _ = error.reaction();
            let _ = error.to_string();
        }
    }
}

/// Runs a StreamFramer over `reads`; Ok((messages, pending)) or Err at the first error.
fn stream(reads: &[&[u8]], limits: &Limits) -> Result<(Vec<Vec<u8>>, usize), SipError> {
    let mut f = StreamFramer::new(*limits);
    let mut msgs = Vec::new();
    for r in reads {
        f.push(r)?;
        assert!(f.pending() <= 2 * limits.max_message_bytes, "pending {} over 2 × max", f.pending());
        while let Some(item) = f.next_item()? {
            match item {
                StreamItem::Ping => {}
                StreamItem::Message(v) => {
                    assert!(!v.is_empty(), "empty stream message");
                    assert!(v.len() <= limits.max_message_bytes, "stream message {} > max_message_bytes", v.len());
                    // What the framer returns must index again, with a body of exactly
                    // Content-Length octets (absent = 0 on streams).
                    let m = Message::index(&v, limits.max_headers).expect("framed stream message does not index");
                    assert!(m.terminated, "framed stream message without an empty line");
                    check_spans(&m);
                    let cl = content_length(&m).expect("framed stream message has a bad Content-Length");
                    assert_eq!(m.body().len(), cl.unwrap_or(0), "stream body length differs from Content-Length");
                    assert!(m.body().len() <= limits.max_body_bytes);
                    msgs.push(v);
                }
            }
        }
    }
    Ok((msgs, f.pending()))
}

/// Every span the index records lies inside the buffer and is ordered.
fn check_spans(m: &Message<'_>) {
    let len = m.buf.len() as u32;
    for s in m.start.iter().chain([&m.start_line]) {
        assert!(s.start <= s.end, "start-line span reversed");
    }
    for h in &m.headers {
        for s in [&h.name_span, &h.value_span, &h.line_span] {
            assert!(s.start <= s.end, "header span reversed: {h:?}");
        }
        assert!(h.line_span.start <= h.name_span.start && h.name_span.end <= h.line_span.end);
        assert!(h.value_span.end <= h.line_span.end);
        // Only spans in the header section; the buffer may have been cut to Content-Length
        // but the header section always remains.
        assert!(h.line_span.end <= len.max(m.body_start), "header line past the buffer");
    }
}
