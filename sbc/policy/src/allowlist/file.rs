//! The allowlist file, format v1, and the lookups the daemon makes with it.
//!
//! ```text
//! # sbc-allowlist v1
//! # source: mysql://sbc@localhost/voip
//! # Exported from providers + providers_ips by `sbc allowlist export`; edit the table, not this file.
//! # Every entry passes XDP; only IN and IN/OUT entries may start new requests.
//! # note: row 12 (provider 3 "Zadarma"): proto IAX2, skipped (only SIP rows are allowlisted)
//! # prefix           dir    prov  name                 row   origin
//! 95.211.119.240/32  IN     8     "VoxBeam"            2     ip
//! 203.0.113.50/32    OUT    8     "VoxBeam"            1     dns:sbc.voxbeam.com
//! ```
//!
//! * Line 1 is exactly `# sbc-allowlist v1`. Other lines starting with `#` are comments;
//!   `# source: ` (what it was exported from) and `# note: ` (rows skipped, shared prefixes)
//!   are kept by the parser, so `render(parse(text)) == text`.
//! * One entry per line, fields separated by blanks: prefix (CIDR, always with its length),
//!   direction (`IN`, `OUT`, `IN/OUT`), provider id, provider name (double-quoted; `\"`, `\\`
//!   and `\xHH` for control characters), `providers_ips` row id, origin (`ip`: the `ipaddress`
//!   column; `literal`: an address or CIDR written in `domainname`; `dns:<name>`: resolved).
//! * After the entries, one line per provider of the file whose caller-ID policy is known
//!   (`providers.cli_allowed`, `providers.dynamic_calls_caller_id`; see `crate::caller_id`),
//!   by provider id: `provider 7 cli_allowed=N caller_id=74951815283` (`caller_id=-`: none
//!   set). A file without such lines loads and means "no caller-ID policy".
//! * Sorted by prefix (IPv4 first, then by address, then length), provider id, row id; padded
//!   per line, never aligned to other lines, so a changed row is a one-line diff. No
//!   timestamp: exporting the same data twice gives the same bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::net::IpAddr;

use crate::caller_id::{CliPolicy, Number};

use super::{Direction, MAX_ENTRIES, MAX_FILE_BYTES, MAX_TEXT, Prefix, PrefixError};

/// First line of a v1 file.
pub const MAGIC: &str = "# sbc-allowlist v1";

/// Where an entry's prefix came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// `INET_NTOA(ipaddress)`.
    Ip,
    /// An address or CIDR written in `domainname`.
    Literal,
    /// An address `domainname` resolved to.
    Dns(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Ip => f.write_str("ip"),
            Origin::Literal => f.write_str("literal"),
            Origin::Dns(name) => write!(f, "dns:{name}"),
        }
    }
}

/// One line of the allowlist: a prefix and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub prefix: Prefix,
    pub direction: Direction,
    pub provider_id: u32,
    /// `providers.providername`; empty when NULL.
    pub provider_name: String,
    /// `providers_ips.id`.
    pub row_id: u32,
    pub origin: Origin,
}

impl Entry {
    fn sort_key(&self) -> (Prefix, u32, u32, &Origin, Direction) {
        (self.prefix, self.provider_id, self.row_id, &self.origin, self.direction)
    }
}

/// An error in an allowlist file, at a line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct FileError {
    pub line: u32,
    pub kind: FileErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileErrorKind {
    #[error("file is {size} bytes, more than the {max} accepted")]
    TooLarge { size: usize, max: usize },
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("not an sbc allowlist v1 file: the first line must be {MAGIC:?}, found {found:?}")]
    BadHeader { found: String },
    #[error("{0}")]
    Syntax(String),
    #[error("prefix: {0}")]
    Prefix(PrefixError),
    #[error("same prefix, provider and row as line {first}")]
    Duplicate { first: u32 },
    #[error("more than {max} {family} entries")]
    TooMany { family: &'static str, max: usize },
    #[error("no entries: an empty allowlist would drop every provider")]
    Empty,
}

/// Every error of a file, in line order; `Display` joins them with "; ".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileErrors(pub Vec<FileError>);

impl std::ops::Deref for FileErrors {
    type Target = Vec<FileError>;
    fn deref(&self) -> &Vec<FileError> {
        &self.0
    }
}

impl fmt::Display for FileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FileErrors {}

/// A loaded or freshly exported allowlist: its entries (sorted) and an index for lookups.
#[derive(Debug, Clone)]
pub struct Allowlist {
    source: String,
    notes: Vec<String>,
    entries: Vec<Entry>,
    cli: BTreeMap<u32, CliPolicy>,
    v4: Vec<Level>,
    v6: Vec<Level>,
}

/// All prefixes of one length, by their address bits; longest lengths first in the lists.
#[derive(Debug, Clone)]
struct Level {
    len: u8,
    by_addr: HashMap<u128, Vec<usize>>,
}

impl PartialEq for Allowlist {
    fn eq(&self, other: &Allowlist) -> bool {
        self.source == other.source
            && self.notes == other.notes
            && self.entries == other.entries
            && self.cli == other.cli
    }
}

impl Eq for Allowlist {}

fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_owned()
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Allowlist {
    /// Sorts the entries and indexes them. Callers ([`super::build`], [`Allowlist::parse`])
    /// have validated them.
    pub(crate) fn new(
        source: &str,
        notes: Vec<String>,
        mut entries: Vec<Entry>,
        cli: BTreeMap<u32, CliPolicy>,
    ) -> Allowlist {
        entries.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let mut levels: [HashMap<u8, HashMap<u128, Vec<usize>>>; 2] = Default::default();
        for (i, e) in entries.iter().enumerate() {
            let fam = usize::from(!e.prefix.is_ipv4());
            if let Some(l) = levels.get_mut(fam) {
                l.entry(e.prefix.prefix_len()).or_default().entry(bits(e.prefix.addr())).or_default().push(i);
            }
        }
        let [v4, v6] = levels.map(|l| {
            let mut v: Vec<Level> = l.into_iter().map(|(len, by_addr)| Level { len, by_addr }).collect();
            v.sort_by_key(|l| std::cmp::Reverse(l.len));
            v
        });
        Allowlist { source: one_line(source), notes: notes.iter().map(|n| one_line(n)).collect(), entries, cli, v4, v6 }
    }

    /// What it was exported from (the `# source:` line).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Rows skipped and prefixes shared between providers (the `# note:` lines).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// A provider's caller-ID policy (its `provider` line); `None`: no policy.
    pub fn cli_policy(&self, provider_id: u32) -> Option<&CliPolicy> {
        self.cli.get(&provider_id)
    }

    /// The provider we send calls to at `ip`: of the longest prefix containing it, the first
    /// OUT or IN/OUT entry. `None` when `ip` is no provider's outbound address.
    pub fn outbound(&self, ip: IpAddr) -> Option<&Entry> {
        self.matches(ip).find(|e| matches!(e.direction, Direction::Out | Direction::InOut))
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every prefix that passes the XDP filter: all entries, whatever their direction (see the
    /// module doc), sorted and without duplicates.
    pub fn xdp_prefixes(&self) -> Vec<Prefix> {
        let mut v: Vec<Prefix> = self.entries.iter().map(|e| e.prefix).collect();
        v.dedup();
        v
    }

    /// The entries of the longest prefix containing `ip` (empty if none). An IPv4-mapped IPv6
    /// address (`::ffff:a.b.c.d`, as a dual-stack socket reports it) is looked up as IPv4.
    pub fn matches(&self, ip: IpAddr) -> impl Iterator<Item = &Entry> {
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let levels = if ip.is_ipv4() { &self.v4 } else { &self.v6 };
        let hit = levels.iter().find_map(|l| {
            let p = Prefix::new_truncating(ip, l.len)?;
            l.by_addr.get(&bits(p.addr()))
        });
        hit.into_iter().flatten().filter_map(|&i| self.entries.get(i))
    }

    /// The entry that decides for `ip`: of the longest prefix containing it, one that may
    /// originate requests if there is one, else the first.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Entry> {
        let mut first = None;
        for e in self.matches(ip) {
            if e.direction.may_originate() {
                return Some(e);
            }
            first.get_or_insert(e);
        }
        first
    }

    /// Whether `ip` passes the XDP filter (is on the list at all).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.matches(ip).next().is_some()
    }

    /// Whether `ip` may start a new request (out-of-dialog INVITE, REGISTER, OPTIONS...):
    /// the longest prefix containing it has an IN or IN/OUT entry.
    pub fn may_originate(&self, ip: IpAddr) -> bool {
        self.lookup(ip).is_some_and(|e| e.direction.may_originate())
    }

    /// The file, format v1.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(64 * (self.entries.len() + 8));
        out.push_str(MAGIC);
        out.push('\n');
        let _ = writeln!(out, "# source: {}", self.source);
        out.push_str(
            "# Exported from providers + providers_ips by `sbc allowlist export`; edit the table, not this file.\n",
        );
        out.push_str("# Every entry passes XDP; only IN and IN/OUT entries may start new requests.\n");
        for n in &self.notes {
            let _ = writeln!(out, "# note: {n}");
        }
        let _ = writeln!(out, "# {:<16} {:<6} {:<5} {:<20} {:<5} origin", "prefix", "dir", "prov", "name", "row");
        for e in &self.entries {
            let _ = writeln!(
                out,
                "{:<18} {:<6} {:<5} {:<20} {:<5} {}",
                e.prefix.to_string(),
                e.direction.as_str(),
                e.provider_id,
                quote(&e.provider_name),
                e.row_id,
                e.origin
            );
        }
        if !self.cli.is_empty() {
            out.push_str(
                "# Caller-ID policy per provider (providers.cli_allowed, providers.dynamic_calls_caller_id).\n",
            );
        }
        for (id, p) in &self.cli {
            let number = p.number.as_ref().map_or("-", Number::as_str);
            let _ = writeln!(out, "provider {id} cli_allowed={} caller_id={number}", if p.allowed { 'Y' } else { 'N' });
        }
        out
    }

    /// Reads a v1 file (bytes or text); every error, with its line.
    pub fn parse(input: impl AsRef<[u8]>) -> Result<Allowlist, FileErrors> {
        Allowlist::parse_bytes(input.as_ref()).map_err(FileErrors)
    }

    fn parse_bytes(input: &[u8]) -> Result<Allowlist, Vec<FileError>> {
        let err = |line, kind| FileError { line, kind };
        if input.len() > MAX_FILE_BYTES {
            return Err(vec![err(1, FileErrorKind::TooLarge { size: input.len(), max: MAX_FILE_BYTES })]);
        }
        let text = match std::str::from_utf8(input) {
            Ok(t) => t,
            Err(e) => {
                let upto = input.get(..e.valid_up_to()).unwrap_or_default();
                let line =
                    u32::try_from(upto.iter().filter(|&&b| b == b'\n').count()).unwrap_or(u32::MAX).saturating_add(1);
                return Err(vec![err(line, FileErrorKind::NotUtf8)]);
            }
        };
        let mut errors = Vec::new();
        let mut source = None;
        let mut notes = Vec::new();
        let mut entries = Vec::new();
        let mut cli = BTreeMap::new();
        let mut cli_lines: HashMap<u32, u32> = HashMap::new();
        let mut seen: HashMap<(Prefix, u32, u32), u32> = HashMap::new();
        let mut distinct: [HashSet<Prefix>; 2] = Default::default();
        for (n, raw) in text.lines().enumerate() {
            let line = u32::try_from(n).unwrap_or(u32::MAX).saturating_add(1);
            let l = raw.trim_end_matches('\r');
            if line == 1 {
                if l != MAGIC {
                    return Err(vec![err(1, FileErrorKind::BadHeader { found: l.chars().take(80).collect() })]);
                }
                continue;
            }
            let l = l.trim();
            if l.is_empty() {
                continue;
            }
            if let Some(c) = l.strip_prefix('#') {
                if let Some(s) = c.strip_prefix(" source: ")
                    && source.is_none()
                {
                    source = Some(s.to_owned());
                } else if let Some(s) = c.strip_prefix(" note: ") {
                    notes.push(s.to_owned());
                }
                continue;
            }
            if let Some(rest) = l.strip_prefix("provider ") {
                match parse_provider(rest) {
                    Ok((id, p)) => match cli_lines.get(&id) {
                        Some(&first) => errors.push(err(
                            line,
                            FileErrorKind::Syntax(format!(
                                "second policy line for provider {id} (first: line {first})"
                            )),
                        )),
                        None => {
                            cli_lines.insert(id, line);
                            cli.insert(id, p);
                        }
                    },
                    Err(kind) => errors.push(err(line, kind)),
                }
                continue;
            }
            match parse_entry(l) {
                Ok(e) => {
                    // The XDP tries hold each distinct prefix once.
                    let fam = usize::from(!e.prefix.is_ipv4());
                    if let Some(set) = distinct.get_mut(fam) {
                        set.insert(e.prefix);
                        if set.len() > MAX_ENTRIES {
                            errors.push(err(
                                line,
                                FileErrorKind::TooMany {
                                    family: if fam == 0 { "IPv4" } else { "IPv6" },
                                    max: MAX_ENTRIES,
                                },
                            ));
                            break;
                        }
                    }
                    match seen.get(&(e.prefix, e.provider_id, e.row_id)) {
                        Some(&first) => errors.push(err(line, FileErrorKind::Duplicate { first })),
                        None => {
                            seen.insert((e.prefix, e.provider_id, e.row_id), line);
                            entries.push(e);
                        }
                    }
                }
                Err(kind) => errors.push(err(line, kind)),
            }
        }
        if text.is_empty() {
            return Err(vec![err(1, FileErrorKind::BadHeader { found: String::new() })]);
        }
        if entries.is_empty() && errors.is_empty() {
            errors.push(err(u32::try_from(text.lines().count()).unwrap_or(u32::MAX), FileErrorKind::Empty));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Allowlist::new(source.as_deref().unwrap_or(""), notes, entries, cli))
    }
}

/// `ID cli_allowed=Y|N caller_id=NUMBER|-` (after `provider `).
fn parse_provider(rest: &str) -> Result<(u32, CliPolicy), FileErrorKind> {
    let bad = || {
        FileErrorKind::Syntax(format!(
            "policy line {:?} is not `provider ID cli_allowed=Y|N caller_id=NUMBER|-`",
            rest.chars().take(80).collect::<String>()
        ))
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let [id, allowed, number] = f.as_slice() else { return Err(bad()) };
    let id = id.parse::<u32>().ok().filter(|_| id.bytes().all(|b| b.is_ascii_digit())).ok_or_else(bad)?;
    let allowed = match allowed.strip_prefix("cli_allowed=") {
        Some("Y") => true,
        Some("N") => false,
        _ => return Err(bad()),
    };
    let number = match number.strip_prefix("caller_id=") {
        Some("-") => None,
        Some(n) => Some(Number::parse(n.as_bytes()).ok_or_else(bad)?),
        None => return Err(bad()),
    };
    Ok((id, CliPolicy { allowed, number }))
}

/// `"name"` with `\"`, `\\` and `\xHH` (control characters) escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The fields of an entry line: blank-separated, the name double-quoted.
fn fields(l: &str) -> Result<Vec<String>, FileErrorKind> {
    let mut out = Vec::new();
    let mut chars = l.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { return Ok(out) };
        let mut f = String::new();
        if c == '"' {
            chars.next();
            f.push('"');
            loop {
                match chars.next() {
                    None => return Err(FileErrorKind::Syntax("unterminated quoted name".into())),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('"') => f.push('"'),
                        Some('\\') => f.push('\\'),
                        Some('x') => {
                            let hex: String = chars.by_ref().take(2).collect();
                            let v =
                                u8::from_str_radix(&hex, 16).ok().filter(|v| v.is_ascii_control() && hex.len() == 2);
                            match v {
                                Some(v) => f.push(char::from(v)),
                                None => return Err(FileErrorKind::Syntax(format!("bad escape \\x{hex} in a name"))),
                            }
                        }
                        other => {
                            return Err(FileErrorKind::Syntax(format!(
                                "bad escape \\{} in a name",
                                other.map(String::from).unwrap_or_default()
                            )));
                        }
                    },
                    Some(c) if c.is_control() => {
                        return Err(FileErrorKind::Syntax("unescaped control character in a name".into()));
                    }
                    Some(c) => f.push(c),
                }
            }
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return Err(FileErrorKind::Syntax("no blank after a quoted name".into()));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '"' {
                    return Err(FileErrorKind::Syntax("'\"' inside an unquoted field".into()));
                }
                f.push(c);
                chars.next();
            }
        }
        out.push(f);
    }
}

fn parse_entry(l: &str) -> Result<Entry, FileErrorKind> {
    let f = fields(l)?;
    let [prefix, direction, provider_id, name, row_id, origin] = f.as_slice() else {
        return Err(FileErrorKind::Syntax(format!(
            "expected 6 fields (prefix direction provider_id \"provider_name\" row_id origin), found {}",
            f.len()
        )));
    };
    if !prefix.contains('/') {
        return Err(FileErrorKind::Syntax(format!("prefix {prefix:?} has no /length")));
    }
    let prefix: Prefix = prefix.parse().map_err(FileErrorKind::Prefix)?;
    let direction = match direction.as_str() {
        "IN" => Direction::In,
        "OUT" => Direction::Out,
        "IN/OUT" => Direction::InOut,
        other => return Err(FileErrorKind::Syntax(format!("direction {other:?} is not IN, OUT or IN/OUT"))),
    };
    let number = |what: &str, s: &str| -> Result<u32, FileErrorKind> {
        let ok = !s.is_empty()
            && s.len() <= 10
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        ok.then(|| s.parse().ok())
            .flatten()
            .ok_or_else(|| FileErrorKind::Syntax(format!("{what} {s:?} is not an unsigned 32-bit integer")))
    };
    let provider_id = number("provider id", provider_id)?;
    let row_id = number("row id", row_id)?;
    let Some(name) = name.strip_prefix('"') else {
        return Err(FileErrorKind::Syntax(format!("provider name {name:?} is not double-quoted")));
    };
    if name.len() > MAX_TEXT {
        return Err(FileErrorKind::Syntax(format!("provider name longer than {MAX_TEXT} bytes")));
    }
    let origin = match origin.as_str() {
        "ip" => Origin::Ip,
        "literal" => Origin::Literal,
        o => match o.strip_prefix("dns:") {
            Some(h) if is_hostname(h) => Origin::Dns(h.to_owned()),
            _ => return Err(FileErrorKind::Syntax(format!("origin {o:?} is not ip, literal or dns:<host name>"))),
        },
    };
    Ok(Entry { prefix, direction, provider_id, provider_name: name.to_owned(), row_id, origin })
}

/// A DNS host name (RFC 1123): dot-separated labels of letters, digits, `-` (not at either
/// end) and `_`, each 1..=63 bytes, at most 253 in all, a trailing dot allowed, and a last
/// label that is not all digits (so a mistyped address is not taken for a name).
pub(crate) fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    s.split('.').all(label_ok) && s.rsplit('.').next().is_some_and(|last| !last.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(prefix: &str, direction: Direction, provider_id: u32, name: &str, row_id: u32, origin: Origin) -> Entry {
        Entry { prefix: prefix.parse().unwrap(), direction, provider_id, provider_name: name.into(), row_id, origin }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sample() -> Allowlist {
        Allowlist::new(
            "sql:seed.sql",
            vec!["row 12 (provider 3 \"Zadarma\"): proto IAX2, skipped".into()],
            vec![
                e("203.0.113.0/24", Direction::InOut, 7, "WestCall", 50, Origin::Literal),
                e("203.0.113.5/32", Direction::Out, 7, "WestCall", 51, Origin::Ip),
                e("2001:db8::50/128", Direction::Out, 8, "Vox \"Beam\"\\\t", 1, Origin::Dns("sbc.voxbeam.com".into())),
                e("198.51.100.7/32", Direction::Out, 3, "Zadarma", 7, Origin::Dns("sip.zadarma.com".into())),
                e("198.51.100.7/32", Direction::In, 4, "Multitel", 9, Origin::Ip),
                e("95.211.119.240/32", Direction::In, 8, "Вокс", 2, Origin::Ip),
            ],
            BTreeMap::new(),
        )
    }

    #[test]
    fn caller_id_policy_lines_round_trip_and_are_checked() {
        let mut cli = BTreeMap::new();
        cli.insert(8, CliPolicy { allowed: true, number: None });
        cli.insert(7, CliPolicy { allowed: false, number: Number::parse(b"+74951815283") });
        let a = Allowlist::new("x", vec![], sample().entries().to_vec(), cli);
        let text = a.render();
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        assert_eq!(
            tail,
            [
                "provider 8 cli_allowed=Y caller_id=-",
                "provider 7 cli_allowed=N caller_id=+74951815283",
                "# Caller-ID policy per provider (providers.cli_allowed, providers.dynamic_calls_caller_id).",
            ]
        );
        let back = Allowlist::parse(&text).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.render(), text);
        assert!(back.cli_policy(7).is_some_and(|p| !p.allowed));
        assert_eq!(back.cli_policy(3), None);
        // The provider we send to: OUT or IN/OUT entries of the longest prefix.
        assert_eq!(back.outbound(ip("203.0.113.5")).map(|e| e.row_id), Some(51));
        assert_eq!(back.outbound(ip("203.0.113.9")).map(|e| e.row_id), Some(50));
        assert_eq!(back.outbound(ip("198.51.100.7")).map(|e| e.provider_id), Some(3));
        assert_eq!(back.outbound(ip("95.211.119.240")), None);
        // A file without policy lines has none.
        assert_eq!(sample().cli_policy(7), None);

        let bad = format!(
            "{MAGIC}\n203.0.113.1/32 OUT 1 \"A\" 1 ip\n\
             provider 1 cli_allowed=N caller_id=-\n\
             provider 1 cli_allowed=Y caller_id=-\n\
             provider x cli_allowed=N caller_id=-\n\
             provider 2 cli_allowed=maybe caller_id=-\n\
             provider 3 cli_allowed=N caller_id=alice\n\
             provider 4 cli_allowed=N\n"
        );
        let lines: Vec<u32> = Allowlist::parse(bad.as_bytes()).unwrap_err().iter().map(|e| e.line).collect();
        assert_eq!(lines, [4, 5, 6, 7, 8]);
    }

    #[test]
    fn render_is_sorted_padded_and_round_trips() {
        let a = sample();
        let text = a.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], MAGIC);
        assert_eq!(lines[1], "# source: sql:seed.sql");
        assert_eq!(lines[4], "# note: row 12 (provider 3 \"Zadarma\"): proto IAX2, skipped");
        assert_eq!(lines[5], "# prefix           dir    prov  name                 row   origin");
        assert_eq!(
            &lines[6..],
            &[
                "95.211.119.240/32  IN     8     \"Вокс\"               2     ip",
                "198.51.100.7/32    OUT    3     \"Zadarma\"            7     dns:sip.zadarma.com",
                "198.51.100.7/32    IN     4     \"Multitel\"           9     ip",
                "203.0.113.0/24     IN/OUT 7     \"WestCall\"           50    literal",
                "203.0.113.5/32     OUT    7     \"WestCall\"           51    ip",
                "2001:db8::50/128   OUT    8     \"Vox \\\"Beam\\\"\\\\\\x09\" 1     dns:sbc.voxbeam.com",
            ]
        );
        let back = Allowlist::parse(text.as_bytes()).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.render(), text);
    }

    #[test]
    fn longest_prefix_decides_who_may_originate() {
        let a = sample();
        // Inside the IN/OUT /24 but on the OUT-only /32: passes XDP, may not originate.
        assert!(a.contains(ip("203.0.113.5")));
        assert!(!a.may_originate(ip("203.0.113.5")));
        assert_eq!(a.lookup(ip("203.0.113.5")).unwrap().row_id, 51);
        assert!(a.may_originate(ip("203.0.113.6")));
        assert_eq!(a.lookup(ip("203.0.113.6")).unwrap().row_id, 50);
        // Shared by two providers: OUT for one, IN for the other → may originate; lookup picks the IN one.
        assert!(a.may_originate(ip("198.51.100.7")));
        assert_eq!(a.lookup(ip("198.51.100.7")).unwrap().provider_id, 4);
        assert_eq!(a.matches(ip("198.51.100.7")).count(), 2);
        // OUT-only v6 and unlisted addresses; v4-mapped v6 is looked up as v4.
        assert!(a.contains(ip("2001:db8::50")) && !a.may_originate(ip("2001:db8::50")));
        assert!(!a.contains(ip("2001:db8::51")) && !a.contains(ip("192.0.2.1")));
        assert!(a.may_originate(ip("::ffff:95.211.119.240")));
        assert_eq!(a.xdp_prefixes().len(), 5);
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let text = format!(
            "{MAGIC}\n\
             # a comment\n\
             203.0.113.5/24 IN 1 \"A\" 1 ip\n\
             203.0.113.5 IN 1 \"A\" 1 ip\n\
             203.0.113.6/32 INBOUND 1 \"A\" 1 ip\n\
             203.0.113.7/32 IN x \"A\" 1 ip\n\
             203.0.113.8/32 IN 1 A 1 ip\n\
             203.0.113.9/32 IN 1 \"A\" 1 dns:bad..name\n\
             203.0.113.10/32 IN 1 \"A 1 ip\n\
             203.0.113.11/32 IN 1 \"A\" 1\n\
             203.0.113.12/32 IN 1 \"A\" 1 ip\n\
             203.0.113.12/32 OUT 1 \"A\" 1 ip\n"
        );
        let errs: Vec<String> =
            Allowlist::parse(text.as_bytes()).unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(
            errs,
            vec![
                "line 3: prefix: \"203.0.113.5/24\": host bits set (did you mean 203.0.113.0/24?)",
                "line 4: prefix \"203.0.113.5\" has no /length",
                "line 5: direction \"INBOUND\" is not IN, OUT or IN/OUT",
                "line 6: provider id \"x\" is not an unsigned 32-bit integer",
                "line 7: provider name \"A\" is not double-quoted",
                "line 8: origin \"dns:bad..name\" is not ip, literal or dns:<host name>",
                "line 9: unterminated quoted name",
                "line 10: expected 6 fields (prefix direction provider_id \"provider_name\" row_id origin), found 5",
                "line 12: same prefix, provider and row as line 11",
            ]
        );
    }

    #[test]
    fn header_empty_and_size_are_checked() {
        assert!(matches!(
            Allowlist::parse(b"203.0.113.1/32 IN 1 \"A\" 1 ip\n").unwrap_err()[0].kind,
            FileErrorKind::BadHeader { .. }
        ));
        assert!(matches!(
            Allowlist::parse(b"# sbc-allowlist v2\n").unwrap_err()[0].kind,
            FileErrorKind::BadHeader { .. }
        ));
        assert!(matches!(Allowlist::parse(b"").unwrap_err()[0].kind, FileErrorKind::BadHeader { .. }));
        assert_eq!(
            Allowlist::parse(format!("{MAGIC}\n# source: x\n").as_bytes()).unwrap_err()[0].kind,
            FileErrorKind::Empty
        );
        assert!(matches!(
            Allowlist::parse(vec![b'#'; MAX_FILE_BYTES + 1]).unwrap_err()[0].kind,
            FileErrorKind::TooLarge { .. }
        ));
        let mut bad = format!("{MAGIC}\n\u{ff}\n").into_bytes();
        bad.push(0xff);
        assert_eq!(Allowlist::parse(&bad).unwrap_err()[0], FileError { line: 3, kind: FileErrorKind::NotUtf8 });
    }

    #[test]
    fn hostnames() {
        for ok in ["sbc.voxbeam.com", "sip.zadarma.com.", "_sip._udp.example.net", "a", "x-1.example"] {
            assert!(is_hostname(ok), "{ok}");
        }
        for bad in
            ["", ".", "a..b", "-a.example", "a-.example", "203.0.113.300", "1.2.3", "a b", "тест.рф", &"a".repeat(64)]
        {
            assert!(!is_hostname(bad), "{bad}");
        }
    }
}
