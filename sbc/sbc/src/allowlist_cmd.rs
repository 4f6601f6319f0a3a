//! `sbc allowlist export`: the IO around `sbc_policy::allowlist` — read `providers` and
//! `providers_ips` from a live MariaDB, a SQL dump or a CSV file, resolve names with the
//! system resolver (so `/etc/resolv.conf` and `/etc/hosts` decide), and write the allowlist
//! file atomically. Every error is printed, each naming its row; nothing is written unless the
//! whole export succeeded. The database password is never printed: the file's `# source:`
//! line and every message carry the URL without it.

use std::io::{Read, Write};
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use sbc_policy::allowlist::{self, MAX_ROWS, Options, Tables};

/// `sbc allowlist ...`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum AllowlistCmd {
    /// Export providers + providers_ips to a deterministic allowlist file (stdout by default).
    Export(ExportArgs),
    /// Print the list the running daemon enforces.
    Show {
        /// Admin socket of the daemon.
        #[arg(long, default_value = crate::config::DEFAULT_ADMIN_SOCKET)]
        socket: PathBuf,
    },
    /// Make the running daemon re-read its allowlist file (a bad file leaves the running list).
    Reload {
        /// Admin socket of the daemon.
        #[arg(long, default_value = crate::config::DEFAULT_ADMIN_SOCKET)]
        socket: PathBuf,
    },
}

/// Arguments of `sbc allowlist export`: exactly one source.
#[derive(Args, Debug, Clone, Default)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["db", "sql", "csv"])))]
pub struct ExportArgs {
    /// A live MariaDB/MySQL database: mysql://USER[:PASSWORD]@HOST[:PORT]/DB, or
    /// mysql://USER@localhost/DB?socket=/run/mysqld/mysqld.sock. Rather than a password in the
    /// URL (visible to `ps`), use --db-password-file or the MYSQL_PWD environment variable.
    #[arg(long, value_name = "URL")]
    pub db: Option<String>,
    /// File whose first line is the database password (for --db).
    #[arg(long, value_name = "FILE", requires = "db")]
    pub db_password_file: Option<PathBuf>,
    /// A SQL dump holding the two tables (e.g. `mariadb-dump DB providers providers_ips`).
    #[arg(long, value_name = "FILE")]
    pub sql: Option<PathBuf>,
    /// A CSV file with the header id,provider_id,provider_name,ipaddress,domainname,direction,proto.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write the allowlist here (a temporary file renamed over it); standard output if absent.
    #[arg(short, long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Skip rows whose name does not resolve (noted in the file) instead of failing.
    #[arg(long)]
    pub allow_unresolved: bool,
}

/// Runs the export. Exit status: 0 written, 1 the data or a source failed (every error printed),
/// 2 bad arguments.
pub fn export(args: &ExportArgs) -> ExitCode {
    let sources = [args.db.is_some(), args.sql.is_some(), args.csv.is_some()].iter().filter(|s| **s).count();
    if sources != 1 {
        eprintln!("error: give exactly one of --db, --sql, --csv");
        return ExitCode::from(2);
    }
    let read = if let Some(url) = &args.db {
        read_db(url, args.db_password_file.as_deref())
    } else if let Some(path) = &args.sql {
        read_file(path, allowlist::MAX_SQL_BYTES, allowlist::sql::parse).map(|t| (t, format!("sql:{}", path.display())))
    } else if let Some(path) = &args.csv {
        read_file(path, allowlist::MAX_CSV_BYTES, allowlist::csv::parse).map(|t| (t, format!("csv:{}", path.display())))
    } else {
        Err(vec!["no source".to_owned()])
    };
    let (tables, source) = match read {
        Ok(r) => r,
        Err(errors) => return fail(&errors),
    };
    let rows = tables.ips.len();
    let opts = Options { source, allow_unresolved: args.allow_unresolved };
    let export = match allowlist::build(&tables, &opts, system_resolve) {
        Ok(e) => e,
        Err(errors) => return fail(&errors.iter().map(ToString::to_string).collect::<Vec<_>>()),
    };
    for w in &export.warnings {
        eprintln!("warning: {w}");
    }
    for n in export.allowlist.notes() {
        eprintln!("note: {n}");
    }
    let list = &export.allowlist;
    if let Err(e) = write_out(args.out.as_deref(), &list.render()) {
        return fail(&[e]);
    }
    let dest = args.out.as_ref().map_or_else(|| "standard output".to_owned(), |p| p.display().to_string());
    eprintln!(
        "allowlist: {} entries ({} prefixes) from {rows} rows of {} written to {dest}",
        list.len(),
        list.xdp_prefixes().len(),
        list.source()
    );
    ExitCode::SUCCESS
}

fn fail(errors: &[String]) -> ExitCode {
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!("allowlist export failed with {} error(s); nothing written", errors.len());
    ExitCode::FAILURE
}

/// Resolves through getaddrinfo (A and AAAA), as every other program on the box would.
fn system_resolve(name: &str) -> Result<Vec<IpAddr>, String> {
    (name, 0u16).to_socket_addrs().map(|it| it.map(|sa| sa.ip()).collect()).map_err(|e| e.to_string())
}

/// Reads at most `max` bytes (checked before reading all of it) and parses.
fn read_file<F>(path: &Path, max: usize, parse: F) -> Result<Tables, Vec<String>>
where
    F: Fn(&[u8]) -> Result<Tables, Vec<allowlist::ParseError>>,
{
    let shown = path.display();
    let f = std::fs::File::open(path).map_err(|e| vec![format!("{shown}: {e}")])?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max as u64 {
        return Err(vec![format!("{shown}: {len} bytes, more than the {max} accepted")]);
    }
    let mut data = Vec::new();
    f.take(max as u64 + 1).read_to_end(&mut data).map_err(|e| vec![format!("{shown}: {e}")])?;
    parse(&data).map_err(|errs| errs.iter().map(|e| format!("{shown}: {e}")).collect())
}

/// Writes to standard output, or to `path` through a temporary file in the same directory
/// renamed over it, so a reader never sees half a list and a failure leaves the old one.
fn write_out(path: Option<&Path>, text: &str) -> Result<(), String> {
    let Some(path) = path else {
        let mut out = std::io::stdout().lock();
        return out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|e| format!("standard output: {e}"));
    };
    let name = path.file_name().ok_or_else(|| format!("{}: not a file name", path.display()))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}

/// `mysql://user@host:port/db`: the URL without password, query or fragment.
fn describe_db(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("mysql", url));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => format!("{}@{host}", userinfo.split(':').next().unwrap_or_default()),
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

/// Both tables from a live database, in one read-only consistent snapshot.
fn read_db(url: &str, password_file: Option<&Path>) -> Result<(Tables, String), Vec<String>> {
    let shown = describe_db(url);
    let e1 = |what: &str, e: &dyn std::fmt::Display| vec![format!("{shown}: {what}: {e}")];
    let opts = mysql::Opts::from_url(url).map_err(|e| e1("bad URL", &e))?;
    let password = match password_file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| vec![format!("{}: {e}", p.display())])?;
            Some(text.lines().next().unwrap_or_default().to_owned())
        }
        None if opts.get_pass().is_none() => std::env::var("MYSQL_PWD").ok(),
        None => None,
    };
    let mut builder = mysql::OptsBuilder::from_opts(opts)
        .tcp_connect_timeout(Some(Duration::from_secs(10)))
        .read_timeout(Some(Duration::from_secs(60)))
        .write_timeout(Some(Duration::from_secs(60)));
    if let Some(p) = password {
        builder = builder.pass(Some(p));
    }
    let mut conn = mysql::Conn::new(builder).map_err(|e| e1("connect", &e))?;
    use mysql::prelude::Queryable;
    let tx_opts =
        mysql::TxOpts::default().set_with_consistent_snapshot(true).set_access_mode(Some(mysql::AccessMode::ReadOnly));
    let mut tx = conn.start_transaction(tx_opts).map_err(|e| e1("start transaction", &e))?;
    let limit = MAX_ROWS + 1;
    let providers: Vec<mysql::Row> = tx
        .query(format!(
            "SELECT id, providername, cli_allowed, dynamic_calls_caller_id FROM providers ORDER BY id LIMIT {limit}"
        ))
        .map_err(|e| e1("reading providers", &e))?;
    let ips: Vec<mysql::Row> = tx
        .query(format!("SELECT id, provider_id, ipaddress, domainname, direction, proto FROM providers_ips ORDER BY id LIMIT {limit}"))
        .map_err(|e| e1("reading providers_ips", &e))?;
    drop(tx);

    let mut errors = Vec::new();
    for (table, n) in [("providers", providers.len()), ("providers_ips", ips.len())] {
        if n > MAX_ROWS {
            errors.push(format!("{shown}: more than {MAX_ROWS} rows in `{table}`"));
        }
    }
    let mut tables = Tables::default();
    for row in providers {
        let v = texts::<4>(row);
        let cols = v.each_ref().map(Option::as_deref);
        let id = cols[0];
        match allowlist::provider_row(cols) {
            Ok(p) => tables.providers.push(p),
            Err(kinds) => {
                errors.extend(kinds.iter().map(|k| format!("{shown}: providers id {}: {k}", id.unwrap_or("NULL"))))
            }
        }
    }
    for row in ips {
        let v = texts::<6>(row);
        let cols = v.each_ref().map(Option::as_deref);
        match allowlist::ip_row(cols) {
            Ok(r) => tables.ips.push(r),
            Err(kinds) => errors
                .extend(kinds.iter().map(|k| format!("{shown}: providers_ips row {}: {k}", cols[0].unwrap_or("NULL")))),
        }
    }
    if errors.is_empty() { Ok((tables, shown)) } else { Err(errors) }
}

/// A text-protocol row's first `N` values as text, `None` for NULL. Bytes that are not UTF-8
/// are replaced (U+FFFD), so the row checks reject them rather than take them for NULL.
fn texts<const N: usize>(row: mysql::Row) -> [Option<String>; N] {
    let mut values = row.unwrap().into_iter();
    std::array::from_fn(|_| match values.next() {
        None | Some(mysql::Value::NULL) => None,
        Some(mysql::Value::Bytes(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
        Some(other) => Some(other.as_sql(true)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_url_is_shown_without_password_or_query() {
        assert_eq!(
            describe_db("mysql://sbc:s3cr3t@db.example:3307/voip?socket=/x"),
            "mysql://sbc@db.example:3307/voip"
        );
        assert_eq!(describe_db("mysql://sbc:p@ss@localhost/voip"), "mysql://sbc@localhost/voip");
        assert_eq!(describe_db("mysql://sbc@localhost/voip"), "mysql://sbc@localhost/voip");
        assert_eq!(describe_db("mysql://localhost"), "mysql://localhost");
    }

    #[test]
    fn out_file_is_replaced_atomically_and_left_alone_on_failure() {
        let dir = std::env::temp_dir().join(format!("sbc-allowlist-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("allow.list");
        write_out(Some(&out), "one\n").unwrap();
        write_out(Some(&out), "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "two\n");
        assert!(write_out(Some(&dir.join("missing/allow.list")), "x").is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
