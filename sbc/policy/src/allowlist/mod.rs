//! The trunk allowlist: from the operator's `providers` / `providers_ips` tables (a live MariaDB
//! read by the daemon crate, a SQL dump, or CSV) to a deterministic, diffable allowlist file
//! with provenance, and back from that file to the lookups the daemon needs. Sans-IO: name
//! resolution is a closure the caller passes in; no files, sockets or clocks here.
//!
//! Pipeline: [`sql::parse`] / [`csv::parse`] → [`Tables`] → [`build`] (join, `INET_NTOA`, resolve,
//! validate, collect every error) → [`Allowlist`] → [`Allowlist::render`] (file format v1);
//! [`Allowlist::parse`] reads the file back (the daemon's loader).
//!
//! # The table (the seed's `CREATE TABLE`s are in `tests/vectors/providers/seed.sql`)
//!
//! `providers_ips(id, provider_id, ipaddress INT UNSIGNED DEFAULT 2130706433, domainname,
//! direction ENUM('IN','OUT','IN/OUT'), proto ENUM('SIP','IAX2','H323'))`, joined with
//! `providers(id, providername)`; `providers.cli_allowed` and `dynamic_calls_caller_id` (the
//! caller-ID policy, `crate::caller_id`) are read where the source has them and written as one
//! `provider` line per listed provider. What a row contributes ([`build`]):
//!
//! | `ipaddress` | `domainname` | entries | origin |
//! |---|---|---|---|
//! | not 2130706433 | NULL, empty or a host name | `INET_NTOA(ipaddress)/32`; the name is only a label, not resolved | `ip` |
//! | not 2130706433 | the same address literally | that `/32` | `ip` |
//! | not 2130706433 | a CIDR containing the address | the CIDR | `literal` |
//! | not 2130706433 | another address, or a CIDR not containing it | error (the two columns disagree) | |
//! | 2130706433 (127.0.0.1, "resolve the name") | an IP address or CIDR | that prefix | `literal` |
//! | 2130706433 | a host name | one host prefix per address the resolver returns (A and AAAA) | `dns:<name>` |
//! | 2130706433 | NULL or empty | error | |
//!
//! Rows whose `proto` is not SIP are skipped with a note. A name that does not resolve is an
//! error naming the row, unless `allow_unresolved` is set: then the row is skipped and a note in
//! the file says so. Loopback, unspecified, multicast and broadcast addresses and `/0` are
//! errors: none can be a provider's signalling source, and `/0` would admit everyone.
//!
//! # Direction: what passes XDP, what may start a request
//!
//! An OUT-only address is one we send calls to. It must still reach us: it answers our
//! INVITEs (responses), and sends in-dialog requests (BYE, re-INVITE, UPDATE, INFO, NOTIFY) in
//! those calls. So **every row, IN, OUT and IN/OUT, passes the XDP filter**
//! ([`Allowlist::xdp_prefixes`]). Only **IN and IN/OUT** rows may *originate* new requests
//! (out-of-dialog INVITE, REGISTER, OPTIONS, MESSAGE, SUBSCRIBE): that check is the daemon's,
//! in userspace, where it knows whether a request is in a dialog ([`Allowlist::may_originate`]).
//!
//! Lookups use longest-prefix semantics, like the XDP LPM trie: for an address, the entries of
//! the longest prefix that contains it decide. So an OUT-only `/32` inside an IN/OUT `/24` is
//! OUT-only. When several entries share that prefix (legitimate duplicates, below), the
//! address may originate if any of them allows it.
//!
//! # Duplicates
//!
//! * Two rows with the same `id`, or two providers with the same `id`: error naming both
//!   (a dump or CSV can have them; the live table cannot).
//! * An exact duplicate row (same provider, `ipaddress`, `domainname`, direction; SIP): error
//!   naming both rows.
//! * The same prefix from two rows of the same provider, both written as addresses (`ip` or
//!   `literal`): error naming both rows. Either a copy/paste mistake or a contradiction between
//!   two directions; a row with IN/OUT says "both".
//! * **Legitimate**, kept, one line each: the same prefix for two *different* providers (two
//!   brands on one carrier platform, a shared wholesale SBC; a note names both), and an address
//!   a name resolves to that another row of the same provider also lists (names move: the OUT
//!   name of a carrier often points at one of its IN servers). An address returned twice for
//!   one name is kept once.
//!
//! # CSV
//!
//! One file, RFC 4180, a header line naming the columns `id, provider_id, provider_name,
//! ipaddress, domainname, direction, proto` in any order (`providername` is accepted for
//! `provider_name`; `cli_allowed` and `dynamic_calls_caller_id` are read when present; other
//! columns are ignored), e.g. from
//! `SELECT i.id, i.provider_id, p.providername AS provider_name, i.ipaddress, i.domainname,
//! i.direction, i.proto FROM providers_ips i JOIN providers p ON p.id = i.provider_id`.
//! `ipaddress` is the INT or a dotted quad. An unquoted `\N` or `NULL`, or an empty field,
//! is NULL. See [`csv`].

pub mod csv;
mod export;
mod file;
pub mod sql;

use std::fmt;

pub use export::{Export, ExportError, Options, RowRef, build};
pub use file::{Allowlist, Entry, FileError, FileErrorKind, FileErrors, Origin};

use crate::caller_id::CliPolicy;
use crate::{Prefix, PrefixError};

/// `ipaddress` of a row whose address is to be taken from `domainname`: 127.0.0.1, the
/// column's default.
pub const PLACEHOLDER: u32 = 2_130_706_433;

/// Largest SQL dump accepted, in bytes. Dump only the two tables (`mysqldump DB providers
/// providers_ips`), not the whole database.
pub const MAX_SQL_BYTES: usize = 256 << 20;
/// Largest CSV file accepted, in bytes.
pub const MAX_CSV_BYTES: usize = 64 << 20;
/// Largest allowlist file accepted, in bytes.
pub const MAX_FILE_BYTES: usize = 64 << 20;
/// Most rows accepted per table.
pub const MAX_ROWS: usize = 100_000;
/// Most entries in an allowlist, per address family: the capacity of each XDP LPM trie
/// (`sbc_ebpf_common::ALLOW_MAX_ENTRIES`).
pub const MAX_ENTRIES: usize = 65_536;
/// Longest `domainname` or provider name accepted, in bytes.
pub const MAX_TEXT: usize = 255;

/// `providers_ips.direction`: which way calls go with this address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// The provider sends us calls from here.
    In,
    /// We send calls here (it answers and sends in-dialog requests, nothing else).
    Out,
    /// Both.
    InOut,
}

impl Direction {
    /// The ENUM's spelling: `IN`, `OUT`, `IN/OUT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "IN",
            Direction::Out => "OUT",
            Direction::InOut => "IN/OUT",
        }
    }

    /// Parses the ENUM value; case-insensitive like MariaDB's ENUM comparison.
    pub fn parse(s: &str) -> Option<Direction> {
        let s = s.trim();
        [Direction::In, Direction::Out, Direction::InOut].into_iter().find(|d| d.as_str().eq_ignore_ascii_case(s))
    }

    /// Whether an address with this direction may start new requests (see the module doc).
    pub fn may_originate(self) -> bool {
        matches!(self, Direction::In | Direction::InOut)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `providers_ips.proto`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Proto {
    Sip,
    /// Anything else (the ENUM also has IAX2 and H323): skipped by the export.
    Other(String),
}

impl Proto {
    pub fn parse(s: &str) -> Proto {
        let t = s.trim();
        if t.eq_ignore_ascii_case("SIP") { Proto::Sip } else { Proto::Other(t.to_owned()) }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proto::Sip => f.write_str("SIP"),
            Proto::Other(s) => f.write_str(s),
        }
    }
}

/// A row of `providers` (the columns the allowlist needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub id: u32,
    /// `providername` (NULL-able in the schema).
    pub name: Option<String>,
    /// `cli_allowed` and `dynamic_calls_caller_id`; `None` when the source has no
    /// `cli_allowed` (an older dump, a CSV without the column) or it is NULL: no policy.
    pub cli: Option<CliPolicy>,
    /// Where it was read (line of a dump or CSV); `None` from a live database.
    pub line: Option<u32>,
}

/// A row of `providers_ips`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderIp {
    pub id: u32,
    pub provider_id: u32,
    /// IPv4 as `INET_ATON` stores it; [`PLACEHOLDER`] means "resolve `domainname`".
    pub ipaddress: u32,
    pub domainname: Option<String>,
    pub direction: Direction,
    pub proto: Proto,
    /// Where it was read (line of a dump or CSV); `None` from a live database.
    pub line: Option<u32>,
}

/// The two tables, as read from any source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub providers: Vec<Provider>,
    pub ips: Vec<ProviderIp>,
}

/// A parse error of a SQL dump or CSV file, at a line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    pub line: u32,
    pub kind: ParseErrorKind,
}

/// What was wrong with the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("input is {size} bytes, more than the {max} accepted")]
    TooLarge { size: usize, max: usize },
    #[error("more than {max} rows in `{table}`")]
    TooManyRows { table: &'static str, max: usize },
    #[error("unterminated {what}")]
    Unterminated { what: &'static str },
    #[error("{0}")]
    Syntax(String),
    #[error("`{table}` row has {got} values, expected {expected}")]
    Arity { table: &'static str, got: usize, expected: usize },
    #[error("`{table}` has no column `{column}`")]
    MissingColumn { table: &'static str, column: &'static str },
    #[error("`{table}`.`{column}`: {value:?} is not {expected}")]
    BadValue { table: &'static str, column: &'static str, value: String, expected: &'static str },
    #[error("`{table}`.`{column}` is longer than {max} bytes")]
    TooLong { table: &'static str, column: &'static str, max: usize },
}

impl ParseError {
    pub(crate) fn new(line: u32, kind: ParseErrorKind) -> ParseError {
        ParseError { line, kind }
    }
}

/// A `providers_ips` row from its columns as text (`None` = NULL), in the order `id,
/// provider_id, ipaddress, domainname, direction, proto`, checked exactly as the dump and CSV
/// readers check them. For rows read from a live database.
pub fn ip_row(cols: [Option<&str>; 6]) -> Result<ProviderIp, Vec<ParseErrorKind>> {
    let t = "providers_ips";
    let [id, provider_id, ipaddress, domainname, direction, proto] = cols;
    let mut errs = Vec::new();
    let mut keep = |r: Result<(), ParseErrorKind>| {
        if let Err(e) = r {
            errs.push(e);
        }
    };
    let mut row = ProviderIp {
        id: 0,
        provider_id: 0,
        ipaddress: 0,
        domainname: None,
        direction: Direction::In,
        proto: Proto::Sip,
        line: None,
    };
    keep(value::uint(t, "id", id).map(|v| row.id = v));
    keep(value::uint(t, "provider_id", provider_id).map(|v| row.provider_id = v));
    keep(value::ipaddress(t, ipaddress).map(|v| row.ipaddress = v));
    keep(value::text(t, "domainname", domainname).map(|v| row.domainname = v));
    keep(value::direction(t, direction).map(|v| row.direction = v));
    keep(value::proto(t, proto).map(|v| row.proto = v));
    if errs.is_empty() { Ok(row) } else { Err(errs) }
}

/// A `providers` row from `id, providername, cli_allowed, dynamic_calls_caller_id` as text
/// (`None` = NULL); see [`ip_row`].
pub fn provider_row(cols: [Option<&str>; 4]) -> Result<Provider, Vec<ParseErrorKind>> {
    let [id, name, cli_allowed, number] = cols;
    let id = value::uint("providers", "id", id);
    let name = value::text("providers", "providername", name);
    let cli = value::cli("providers", cli_allowed, number);
    match (id, name, cli) {
        (Ok(id), Ok(name), Ok(cli)) => Ok(Provider { id, name, cli, line: None }),
        (id, name, cli) => Err(id.err().into_iter().chain(name.err()).chain(cli.err()).collect()),
    }
}

/// Converts one row's raw column values (already unquoted; `None` = NULL) into typed rows.
/// Shared by the SQL and CSV readers so both accept and reject exactly the same values.
pub(crate) mod value {
    use super::{Direction, MAX_TEXT, ParseErrorKind, Proto};
    use crate::caller_id::{CliPolicy, Number};

    /// `cli_allowed` (`Y`/`N`, case-insensitive like the ENUM; NULL: no policy) with
    /// `dynamic_calls_caller_id` (digits, optional `+`; NULL or empty: none).
    pub(crate) fn cli(
        table: &'static str,
        allowed: Option<&str>,
        number: Option<&str>,
    ) -> Result<Option<CliPolicy>, ParseErrorKind> {
        let number = match number.map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(Number::parse(s.as_bytes()).ok_or_else(|| {
                bad(table, "dynamic_calls_caller_id", number, "a telephone number (digits, optional leading +)")
            })?),
        };
        match allowed.map(str::trim) {
            None | Some("") => Ok(None),
            Some(s) if s.eq_ignore_ascii_case("Y") => Ok(Some(CliPolicy { allowed: true, number })),
            Some(s) if s.eq_ignore_ascii_case("N") => Ok(Some(CliPolicy { allowed: false, number })),
            Some(_) => Err(bad(table, "cli_allowed", allowed, "Y or N")),
        }
    }

    pub(crate) fn bad(
        table: &'static str,
        column: &'static str,
        v: Option<&str>,
        expected: &'static str,
    ) -> ParseErrorKind {
        ParseErrorKind::BadValue { table, column, value: v.unwrap_or("NULL").to_owned(), expected }
    }

    /// An `INT UNSIGNED`: decimal digits, at most u32::MAX.
    pub(crate) fn uint(table: &'static str, column: &'static str, v: Option<&str>) -> Result<u32, ParseErrorKind> {
        let s = v.map(str::trim).unwrap_or("");
        if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(table, column, v, "an unsigned 32-bit integer"));
        }
        s.parse().map_err(|_| bad(table, column, v, "an unsigned 32-bit integer"))
    }

    /// `ipaddress`: the INT, or (CSV written by hand or with `INET_NTOA`) a dotted quad.
    pub(crate) fn ipaddress(table: &'static str, v: Option<&str>) -> Result<u32, ParseErrorKind> {
        let s = v.map(str::trim).unwrap_or("");
        if s.contains('.') {
            return s
                .parse::<std::net::Ipv4Addr>()
                .map(u32::from)
                .map_err(|_| bad(table, "ipaddress", v, "an unsigned 32-bit integer or an IPv4 address"));
        }
        uint(table, "ipaddress", v)
            .map_err(|_| bad(table, "ipaddress", v, "an unsigned 32-bit integer or an IPv4 address"))
    }

    /// A NULL-able text column; empty and blank become NULL.
    pub(crate) fn text(
        table: &'static str,
        column: &'static str,
        v: Option<&str>,
    ) -> Result<Option<String>, ParseErrorKind> {
        match v.map(str::trim) {
            None | Some("") => Ok(None),
            Some(s) if s.len() > MAX_TEXT => Err(ParseErrorKind::TooLong { table, column, max: MAX_TEXT }),
            Some(s) => Ok(Some(s.to_owned())),
        }
    }

    pub(crate) fn direction(table: &'static str, v: Option<&str>) -> Result<Direction, ParseErrorKind> {
        v.and_then(Direction::parse).ok_or_else(|| bad(table, "direction", v, "IN, OUT or IN/OUT"))
    }

    pub(crate) fn proto(table: &'static str, v: Option<&str>) -> Result<Proto, ParseErrorKind> {
        match v.map(str::trim) {
            None | Some("") => Err(bad(table, "proto", v, "a protocol (SIP, IAX2, H323)")),
            Some(s) if s.len() > MAX_TEXT => Err(ParseErrorKind::TooLong { table, column: "proto", max: MAX_TEXT }),
            Some(s) => Ok(Proto::parse(s)),
        }
    }
}

#[cfg(test)]
mod tests;
