//! The ban table's state file, so that bans survive a restart: [`render`] and a bounded, strict
//! [`parse`] that rejects a corrupt or truncated file as a whole (with the line) and never
//! panics. Sans-IO: the daemon does the file IO, as follows.
//!
//! # Format (v1)
//!
//! ```text
//! # sbc bans v1
//! # prefix<TAB>until<TAB>since<TAB>offence<TAB>hits<TAB>jail<TAB>reason<TAB>evidence
//! 198.51.100.66/32<TAB>1767225600<TAB>1767225000<TAB>1<TAB>5<TAB>sip-auth<TAB>5 auth-failure in 12s ...<TAB>401 to REGISTER ...
//! end 1
//! ```
//!
//! Times are Unix seconds (wall clock: `Instant`s do not survive a restart). Text fields are
//! escaped: `%`, control characters, and bytes outside ASCII are `%XX`, so a line is one
//! printable line whatever a scanner put in its User-Agent. The last line, `end N`, counts the
//! bans: a file cut short is refused, not half-read. Lines starting with `#` after the first
//! are comments.
//!
//! # Writing it (the daemon, `sbc/sbc`): never lose or corrupt the table on a crash
//!
//! 1. render the table ([`super::Guard::render_bans`]) to bytes;
//! 2. create `<state_dir>/bans.tmp` (O_CREAT|O_TRUNC|O_WRONLY|O_CLOEXEC, mode 0600) and write
//!    everything;
//! 3. `fsync` the file;
//! 4. `rename` it over `<state_dir>/bans` (atomic within a file system);
//! 5. `fsync` the directory, so the rename itself is durable.
//!
//! A crash before 4 leaves the previous file whole (a stale `bans.tmp` is removed at start);
//! after 4, the new one is whole. Write after each change of the table, at most once a second
//! ([`super::Guard::take_dirty`]), and at shutdown. At start, a file that does not parse is
//! renamed `bans.corrupt`, logged, and the SBC starts without it (it must not refuse to start).

use std::fmt::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::bans::Ban;
use crate::{Prefix, PrefixError};

/// The first line.
pub const MAGIC: &str = "# sbc bans v1";
/// Largest file accepted.
pub const MAX_BYTES: usize = 64 << 20;
/// Longest line accepted.
pub const MAX_LINE: usize = 4096;
/// Most bans accepted (the XDP blocklist's capacity for each family, twice).
pub const MAX_BANS: usize = 2 * super::config::MAX_BANS_CEILING;
/// Longest text fields, unescaped.
pub const MAX_JAIL: usize = 64;
pub const MAX_TEXT: usize = 1024;

/// A ban read back from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub prefix: Prefix,
    /// Unix seconds.
    pub until: u64,
    pub since: u64,
    pub offence: u32,
    pub hits: u32,
    pub jail: String,
    pub reason: String,
    pub evidence: String,
}

/// Why a state file was refused, at a line (1-based; 0: the whole file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct PersistError {
    pub line: u32,
    pub kind: PersistErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PersistErrorKind {
    #[error("file is {size} bytes, more than the {max} accepted")]
    TooLarge { size: usize, max: usize },
    #[error("not an sbc bans v1 file (the first line must be {MAGIC:?})")]
    BadHeader,
    #[error("line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("{0}")]
    Syntax(String),
    #[error("prefix: {0}")]
    Prefix(PrefixError),
    #[error("same prefix as line {first}")]
    Duplicate { first: u32 },
    #[error("more than {MAX_BANS} bans")]
    TooMany,
    #[error("no `end` line: the file is cut short")]
    Truncated,
    #[error("`end {declared}` but {found} bans")]
    Count { declared: usize, found: usize },
    #[error("text after the `end` line")]
    AfterEnd,
}

fn unix(wall: SystemTime) -> u64 {
    wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The Unix time of `at`, given that `now` is `wall`.
pub fn to_unix(at: Instant, now: Instant, wall: SystemTime) -> u64 {
    let w = unix(wall);
    if at >= now { w.saturating_add(at.duration_since(now).as_secs()) } else { w.saturating_sub((now - at).as_secs()) }
}

/// The `Instant` of Unix time `t`, given that `now` is `wall`; None if it cannot be represented.
pub fn from_unix(t: u64, now: Instant, wall: SystemTime) -> Option<Instant> {
    let w = unix(wall);
    if t >= w { now.checked_add(Duration::from_secs(t - w)) } else { now.checked_sub(Duration::from_secs(w - t)) }
}

/// The file for `bans`.
pub fn render(bans: &[&Ban], now: Instant, wall: SystemTime) -> String {
    let mut out = String::new();
    out.push_str(MAGIC);
    out.push_str("\n# prefix\tuntil\tsince\toffence\thits\tjail\treason\tevidence\n");
    for b in bans {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            b.prefix,
            to_unix(b.until, now, wall),
            to_unix(b.since, now, wall),
            b.offence,
            b.hits,
            escape(&b.jail, MAX_JAIL),
            escape(&b.reason, MAX_TEXT),
            escape(&b.evidence, MAX_TEXT),
        );
    }
    let _ = writeln!(out, "end {}", bans.len());
    out
}

/// `s`, at most `max` bytes of it, with `%`, tab, control characters and non-ASCII as `%XX`.
fn escape(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len());
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    for &b in s.as_bytes().iter().take(end) {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn unescape(s: &str, max: usize) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        match b {
            b'%' => {
                let hex = |d: Option<u8>| d.and_then(|d| char::from(d).to_digit(16));
                match (hex(it.next()), hex(it.next())) {
                    (Some(h), Some(l)) => bytes.push(u8::try_from(h * 16 + l).map_err(|_| "bad %XX escape")?),
                    _ => return Err("bad %XX escape".into()),
                }
            }
            0x20..0x7f => bytes.push(b),
            _ => return Err(format!("unescaped byte 0x{b:02X}")),
        }
        if bytes.len() > max {
            return Err(format!("text longer than {max} bytes"));
        }
    }
    String::from_utf8(bytes).map_err(|_| "escaped text is not UTF-8".into())
}

fn number<T: std::str::FromStr>(field: &str, what: &str) -> Result<T, String> {
    if field.is_empty() || field.len() > 20 || !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what}: {field:?} is not a number"));
    }
    field.parse().map_err(|_| format!("{what}: {field:?} out of range"))
}

/// Reads a state file back; every ban, or the first error.
pub fn parse(input: &[u8]) -> Result<Vec<Restored>, PersistError> {
    let err = |line: usize, kind| PersistError { line: u32::try_from(line).unwrap_or(u32::MAX), kind };
    if input.len() > MAX_BYTES {
        return Err(err(0, PersistErrorKind::TooLarge { size: input.len(), max: MAX_BYTES }));
    }
    let text = std::str::from_utf8(input).map_err(|_| err(0, PersistErrorKind::Syntax("not UTF-8".into())))?;
    let mut lines = text.split_inclusive('\n').enumerate().map(|(i, l)| (i + 1, l));
    match lines.next() {
        Some((_, l)) if l.trim_end_matches('\n') == MAGIC => {}
        _ => return Err(err(1, PersistErrorKind::BadHeader)),
    }
    let mut out: Vec<Restored> = Vec::new();
    let mut seen: std::collections::HashMap<Prefix, usize> = std::collections::HashMap::new();
    let mut end: Option<usize> = None;
    for (n, raw) in lines {
        if raw.len() > MAX_LINE {
            return Err(err(n, PersistErrorKind::LineTooLong));
        }
        let Some(line) = raw.strip_suffix('\n') else {
            return Err(err(n, PersistErrorKind::Truncated));
        };
        if end.is_some() {
            return Err(err(n, PersistErrorKind::AfterEnd));
        }
        if line.starts_with('#') {
            continue;
        }
        if let Some(count) = line.strip_prefix("end ") {
            let declared: usize = number(count, "end").map_err(|m| err(n, PersistErrorKind::Syntax(m)))?;
            if declared != out.len() {
                return Err(err(n, PersistErrorKind::Count { declared, found: out.len() }));
            }
            end = Some(declared);
            continue;
        }
        let fields: Vec<&str> = line.splitn(9, '\t').collect();
        let [prefix, until, since, offence, hits, jail, reason, evidence] = fields.as_slice() else {
            return Err(err(n, PersistErrorKind::Syntax(format!("{} fields, 8 expected", fields.len()))));
        };
        let syntax = |m: String| err(n, PersistErrorKind::Syntax(m));
        let prefix: Prefix = prefix.parse().map_err(|e| err(n, PersistErrorKind::Prefix(e)))?;
        if let Some(&first) = seen.get(&prefix) {
            return Err(err(n, PersistErrorKind::Duplicate { first: u32::try_from(first).unwrap_or(u32::MAX) }));
        }
        if out.len() >= MAX_BANS {
            return Err(err(n, PersistErrorKind::TooMany));
        }
        let jail = unescape(jail, MAX_JAIL).map_err(syntax)?;
        if jail.is_empty() {
            return Err(syntax("empty jail".into()));
        }
        let b = Restored {
            prefix,
            until: number(until, "until").map_err(syntax)?,
            since: number(since, "since").map_err(syntax)?,
            offence: number(offence, "offence").map_err(syntax)?,
            hits: number(hits, "hits").map_err(syntax)?,
            jail,
            reason: unescape(reason, MAX_TEXT).map_err(syntax)?,
            evidence: unescape(evidence, MAX_TEXT).map_err(syntax)?,
        };
        if b.offence == 0 || b.since > b.until {
            return Err(syntax("offence 0, or since after until".into()));
        }
        seen.insert(prefix, n);
        out.push(b);
    }
    if end.is_none() {
        return Err(err(0, PersistErrorKind::Truncated));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(prefix: &str, now: Instant) -> Ban {
        Ban {
            prefix: prefix.parse().unwrap(),
            jail: "sip-auth".into(),
            reason: "5 auth-failure in 12s".into(),
            evidence: "User-Agent \"x\ty%\u{e9}\"".into(),
            hits: 5,
            offence: 2,
            since: now,
            until: now + Duration::from_secs(600),
            dropped: 0,
        }
    }

    fn wall() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_767_225_000)
    }

    #[test]
    fn render_then_parse_round_trips_with_escaped_text() {
        let now = Instant::now();
        let (a, b) = (ban("198.51.100.66/32", now), ban("2001:db8:1:2::/64", now));
        let text = render(&[&a, &b], now, wall());
        assert!(text.starts_with("# sbc bans v1\n") && text.ends_with("end 2\n"), "{text}");
        assert!(text.contains("x%09y%25%C3%A9"), "{text}");
        let back = parse(text.as_bytes()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].prefix, a.prefix);
        assert_eq!((back[0].since, back[0].until), (1_767_225_000, 1_767_225_600));
        assert_eq!(back[1].evidence, a.evidence);
        assert_eq!((back[1].offence, back[1].hits, back[1].jail.as_str()), (2, 5, "sip-auth"));
    }

    #[test]
    fn corrupt_or_truncated_files_are_refused_with_their_line() {
        let now = Instant::now();
        let good = render(&[&ban("198.51.100.66/32", now), &ban("198.51.100.67/32", now)], now, wall());
        let kind = |s: &str| parse(s.as_bytes()).map(|_| ()).unwrap_err();
        // Cut anywhere short of the whole file: refused, never half-read.
        for cut in 0..good.len() {
            assert!(parse(&good.as_bytes()[..cut]).is_err(), "cut at {cut} accepted");
        }
        assert_eq!(kind("# sbc bans v2\nend 0\n").kind, PersistErrorKind::BadHeader);
        let dup = good.replace("198.51.100.67/32", "198.51.100.66/32");
        assert_eq!(kind(&dup).kind, PersistErrorKind::Duplicate { first: 3 });
        let count = good.replace("end 2", "end 3");
        assert_eq!(kind(&count).kind, PersistErrorKind::Count { declared: 3, found: 2 });
        let after = format!("{good}198.51.100.1/32\t1\t1\t1\t1\tj\t\t\n");
        assert_eq!(kind(&after).kind, PersistErrorKind::AfterEnd);
        for bad in [
            good.replace("198.51.100.66/32", "198.51.100.66/24"),
            good.replace("\t2\t5\t", "\t0\t5\t"),
            good.replace("\t2\t5\t", "\t-2\t5\t"),
            good.replace("\t2\t5\t", "\t99999999999999999999\t5\t"),
            good.replace("%09", "%0"),
            good.replace("%09", "\u{7}"),
            good.replace("%C3%A9", "%C3"),
            good.replacen("\tsip-auth", "\t", 1),
            good.replacen("\tsip-auth", "", 1),
            format!("{MAGIC}\n{}\nend 0\n", "x".repeat(MAX_LINE + 1)),
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "accepted:\n{bad}");
        }
        assert!(matches!(parse(&[0xff, 0xfe]), Err(PersistError { line: 0, .. })));
    }

    #[test]
    fn every_single_byte_change_parses_or_is_refused_without_panicking() {
        let now = Instant::now();
        let good = render(&[&ban("198.51.100.66/32", now), &ban("2001:db8::/64", now)], now, wall());
        let mut refused = 0;
        for i in 0..good.len() {
            for b in [0u8, b'\t', b'\n', b'%', b'9', b'/', b' ', 0x80, 0xff] {
                let mut bytes = good.clone().into_bytes();
                bytes[i] = b;
                if let Err(e) = parse(&bytes) {
                    refused += 1;
                    assert!(!e.to_string().is_empty());
                }
            }
        }
        assert!(refused > good.len(), "most changes are refused: {refused}");
    }

    #[test]
    fn wall_clock_conversion_is_relative_to_now() {
        let now = Instant::now();
        assert_eq!(to_unix(now + Duration::from_secs(10), now, wall()), 1_767_225_010);
        assert_eq!(from_unix(1_767_225_010, now, wall()), Some(now + Duration::from_secs(10)));
    }
}
