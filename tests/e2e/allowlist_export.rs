//! `sbc allowlist export` against the real things: a MariaDB server this test starts (Debian's
//! mariadb-server, private data dir and socket, loaded with the seed's schema and rows from
//! `tests/vectors/providers/seed.sql`), and a DNS server it starts (dnsmasq) inside a network
//! namespace whose `/etc/netns/<ns>/resolv.conf` points at it, so the export's system resolver
//! asks only that server, never the host's or the Internet's.
//!
//! ```text
//!  [sbclab-ha-alw-db-<pid> netns]  lo 127.0.0.1
//!     dnsmasq :53 (hosts file: sbc.voxbeam.com, sip.zadarma.com; anything else REFUSED)
//!     mariadbd 127.0.0.1:3306 + unix socket in the work dir
//!     sbc allowlist export --db mysql://…   (resolv.conf → 127.0.0.1)
//! ```
//!
//! Output is checked line by line against `tests/vectors/providers/expected.allowlist` (the
//! `# source:` line aside, which names each source); bad inputs must fail with an error naming
//! the row.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sbc_lab::{Netns, Proc, lab_lock, privileged, root, sbc_bin, workdir};

/// What the lab's DNS answers; the same as the unit tests' fake resolver.
const HOSTS: &str = "203.0.113.50 sbc.voxbeam.com\n203.0.113.51 sbc.voxbeam.com\n2001:db8::50 sbc.voxbeam.com\n198.51.100.20 sip.zadarma.com\n";
/// The database user's password: must never appear in any output.
const PASSWORD: &str = "Pw-4-allowlist-7q";

fn vectors() -> PathBuf {
    root().join("tests/vectors/providers")
}

fn expected() -> String {
    std::fs::read_to_string(vectors().join("expected.allowlist")).unwrap()
}

/// `/etc/netns/<ns>/{resolv.conf,hosts}`, which `ip netns exec` bind-mounts over `/etc`;
/// removed on drop.
struct NetnsEtc {
    dir: PathBuf,
}

impl NetnsEtc {
    fn new(ns: &Netns) -> Result<NetnsEtc> {
        let dir = Path::new("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir)?;
        let etc = NetnsEtc { dir };
        std::fs::write(etc.dir.join("resolv.conf"), "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")?;
        // Not the host's /etc/hosts either: only names the lab's DNS serves resolve.
        std::fs::write(etc.dir.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n")?;
        Ok(etc)
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("resolv.conf"));
        let _ = std::fs::remove_file(self.dir.join("hosts"));
        let _ = std::fs::remove_dir(&self.dir);
        // Only if nothing else lives there.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

fn sbin(name: &str) -> String {
    let p = Path::new("/usr/sbin").join(name);
    if p.exists() { p.to_string_lossy().into_owned() } else { name.to_owned() }
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what} not ready within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A namespace with the lab's DNS server on 127.0.0.1:53 and its resolv.conf pointing there.
struct DnsLab {
    dns: Proc,
    _etc: NetnsEtc,
    ns: Netns,
    dir: PathBuf,
}

impl DnsLab {
    fn new(ns_name: &str, test: &str) -> Result<DnsLab> {
        let dir = workdir(test)?;
        let ns = Netns::new(ns_name)?;
        let etc = NetnsEtc::new(&ns)?;
        let hosts = dir.join("dns-hosts");
        std::fs::write(&hosts, HOSTS)?;
        let mut c = ns.cmd(&sbin("dnsmasq"));
        c.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--listen-address=127.0.0.1",
        ])
        .args(["--bind-interfaces", "--port=53", "--pid-file=", "--log-facility=-", "--log-queries", "--user=root"])
        .arg(format!("--addn-hosts={}", hosts.display()));
        let mut dns = Proc::spawn("dnsmasq", c, dir.join("dnsmasq.log"))?;
        wait_for("dnsmasq", Duration::from_secs(10), || dns.log_text().contains("4 names") || !dns.running())?;
        ensure!(dns.running(), "dnsmasq exited: {}", dns.log_text());
        // The namespace's resolver sees the lab's names, and nothing else.
        let out = ns.cmd("getent").args(["ahosts", "sbc.voxbeam.com"]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(text.contains("203.0.113.50") && text.contains("2001:db8::50"), "getent in {}: {text}", ns.name());
        Ok(DnsLab { dns, _etc: etc, ns, dir })
    }

    /// `sbc allowlist export ARGS` inside the namespace, from the workspace root.
    fn export(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        let mut c = self.ns.cmd(&sbc_bin().to_string_lossy());
        c.current_dir(root()).args(["allowlist", "export"]).args(args).stdin(Stdio::null());
        c.env_remove("MYSQL_PWD");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().context("running sbc allowlist export")?;
        Ok(out)
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Line-by-line comparison with the expected file, whose `# source:` line is replaced by
/// `source`; the first difference is reported with its line number.
fn assert_matches_expected(what: &str, actual: &str, source: &str) {
    let want = expected().replace("# source: sql:tests/vectors/providers/seed.sql\n", &format!("# source: {source}\n"));
    let (a, w): (Vec<&str>, Vec<&str>) = (actual.lines().collect(), want.lines().collect());
    for (i, (x, y)) in a.iter().zip(w.iter()).enumerate() {
        assert_eq!(x, y, "{what}: line {} differs\n--- actual:\n{actual}", i + 1);
    }
    assert_eq!(a.len(), w.len(), "{what}: {} lines, expected {}\n--- actual:\n{actual}", a.len(), w.len());
    assert_eq!(actual, want, "{what}: same lines, different bytes (line ends?)");
}

/// The export failed (exit 1), wrote nothing to stdout, and stderr says every one of `needles`.
fn assert_fails_with(what: &str, o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{what}: exit status {:?}\nstderr:\n{err}", o.status);
    assert!(o.stdout.is_empty(), "{what}: wrote to stdout on failure:\n{}", stdout(o));
    for n in needles {
        assert!(err.contains(n), "{what}: stderr lacks {n:?}:\n{err}");
    }
}

fn entries(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

/// A MariaDB server inside the namespace: TCP on the namespace's own 127.0.0.1:3306 and a
/// unix socket in the work dir. Stopped by PID when dropped.
struct Maria {
    proc: Proc,
    socket: PathBuf,
    data: PathBuf,
}

impl Drop for Maria {
    fn drop(&mut self) {
        self.proc.stop();
        // 100+ MB of InnoDB files; the logs stay in the work dir.
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

impl Maria {
    fn start(lab: &DnsLab) -> Result<Maria> {
        let data = lab.dir.join("mysql-data");
        let socket = lab.dir.join("mysqld.sock");
        let install = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--user=root", "--skip-test-db"])
            .output()
            .context("mariadb-install-db (package mariadb-server)")?;
        ensure!(install.status.success(), "mariadb-install-db: {}{}", stdout(&install), stderr(&install));
        let mut c = lab.ns.cmd(&sbin("mariadbd"));
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", lab.dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", lab.dir.join("mysqld.err").display()))
            .args([
                "--bind-address=127.0.0.1",
                "--port=3306",
                "--user=root",
                "--innodb-buffer-pool-size=32M",
                "--skip-name-resolve",
            ]);
        let proc = Proc::spawn("mariadbd", c, lab.dir.join("mariadbd.log"))?;
        let m = Maria { proc, socket, data };
        wait_for("mariadbd", Duration::from_secs(60), || m.sql(None, "SELECT 1").is_ok())
            .with_context(|| std::fs::read_to_string(lab.dir.join("mysqld.err")).unwrap_or_default())?;
        Ok(m)
    }

    /// Runs `sql` as root through the socket (the `mariadb` client).
    fn sql(&self, db: Option<&str>, sql: &str) -> Result<()> {
        let mut c = Command::new("mariadb");
        c.arg("--no-defaults").arg(format!("--socket={}", self.socket.display())).arg("-uroot");
        if let Some(db) = db {
            c.arg(db);
        }
        let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        child.stdin.take().context("stdin")?.write_all(sql.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "mariadb: {}", stderr(&out));
        Ok(())
    }

    /// A database loaded with the seed, plus `extra` SQL.
    fn seeded(&self, db: &str, extra: &str) -> Result<()> {
        self.sql(None, &format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;"))?;
        let seed = std::fs::read_to_string(vectors().join("seed.sql"))?;
        self.sql(Some(db), &format!("{seed}\n{extra}"))
    }
}

#[test]
fn export_from_live_mariadb_matches_expected_and_bad_rows_are_named() -> Result<()> {
    if !privileged("allowlist_export_db") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = DnsLab::new("ha-alw-db", "allowlist_export_db")?;
    let db = Maria::start(&lab)?;
    db.sql(None, &format!(
        "CREATE USER 'sbc'@'localhost' IDENTIFIED BY '{PASSWORD}'; CREATE USER 'sbc'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';\n\
         GRANT SELECT ON *.* TO 'sbc'@'localhost', 'sbc'@'127.0.0.1';"
    ))?;
    db.seeded("voip", "")?;
    let sock = db.socket.display().to_string();
    let no_secret = |what: &str, o: &Output| {
        assert!(!stdout(o).contains(PASSWORD) && !stderr(o).contains(PASSWORD), "{what}: the password was printed");
    };

    // Over the unix socket, password in the URL.
    let url = format!("mysql://sbc:{PASSWORD}@localhost/voip?socket={sock}");
    let a = lab.export(&["--db", &url], &[])?;
    assert!(a.status.success(), "socket export failed:\n{}", stderr(&a));
    no_secret("socket export", &a);
    assert_matches_expected("--db (socket)", &stdout(&a), "mysql://sbc@localhost/voip");
    // Names were resolved by the lab's DNS server.
    let dns_log = lab.dns.log_text();
    assert!(
        dns_log.contains("query[A] sbc.voxbeam.com") && dns_log.contains("query[AAAA] sbc.voxbeam.com"),
        "dnsmasq saw no query:\n{dns_log}"
    );
    assert!(dns_log.contains("query[A] sip.zadarma.com"), "dnsmasq:\n{dns_log}");

    // Over TCP, password from MYSQL_PWD.
    let b = lab.export(&["--db", "mysql://sbc@127.0.0.1:3306/voip"], &[("MYSQL_PWD", PASSWORD)])?;
    assert!(b.status.success(), "tcp export failed:\n{}", stderr(&b));
    no_secret("tcp export", &b);
    assert_matches_expected("--db (tcp)", &stdout(&b), "mysql://sbc@127.0.0.1:3306/voip");

    // Password from a file, written atomically to --out: byte-identical to the first export.
    let pw_file = lab.dir.join("db-password");
    std::fs::write(&pw_file, format!("{PASSWORD}\n"))?;
    let out_file = lab.dir.join("providers.allowlist");
    let url_nopw = format!("mysql://sbc@localhost/voip?socket={sock}");
    let c = lab.export(
        &[
            "--db",
            &url_nopw,
            "--db-password-file",
            &pw_file.display().to_string(),
            "--out",
            &out_file.display().to_string(),
        ],
        &[],
    )?;
    assert!(c.status.success(), "--out export failed:\n{}", stderr(&c));
    assert!(c.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&out_file)?, stdout(&a), "two exports of the same data differ");

    // A wrong password: a clear failure, the old file untouched, no password printed.
    let bad = lab.export(
        &[
            "--db",
            &format!("mysql://sbc:wrong-{PASSWORD}@localhost/voip?socket={sock}"),
            "--out",
            &out_file.display().to_string(),
        ],
        &[],
    )?;
    assert_fails_with("wrong password", &bad, &["mysql://sbc@localhost/voip", "Access denied"]);
    no_secret("wrong password", &bad);
    assert_eq!(std::fs::read_to_string(&out_file)?, stdout(&a));

    // mariadb-dump of the live tables → --sql: the same entries.
    let dump = lab.dir.join("dump.sql");
    let d = Command::new("mariadb-dump")
        .arg("--no-defaults")
        .arg(format!("--socket={sock}"))
        .args(["-uroot", "voip", "providers", "providers_ips"])
        .output()?;
    ensure!(d.status.success(), "mariadb-dump: {}", stderr(&d));
    std::fs::write(&dump, &d.stdout)?;
    let e = lab.export(&["--sql", &dump.display().to_string()], &[])?;
    assert!(e.status.success(), "dump export failed:\n{}", stderr(&e));
    assert_matches_expected("--sql (mariadb-dump)", &stdout(&e), &format!("sql:{}", dump.display()));

    // Bad rows in the live table: every one reported in one run, each naming its row.
    db.seeded(
        "voip_bad",
        "INSERT INTO providers_ips VALUES (60, 3, 2130706433, '203.0.113.0/33', 'IN', 'SIP'),\n\
         (61, 16, 1506852360, '89.208.190.8', 'IN', 'SIP'), (62, 3, 2130706433, 'gone.zadarma.test', 'IN', 'SIP'),\n\
         (63, 8, 2130706433, '203.0.113.5/24', 'IN', 'SIP');",
    )?;
    let f = lab.export(&["--db", "mysql://sbc@127.0.0.1:3306/voip_bad"], &[("MYSQL_PWD", PASSWORD)])?;
    assert_fails_with(
        "bad rows",
        &f,
        &[
            "error: providers_ips row 60: domainname: \"203.0.113.0/33\": prefix length 33 out of range (0..=32)",
            "error: providers_ips row 61 duplicates providers_ips row 31 (same provider, address, name, direction)",
            "error: providers_ips row 62: gone.zadarma.test did not resolve",
            "error: providers_ips row 63: domainname: \"203.0.113.5/24\": host bits set (did you mean 203.0.113.0/24?)",
            "failed with 4 error(s); nothing written",
        ],
    );
    assert!(
        lab.dns.log_text().contains("query[A] gone.zadarma.test"),
        "the unresolvable name was not asked of the lab DNS"
    );

    // Only an unresolvable name: an error, unless explicitly allowed, then noted and skipped.
    db.seeded("voip_unres", "INSERT INTO providers_ips VALUES (62, 3, 2130706433, 'gone.zadarma.test', 'IN', 'SIP');")?;
    let url = "mysql://sbc@127.0.0.1:3306/voip_unres";
    let g = lab.export(&["--db", url], &[("MYSQL_PWD", PASSWORD)])?;
    assert_fails_with("unresolvable", &g, &["error: providers_ips row 62: gone.zadarma.test did not resolve"]);
    let h = lab.export(&["--db", url, "--allow-unresolved"], &[("MYSQL_PWD", PASSWORD)])?;
    assert!(h.status.success(), "--allow-unresolved failed:\n{}", stderr(&h));
    assert!(stderr(&h).contains("warning: providers_ips row 62: gone.zadarma.test did not resolve"), "{}", stderr(&h));
    let text = stdout(&h);
    assert!(text.contains("\n# note: row 62 (provider 3 \"Zadarma\"): gone.zadarma.test did not resolve; skipped (unresolved names allowed)\n"), "{text}");
    assert_eq!(entries(&text), entries(&expected()));

    // Only non-SIP rows: an empty result is an error.
    db.seeded(
        "voip_empty",
        "DELETE FROM providers_ips; INSERT INTO providers_ips VALUES (90, 3, 1, NULL, 'IN', 'IAX2');",
    )?;
    let i = lab.export(&["--db", "mysql://sbc@127.0.0.1:3306/voip_empty"], &[("MYSQL_PWD", PASSWORD)])?;
    assert_fails_with(
        "empty",
        &i,
        &["error: no entries (1 rows skipped): an empty allowlist would drop every provider"],
    );
    Ok(())
}

/// The seed with `rows` appended as one more INSERT; returns the file and the line of its first row.
fn seed_plus(dir: &Path, name: &str, rows: &str) -> Result<(String, usize)> {
    let seed = std::fs::read_to_string(vectors().join("seed.sql"))?;
    let first = seed.lines().count() + 2;
    let path = dir.join(name);
    std::fs::write(&path, format!("{seed}INSERT INTO `providers_ips` VALUES\n{rows};\n"))?;
    Ok((path.display().to_string(), first))
}

#[test]
fn export_from_sql_dump_and_csv_matches_expected_and_bad_files_are_named() -> Result<()> {
    if !privileged("allowlist_export_files") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = DnsLab::new("ha-alw-files", "allowlist_export_files")?;
    let dir = lab.dir.clone();
    let seed_sql = std::fs::read_to_string(vectors().join("seed.sql"))?;

    // The seed's dump: exactly the expected file, source line included.
    let a = lab.export(&["--sql", "tests/vectors/providers/seed.sql"], &[])?;
    assert!(a.status.success(), "--sql failed:\n{}", stderr(&a));
    assert_matches_expected("--sql seed.sql", &stdout(&a), "sql:tests/vectors/providers/seed.sql");
    assert!(stderr(&a).contains("allowlist: 15 entries (15 prefixes) from 13 rows"), "{}", stderr(&a));
    // CSV of the same rows.
    let b = lab.export(&["--csv", "tests/vectors/providers/seed.csv"], &[])?;
    assert!(b.status.success(), "--csv failed:\n{}", stderr(&b));
    assert_matches_expected("--csv seed.csv", &stdout(&b), "csv:tests/vectors/providers/seed.csv");
    // Twice to a file: byte-identical.
    let out = dir.join("out.allowlist");
    let out_s = out.display().to_string();
    for _ in 0..2 {
        let o = lab.export(&["--sql", "tests/vectors/providers/seed.sql", "-o", &out_s], &[])?;
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(std::fs::read_to_string(&out)?, expected());
    }

    // A malformed dump row (5 values).
    let (f, line) = seed_plus(&dir, "malformed.sql", "(70, 3, 2130706433, 'x.zadarma.test', 'IN')")?;
    let o = lab.export(&["--sql", &f, "-o", &out_s], &[])?;
    assert_fails_with(
        "malformed row",
        &o,
        &[&format!("error: {f}: line {line}: `providers_ips` row has 5 values, expected 6")],
    );
    assert_eq!(std::fs::read_to_string(&out)?, expected(), "a failed export touched --out");
    // An unterminated string.
    let (f, line) = seed_plus(&dir, "unterminated.sql", "(70, 3, 2130706433, 'x.zadarma.test, 'IN', 'SIP')")?;
    let o = lab.export(&["--sql", &f], &[])?;
    assert_fails_with("unterminated", &o, &[&format!("error: {f}: line {line}: unterminated string")]);
    // Invalid CIDRs.
    let (f, line) = seed_plus(
        &dir,
        "cidr.sql",
        "(71, 3, 2130706433, '203.0.113.5/24', 'IN', 'SIP'),\n(72, 3, 2130706433, '198.51.100.0/40', 'IN', 'SIP')",
    )?;
    let o = lab.export(&["--sql", &f], &[])?;
    assert_fails_with(
        "invalid CIDR",
        &o,
        &[
            &format!(
                "error: providers_ips row 71 (line {line}): domainname: \"203.0.113.5/24\": host bits set (did you mean 203.0.113.0/24?)"
            ),
            &format!(
                "error: providers_ips row 72 (line {}): domainname: \"198.51.100.0/40\": prefix length 40 out of range (0..=32)",
                line + 1
            ),
        ],
    );
    // Duplicates: an exact copy of row 31, and row 51's address again for the same provider.
    let (f, line) = seed_plus(
        &dir,
        "dup.sql",
        "(73, 16, 1506852360, '89.208.190.8', 'IN', 'SIP'),\n(74, 4, 3514573417, NULL, 'OUT', 'SIP')",
    )?;
    let o = lab.export(&["--sql", &f], &[])?;
    let line_of = |needle: &str| seed_sql.lines().position(|l| l.contains(needle)).map(|i| i + 1).unwrap();
    let (row31, row51) = (line_of("(31, "), line_of("(51, "));
    assert_fails_with(
        "duplicate",
        &o,
        &[
            &format!("error: providers_ips row 73 (line {line}) duplicates providers_ips row 31 (line {row31})"),
            &format!(
                "error: providers_ips row 74 (line {}) lists 209.124.34.105/32 for provider 4 again (already providers_ips row 51 (line {row51}))",
                line + 1
            ),
        ],
    );
    // The same address for another provider is legitimate: kept, with a note.
    let (f, _) = seed_plus(&dir, "shared.sql", "(75, 7, 1607694320, NULL, 'OUT', 'SIP')")?;
    let o = lab.export(&["--sql", &f], &[])?;
    assert!(o.status.success(), "shared address failed:\n{}", stderr(&o));
    assert!(stdout(&o).contains("# note: 95.211.119.240/32 is listed for more than one provider: 7 \"WestCall\" (row 75), 8 \"VoxBeam\" (row 2)\n"));
    assert!(
        stdout(&o).contains("\n95.211.119.240/32  OUT    7     \"WestCall\"           75    ip\n"),
        "{}",
        stdout(&o)
    );
    // An empty result: the seed without its providers_ips rows.
    let cut = seed_sql.find("INSERT INTO `providers_ips`").context("seed has no providers_ips INSERT")?;
    let empty = dir.join("empty.sql");
    std::fs::write(&empty, &seed_sql[..cut])?;
    let o = lab.export(&["--sql", &empty.display().to_string()], &[])?;
    assert_fails_with("empty", &o, &["error: no entries: an empty allowlist would drop every provider"]);
    // An unresolvable name: an error naming the row; allowed, a note and the rest of the list.
    let (f, line) = seed_plus(&dir, "unresolvable.sql", "(76, 3, 2130706433, 'gone.zadarma.test', 'IN', 'SIP')")?;
    let o = lab.export(&["--sql", &f], &[])?;
    assert_fails_with(
        "unresolvable",
        &o,
        &[&format!("error: providers_ips row 76 (line {line}): gone.zadarma.test did not resolve")],
    );
    let o = lab.export(&["--sql", &f, "--allow-unresolved"], &[])?;
    assert!(o.status.success(), "--allow-unresolved failed:\n{}", stderr(&o));
    assert!(stdout(&o).contains("# note: row 76 (provider 3 \"Zadarma\"): gone.zadarma.test did not resolve; skipped (unresolved names allowed)\n"));
    assert_eq!(entries(&stdout(&o)), entries(&expected()));

    // CSV: a short row, a bad quote and an invalid CIDR, all reported with their lines.
    let csv = std::fs::read_to_string(vectors().join("seed.csv"))?;
    let n = csv.lines().count();
    let bad_csv = dir.join("bad.csv");
    std::fs::write(
        &bad_csv,
        format!(
            "{csv}77,3,Zadarma,2130706433,x.zadarma.test,IN\n78,3,Zad\"arma,1,,IN,SIP,N,\n79,3,Zadarma,2130706433,203.0.113.0/33,IN,SIP,N,\n"
        ),
    )?;
    let shown = bad_csv.display().to_string();
    let o = lab.export(&["--csv", &shown], &[])?;
    assert_fails_with(
        "bad csv",
        &o,
        &[
            &format!("error: {shown}: line {}: `csv` row has 6 values, expected 9", n + 1),
            &format!("error: {shown}: line {}: '\"' inside an unquoted field", n + 2),
        ],
    );
    // (The CIDR is checked once the file parses: on its own it names its row and line.)
    std::fs::write(&bad_csv, format!("{csv}79,3,Zadarma,2130706433,203.0.113.0/33,IN,SIP,N,\n"))?;
    let o = lab.export(&["--csv", &shown], &[])?;
    assert_fails_with(
        "csv cidr",
        &o,
        &[&format!("error: providers_ips row 79 (line {}): domainname: \"203.0.113.0/33\"", n + 1)],
    );

    // Usage: no source, two sources.
    let o = lab.export(&[], &[])?;
    assert_eq!(o.status.code(), Some(2), "no source: {}", stderr(&o));
    let o = lab.export(&["--sql", "a", "--csv", "b"], &[])?;
    assert_eq!(o.status.code(), Some(2), "two sources: {}", stderr(&o));
    Ok(())
}
