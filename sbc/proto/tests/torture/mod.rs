//! What the torture-message tests (rfc4475.rs, rfc5118.rs) share: where the vectors live, one
//! datagram sent to a fresh engine, and its reaction classified.
// Each test crate compiles this module and uses a part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Instant;

use sbc_proto::engine::{Config, Engine, Flow, Output, Side};

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Expect {
    /// Forwarded to the core (after a 100 Trying for INVITE).
    Forward,
    /// Answered by the SBC with this status, nothing forwarded.
    Reply(u16),
    /// Nothing sent anywhere.
    Drop,
}

/// `tests/vectors/<set>` at the repository root.
pub fn vectors(set: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors").join(set)
}

/// The names in the first column of a vector set's index.tsv (header line skipped).
pub fn index_names(set: &str) -> Vec<String> {
    let tsv = std::fs::read_to_string(vectors(set).join("index.tsv")).unwrap();
    tsv.lines().skip(1).filter_map(|l| l.split('\t').next()).map(str::to_owned).collect()
}

pub fn status(data: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(data.get(..12)?).ok()?;
    s.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// What one datagram did to a fresh engine (example config).
pub struct Reaction {
    pub got: Expect,
    /// Everything sent to the internal side.
    pub forwarded: Vec<Vec<u8>>,
    /// Everything sent back to the external side.
    pub replies: Vec<Vec<u8>>,
}

/// Everything the engine has to send, split by side: (to the internal side, to the external).
pub fn sent(e: &mut Engine) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut internal = Vec::new();
    let mut external = Vec::new();
    while let Some(out) = e.poll_output() {
        let Output::Transmit(t) = out else {
            if matches!(out, Output::Timeout(_)) {
                break;
            }
            continue;
        };
        match t.flow.side {
            Side::Internal => internal.push(t.data),
            Side::External => external.push(t.data),
        }
    }
    (internal, external)
}

/// Sends `data` as one datagram on `flow`; Err describes an output that fits no [`Expect`].
pub fn react(flow: Flow, data: &[u8]) -> Result<Reaction, String> {
    react_with(Config::example(), flow, data)
}

/// As [`react`], to an engine with configuration `cfg`.
pub fn react_with(cfg: Config, flow: Flow, data: &[u8]) -> Result<Reaction, String> {
    let now = Instant::now();
    let mut e = Engine::new(cfg, now);
    e.handle_datagram(now, flow, data);
    let (forwarded, replies) = sent(&mut e);
    let codes: Vec<Option<u16>> = replies.iter().map(|r| status(r)).collect();
    let got = match (forwarded.len(), codes.as_slice()) {
        (1, []) | (1, [Some(100)]) => Expect::Forward,
        (0, [Some(code)]) => Expect::Reply(*code),
        (0, []) => Expect::Drop,
        _ => return Err(format!("forwarded {} replies {codes:?}", forwarded.len())),
    };
    Ok(Reaction { got, forwarded, replies })
}
