//! [`build`]: the two tables → an [`Allowlist`], by the rules of the module doc, collecting
//! every error rather than stopping at the first.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use super::file::is_hostname;
use super::{
    Allowlist, Direction, Entry, MAX_ENTRIES, Origin, PLACEHOLDER, Prefix, PrefixError, Proto, ProviderIp, Tables,
};

/// How to export.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// What the tables were read from, for the `# source:` line (no password, no timestamp).
    pub source: String,
    /// Skip rows whose name does not resolve (with a note) instead of failing.
    pub allow_unresolved: bool,
}

/// A `providers_ips` row, as errors name it: its id and, for a dump or CSV, its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRef {
    pub id: u32,
    pub line: Option<u32>,
}

impl RowRef {
    fn of(r: &ProviderIp) -> RowRef {
        RowRef { id: r.id, line: r.line }
    }
}

impl fmt::Display for RowRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "providers_ips row {}", self.id)?;
        if let Some(l) = self.line {
            write!(f, " (line {l})")?;
        }
        Ok(())
    }
}

fn at(line: Option<u32>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// Why the export failed; every variant names the row(s).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("providers row {id}{} and row {id}{}: the same id twice", at(*first), at(*second))]
    DuplicateProviderId { id: u32, first: Option<u32>, second: Option<u32> },
    #[error("{first} and {second}: the same id twice")]
    DuplicateRowId { first: RowRef, second: RowRef },
    #[error("{row}: provider_id {provider_id} is not in providers")]
    UnknownProvider { row: RowRef, provider_id: u32 },
    #[error("{row}: ipaddress is the 127.0.0.1 placeholder but domainname is empty")]
    NoName { row: RowRef },
    #[error("{row}: domainname: {error}")]
    InvalidCidr { row: RowRef, error: PrefixError },
    #[error("{row}: domainname {name:?} is not an IP address, CIDR or host name")]
    InvalidName { row: RowRef, name: String },
    #[error("{row}: ipaddress {ipaddress} and domainname {domainname:?} disagree")]
    Mismatch { row: RowRef, ipaddress: Ipv4Addr, domainname: String },
    #[error("{row}: {prefix}{}: {why}", origin.as_ref().map(|o| format!(" (from {o})")).unwrap_or_default())]
    Unusable { row: RowRef, prefix: Prefix, origin: Option<Origin>, why: &'static str },
    #[error("{row}: {name} did not resolve: {reason}")]
    Unresolved { row: RowRef, name: String, reason: String },
    #[error("{second} duplicates {first} (same provider, address, name, direction)")]
    DuplicateRow { first: RowRef, second: RowRef },
    #[error(
        "{second} lists {prefix} for provider {provider_id} again (already {first}); use one row, IN/OUT for both directions"
    )]
    DuplicatePrefix { prefix: Prefix, provider_id: u32, first: RowRef, second: RowRef },
    #[error("no entries{}: an empty allowlist would drop every provider", if *skipped > 0 { format!(" ({skipped} rows skipped)") } else { String::new() })]
    Empty { skipped: usize },
    #[error("{count} {family} entries, more than the {max} the XDP map holds")]
    TooMany { family: &'static str, count: usize, max: usize },
}

/// The export's result: the allowlist, and warnings for stderr that carry what may vary
/// between runs (the resolver's messages), which is why they are not in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub allowlist: Allowlist,
    pub warnings: Vec<String>,
}

/// Why an address cannot be a provider's source; `None` if it can.
fn unusable(p: &Prefix) -> Option<&'static str> {
    if p.prefix_len() == 0 {
        return Some("a /0 prefix would admit every address");
    }
    let host = (p.is_ipv4() && p.prefix_len() == 32) || (!p.is_ipv4() && p.prefix_len() == 128);
    match p.addr() {
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if host && a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if host && a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V6(a) if host && (a.is_loopback() || a.is_unspecified()) => Some("a loopback or unspecified address"),
        _ => None,
    }
}

/// What one row's `domainname` says.
enum Name {
    None,
    Prefix(Prefix),
    Host(String),
}

fn classify(row: RowRef, d: Option<&str>) -> Result<Name, ExportError> {
    let Some(d) = d.map(str::trim).filter(|d| !d.is_empty()) else { return Ok(Name::None) };
    if d.contains('/') || d.parse::<IpAddr>().is_ok() {
        return d.parse().map(Name::Prefix).map_err(|error| ExportError::InvalidCidr { row, error });
    }
    // Looks like an address but is none (203.0.113.300, 2001:db8::g): an invalid address,
    // not a name to resolve.
    if d.contains(':') || d.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(ExportError::InvalidCidr { row, error: PrefixError::Syntax { input: d.to_owned() } });
    }
    if is_hostname(d) {
        Ok(Name::Host(d.to_owned()))
    } else {
        Err(ExportError::InvalidName { row, name: d.to_owned() })
    }
}

/// The prefixes a row stands for without resolving anything, or the name to resolve.
enum Plan {
    Static(Prefix, Origin),
    Resolve(String),
}

fn plan(r: &ProviderIp) -> Result<Plan, ExportError> {
    let row = RowRef::of(r);
    let name = classify(row, r.domainname.as_deref())?;
    if r.ipaddress == PLACEHOLDER {
        return match name {
            Name::None => Err(ExportError::NoName { row }),
            Name::Prefix(p) => Ok(Plan::Static(p, Origin::Literal)),
            Name::Host(h) => Ok(Plan::Resolve(h)),
        };
    }
    let ip = Ipv4Addr::from(r.ipaddress);
    let host = Prefix::host(IpAddr::V4(ip));
    match name {
        // The name is a label for a fixed address (the seed's proxy-1.fr.zadarma.com): kept as is.
        Name::None | Name::Host(_) => Ok(Plan::Static(host, Origin::Ip)),
        Name::Prefix(p) if p == host => Ok(Plan::Static(host, Origin::Ip)),
        Name::Prefix(p) if p.prefix_len() < 32 && p.contains(IpAddr::V4(ip)) => Ok(Plan::Static(p, Origin::Literal)),
        Name::Prefix(_) => {
            Err(ExportError::Mismatch { row, ipaddress: ip, domainname: r.domainname.clone().unwrap_or_default() })
        }
    }
}

/// Joins, converts, resolves and validates. `resolve` is called at most once per distinct
/// name; it returns the name's addresses (IPv4 and IPv6) or why there are none.
pub fn build<R>(tables: &Tables, opts: &Options, resolve: R) -> Result<Export, Vec<ExportError>>
where
    R: Fn(&str) -> Result<Vec<IpAddr>, String>,
{
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    let mut warnings = Vec::new();

    let mut providers: HashMap<u32, (&str, Option<u32>)> = HashMap::new();
    for p in &tables.providers {
        match providers.get(&p.id) {
            Some(&(_, first)) => errors.push(ExportError::DuplicateProviderId { id: p.id, first, second: p.line }),
            None => {
                providers.insert(p.id, (p.name.as_deref().unwrap_or(""), p.line));
            }
        }
    }

    // Rows in id order, so the errors and notes come out the same from every source.
    let mut rows: Vec<&ProviderIp> = tables.ips.iter().collect();
    rows.sort_by_key(|r| (r.id, r.line));
    let mut prev: Option<&ProviderIp> = None;
    let mut exact: HashMap<(u32, u32, String, Direction), RowRef> = HashMap::new();
    let mut statics: HashMap<(Prefix, u32), RowRef> = HashMap::new();
    let mut resolved: HashMap<String, Result<Vec<IpAddr>, String>> = HashMap::new();
    let mut entries: Vec<Entry> = Vec::new();

    for r in rows {
        let row = RowRef::of(r);
        if let Some(p) = prev
            && p.id == r.id
        {
            errors.push(ExportError::DuplicateRowId { first: RowRef::of(p), second: row });
            continue;
        }
        prev = Some(r);
        let Some(&(pname, _)) = providers.get(&r.provider_id) else {
            errors.push(ExportError::UnknownProvider { row, provider_id: r.provider_id });
            continue;
        };
        let label = format!("row {} (provider {} {:?})", r.id, r.provider_id, pname);
        if let Proto::Other(p) = &r.proto {
            notes.push(format!("{label}: proto {p}, skipped (only SIP rows are allowlisted)"));
            continue;
        }
        let key = (
            r.provider_id,
            r.ipaddress,
            r.domainname.as_deref().unwrap_or("").trim().to_ascii_lowercase(),
            r.direction,
        );
        if let Some(&first) = exact.get(&key) {
            errors.push(ExportError::DuplicateRow { first, second: row });
            continue;
        }
        exact.insert(key, row);

        let mut prefixes: Vec<(Prefix, Origin)> = match plan(r) {
            Err(e) => {
                errors.push(e);
                continue;
            }
            Ok(Plan::Static(p, origin)) => vec![(p, origin)],
            Ok(Plan::Resolve(name)) => {
                let answer = resolved.entry(name.to_ascii_lowercase()).or_insert_with(|| match resolve(&name) {
                    Ok(v) if v.is_empty() => Err("no addresses".to_owned()),
                    other => other,
                });
                match answer {
                    Ok(addrs) => addrs.iter().map(|a| (Prefix::host(*a), Origin::Dns(name.clone()))).collect(),
                    Err(reason) if opts.allow_unresolved => {
                        notes.push(format!("{label}: {name} did not resolve; skipped (unresolved names allowed)"));
                        warnings.push(format!("{row}: {name} did not resolve ({reason}); skipped"));
                        continue;
                    }
                    Err(reason) => {
                        errors.push(ExportError::Unresolved { row, name, reason: reason.clone() });
                        continue;
                    }
                }
            }
        };
        prefixes.sort();
        prefixes.dedup();
        for (prefix, origin) in prefixes {
            if let Some(why) = unusable(&prefix) {
                let origin = matches!(origin, Origin::Dns(_)).then_some(origin);
                errors.push(ExportError::Unusable { row, prefix, origin, why });
                continue;
            }
            if !matches!(origin, Origin::Dns(_)) {
                if let Some(&first) = statics.get(&(prefix, r.provider_id)) {
                    errors.push(ExportError::DuplicatePrefix {
                        prefix,
                        provider_id: r.provider_id,
                        first,
                        second: row,
                    });
                    continue;
                }
                statics.insert((prefix, r.provider_id), row);
            }
            entries.push(Entry {
                prefix,
                direction: r.direction,
                provider_id: r.provider_id,
                provider_name: pname.to_owned(),
                row_id: r.id,
                origin,
            });
        }
    }

    // Legitimate duplicates across providers are kept, and said.
    let mut by_prefix: BTreeMap<Prefix, Vec<&Entry>> = BTreeMap::new();
    for e in &entries {
        by_prefix.entry(e.prefix).or_default().push(e);
    }
    for (prefix, es) in &by_prefix {
        let mut who: Vec<(u32, &str, u32)> =
            es.iter().map(|e| (e.provider_id, e.provider_name.as_str(), e.row_id)).collect();
        who.sort();
        if who.windows(2).any(|w| matches!(w, [a, b] if a.0 != b.0)) {
            let list: Vec<String> = who.iter().map(|(id, name, row)| format!("{id} {name:?} (row {row})")).collect();
            notes.push(format!("{prefix} is listed for more than one provider: {}", list.join(", ")));
        }
    }

    for (family, v4) in [("IPv4", true), ("IPv6", false)] {
        let count = by_prefix.keys().filter(|p| p.is_ipv4() == v4).count();
        if count > MAX_ENTRIES {
            errors.push(ExportError::TooMany { family, count, max: MAX_ENTRIES });
        }
    }
    if entries.is_empty() && errors.is_empty() {
        errors.push(ExportError::Empty { skipped: notes.len() });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // The caller-ID policy of every provider that has an entry.
    let listed: std::collections::HashSet<u32> = entries.iter().map(|e| e.provider_id).collect();
    let cli = tables
        .providers
        .iter()
        .filter(|p| listed.contains(&p.id))
        .filter_map(|p| Some((p.id, p.cli.clone()?)))
        .collect();
    Ok(Export { allowlist: Allowlist::new(&opts.source, notes, entries, cli), warnings })
}
