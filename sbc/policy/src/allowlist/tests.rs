//! The seed's rows through the whole pipeline, and every bad input the export must refuse.

use std::cell::RefCell;
use std::net::IpAddr;
use std::path::PathBuf;

use super::*;
use crate::caller_id::{CliPolicy, Number};

/// The lab's DNS (tests/e2e/allowlist_export.rs serves the same names with dnsmasq): answers
/// unsorted and with a repeat, as resolvers may.
fn fake_dns(name: &str) -> Result<Vec<IpAddr>, String> {
    let ips: &[&str] = match name {
        "sbc.voxbeam.com" => &["203.0.113.51", "2001:db8::50", "203.0.113.50", "203.0.113.51"],
        "sip.zadarma.com" => &["198.51.100.20"],
        _ => return Err("Name or service not known".into()),
    };
    Ok(ips.iter().map(|s| s.parse().unwrap()).collect())
}

fn provider(id: u32, name: &str) -> Provider {
    Provider { id, name: Some(name.into()), cli: None, line: None }
}

fn row(
    id: u32,
    provider_id: u32,
    ipaddress: u32,
    domainname: Option<&str>,
    direction: Direction,
    proto: &str,
) -> ProviderIp {
    ProviderIp {
        id,
        provider_id,
        ipaddress,
        domainname: domainname.map(Into::into),
        direction,
        proto: Proto::parse(proto),
        line: None,
    }
}

/// The seed's tables (`tests/vectors/providers/seed.sql`), row by row.
fn seed() -> Tables {
    use Direction::*;
    Tables {
        providers: vec![
            provider(3, "Zadarma"),
            provider(4, "Multitel"),
            provider(7, "WestCall"),
            provider(8, "VoxBeam"),
            provider(11, "VoiceBuy"),
            provider(16, "IPPort"),
        ],
        ips: vec![
            row(1, 8, 2130706433, Some("sbc.voxbeam.com"), Out, "SIP"),
            row(2, 8, 1607694320, Some("95.211.119.240"), In, "SIP"),
            row(7, 3, 2130706433, Some("sip.zadarma.com"), Out, "SIP"),
            row(16, 3, 3106773121, Some("proxy-1.fr.zadarma.com"), In, "SIP"),
            row(17, 3, 3106773122, Some("proxy-2.fr.zadarma.com"), In, "SIP"),
            row(31, 16, 1506852360, Some("89.208.190.8"), In, "SIP"),
            row(33, 16, 1506852357, Some("89.208.190.5"), In, "SIP"),
            row(34, 16, 1506852354, Some("sip.n1.ipport.net"), Out, "SIP"),
            row(35, 11, 2991415097, Some("sip.voicebuy.com"), Out, "SIP"),
            row(42, 4, 3514573416, Some("209.124.34.104"), Out, "SIP"),
            row(44, 7, 3277775106, Some("195.94.225.2"), InOut, "SIP"),
            row(51, 4, 3514573417, Some("209.124.34.105"), In, "SIP"),
            row(52, 4, 3514573446, Some("209.124.34.134"), In, "SIP"),
        ],
    }
}

fn opts(source: &str) -> Options {
    Options { source: source.into(), allow_unresolved: false }
}

fn export(t: &Tables) -> Result<Allowlist, Vec<String>> {
    build(t, &opts("test"), fake_dns).map(|e| e.allowlist).map_err(|es| es.iter().map(ToString::to_string).collect())
}

fn errors(t: &Tables) -> Vec<String> {
    export(t).expect_err("export must fail")
}

fn entry_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/providers")
}

#[test]
fn seed_rows_give_exactly_the_expected_lines() {
    let a = export(&seed()).unwrap();
    let text = a.render();
    assert_eq!(
        entry_lines(&text),
        vec![
            "89.208.190.2/32    OUT    16    \"IPPort\"             34    ip",
            "89.208.190.5/32    IN     16    \"IPPort\"             33    ip",
            "89.208.190.8/32    IN     16    \"IPPort\"             31    ip",
            "95.211.119.240/32  IN     8     \"VoxBeam\"            2     ip",
            "178.77.95.57/32    OUT    11    \"VoiceBuy\"           35    ip",
            "185.45.152.129/32  IN     3     \"Zadarma\"            16    ip",
            "185.45.152.130/32  IN     3     \"Zadarma\"            17    ip",
            "195.94.225.2/32    IN/OUT 7     \"WestCall\"           44    ip",
            "198.51.100.20/32   OUT    3     \"Zadarma\"            7     dns:sip.zadarma.com",
            "203.0.113.50/32    OUT    8     \"VoxBeam\"            1     dns:sbc.voxbeam.com",
            "203.0.113.51/32    OUT    8     \"VoxBeam\"            1     dns:sbc.voxbeam.com",
            "209.124.34.104/32  OUT    4     \"Multitel\"           42    ip",
            "209.124.34.105/32  IN     4     \"Multitel\"           51    ip",
            "209.124.34.134/32  IN     4     \"Multitel\"           52    ip",
            "2001:db8::50/128   OUT    8     \"VoxBeam\"            1     dns:sbc.voxbeam.com",
        ]
    );
    assert!(a.notes().is_empty());
    // Direction: OUT-only addresses pass XDP but may not start requests; IN and IN/OUT may.
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(a.xdp_prefixes().len(), 15);
    assert!(a.contains(ip("178.77.95.57")) && !a.may_originate(ip("178.77.95.57")));
    assert!(a.may_originate(ip("95.211.119.240")) && a.may_originate(ip("195.94.225.2")));
    assert!(!a.contains(ip("127.0.0.1")) && !a.contains(ip("95.211.119.241")));
    assert_eq!(a.lookup(ip("2001:db8::50")).map(|e| (e.provider_id, e.row_id)), Some((8, 1)));
}

#[test]
fn seed_sql_and_csv_vectors_render_the_expected_file_byte_for_byte() {
    let expected = std::fs::read_to_string(vectors().join("expected.allowlist")).unwrap();
    let source = "sql:tests/vectors/providers/seed.sql";
    let sql = sql::parse(&std::fs::read(vectors().join("seed.sql")).unwrap()).unwrap();
    assert_eq!(sql.ips.len(), 13);
    assert_eq!(sql.providers.len(), 6);
    let a = build(&sql, &opts(source), fake_dns).unwrap().allowlist;
    assert_eq!(a.render(), expected);
    // The file reads back to the same list.
    assert_eq!(Allowlist::parse(expected.as_bytes()).unwrap(), a);
    // The same rows from CSV: the same file but for its source line.
    let csv = csv::parse(&std::fs::read(vectors().join("seed.csv")).unwrap()).unwrap();
    let b = build(&csv, &opts(source), fake_dns).unwrap().allowlist;
    assert_eq!(b.render(), expected);
    // And the literal rows agree with both parsers (lines aside).
    let strip = |mut t: Tables| {
        t.ips.iter_mut().for_each(|r| r.line = None);
        t.providers.iter_mut().for_each(|p| p.line = None);
        t.ips.sort_by_key(|r| r.id);
        t
    };
    assert_eq!(strip(sql).ips, seed().ips);
    assert_eq!(strip(csv).ips, seed().ips);
}

#[test]
fn export_is_deterministic_whatever_the_row_order_and_answer_order() {
    let a = export(&seed()).unwrap().render();
    let mut t = seed();
    t.ips.reverse();
    t.providers.reverse();
    let reversed = |name: &str| {
        fake_dns(name).map(|mut v| {
            v.reverse();
            v
        })
    };
    let b = build(&t, &opts("test"), reversed).unwrap().allowlist.render();
    assert_eq!(a, b);
}

#[test]
fn each_name_is_resolved_once() {
    let mut t = seed();
    t.ips.push(row(90, 8, PLACEHOLDER, Some("SBC.voxbeam.com"), Direction::In, "SIP"));
    let calls = RefCell::new(Vec::new());
    let a = build(&t, &opts("x"), |n| {
        calls.borrow_mut().push(n.to_owned());
        fake_dns(&n.to_ascii_lowercase())
    })
    .unwrap()
    .allowlist;
    assert_eq!(calls.into_inner(), vec!["sbc.voxbeam.com", "sip.zadarma.com"]);
    // Row 90 (IN) shares row 1's (OUT) addresses: legitimate, both kept; the IN one decides.
    assert!(a.may_originate("203.0.113.50".parse().unwrap()));
    assert_eq!(a.matches("203.0.113.50".parse().unwrap()).count(), 2);
}

#[test]
fn unresolvable_name_fails_naming_the_row_unless_allowed() {
    let mut t = seed();
    t.ips.push(ProviderIp {
        line: Some(77),
        ..row(60, 3, PLACEHOLDER, Some("gone.zadarma.test"), Direction::In, "SIP")
    });
    assert_eq!(
        errors(&t),
        vec!["providers_ips row 60 (line 77): gone.zadarma.test did not resolve: Name or service not known"]
    );

    let allow = Options { source: "x".into(), allow_unresolved: true };
    let e = build(&t, &allow, fake_dns).unwrap();
    assert_eq!(
        e.allowlist.notes(),
        ["row 60 (provider 3 \"Zadarma\"): gone.zadarma.test did not resolve; skipped (unresolved names allowed)"]
    );
    assert_eq!(
        e.warnings,
        ["providers_ips row 60 (line 77): gone.zadarma.test did not resolve (Name or service not known); skipped"]
    );
    assert_eq!(e.allowlist.entries(), export(&seed()).unwrap().entries());
    // A name with no addresses is unresolved too.
    let mut t = seed();
    t.ips.push(row(61, 3, PLACEHOLDER, Some("empty.zadarma.test"), Direction::In, "SIP"));
    assert_eq!(
        build(&t, &opts("x"), |n| if n == "empty.zadarma.test" { Ok(vec![]) } else { fake_dns(n) }).unwrap_err(),
        vec![ExportError::Unresolved {
            row: RowRef { id: 61, line: None },
            name: "empty.zadarma.test".into(),
            reason: "no addresses".into()
        }]
    );
}

#[test]
fn cidrs_and_literals_in_domainname() {
    let mut t = seed();
    t.ips.push(row(70, 7, PLACEHOLDER, Some("203.0.113.0/24"), Direction::InOut, "SIP"));
    t.ips.push(row(71, 7, PLACEHOLDER, Some(" 2001:db8:7::/48 "), Direction::In, "SIP"));
    t.ips.push(row(72, 7, PLACEHOLDER, Some("192.0.2.9"), Direction::In, "SIP"));
    // ipaddress inside the CIDR in domainname: the CIDR.
    t.ips.push(row(
        73,
        7,
        u32::from(std::net::Ipv4Addr::new(198, 51, 100, 128)),
        Some("198.51.100.128/25"),
        Direction::In,
        "SIP",
    ));
    let text = export(&t).unwrap().render();
    let lines = entry_lines(&text);
    for want in [
        "192.0.2.9/32       IN     7     \"WestCall\"           72    literal",
        "198.51.100.128/25  IN     7     \"WestCall\"           73    literal",
        "203.0.113.0/24     IN/OUT 7     \"WestCall\"           70    literal",
        "2001:db8:7::/48    IN     7     \"WestCall\"           71    literal",
    ] {
        assert!(lines.contains(&want), "{want:?} not in\n{text}");
    }
    // The sbc.voxbeam.com /32s are inside row 70's /24: OUT-only there, IN/OUT around them.
    let a = export(&t).unwrap();
    assert!(!a.may_originate("203.0.113.50".parse().unwrap()));
    assert!(a.may_originate("203.0.113.49".parse().unwrap()));
}

#[test]
fn invalid_cidrs_and_addresses_each_name_their_row() {
    let mut t = seed();
    for (id, d) in [
        (80, "203.0.113.0/33"),
        (81, "203.0.113.5/24"),
        (82, "203.0.113.300"),
        (83, "2001:db8::g"),
        (84, "bad name!"),
        (85, "203.0.113.0/"),
    ] {
        t.ips.push(row(id, 3, PLACEHOLDER, Some(d), Direction::In, "SIP"));
    }
    t.ips.push(row(86, 3, 1, Some("203.0.113.7"), Direction::In, "SIP"));
    t.ips.push(row(87, 3, PLACEHOLDER, None, Direction::In, "SIP"));
    t.ips.push(row(88, 3, PLACEHOLDER, Some("0.0.0.0/0"), Direction::In, "SIP"));
    t.ips.push(row(89, 3, 0, None, Direction::In, "SIP"));
    t.ips.push(row(90, 3, 2130706434, None, Direction::In, "SIP"));
    t.ips.push(row(91, 3, PLACEHOLDER, Some("224.0.0.0/4"), Direction::In, "SIP"));
    t.ips.push(row(92, 99, 1, None, Direction::In, "SIP"));
    assert_eq!(
        errors(&t),
        vec![
            "providers_ips row 80: domainname: \"203.0.113.0/33\": prefix length 33 out of range (0..=32)",
            "providers_ips row 81: domainname: \"203.0.113.5/24\": host bits set (did you mean 203.0.113.0/24?)",
            "providers_ips row 82: domainname: \"203.0.113.300\" is not an IP address or CIDR prefix",
            "providers_ips row 83: domainname: \"2001:db8::g\" is not an IP address or CIDR prefix",
            "providers_ips row 84: domainname \"bad name!\" is not an IP address, CIDR or host name",
            "providers_ips row 85: domainname: \"203.0.113.0/\" is not an IP address or CIDR prefix",
            "providers_ips row 86: ipaddress 0.0.0.1 and domainname \"203.0.113.7\" disagree",
            "providers_ips row 87: ipaddress is the 127.0.0.1 placeholder but domainname is empty",
            "providers_ips row 88: 0.0.0.0/0: a /0 prefix would admit every address",
            "providers_ips row 89: 0.0.0.0/32: the unspecified address",
            "providers_ips row 90: 127.0.0.2/32: a loopback address",
            "providers_ips row 91: 224.0.0.0/4: a multicast address",
            "providers_ips row 92: provider_id 99 is not in providers",
        ]
    );
}

#[test]
fn a_name_resolving_to_loopback_is_an_error_naming_the_row_and_the_name() {
    let mut t = seed();
    t.ips.push(row(93, 3, PLACEHOLDER, Some("localhost.zadarma.test"), Direction::In, "SIP"));
    let e = build(&t, &opts("x"), |n| {
        if n == "localhost.zadarma.test" { Ok(vec!["127.0.0.1".parse().unwrap()]) } else { fake_dns(n) }
    })
    .unwrap_err();
    assert_eq!(
        e.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["providers_ips row 93: 127.0.0.1/32 (from dns:localhost.zadarma.test): a loopback address"]
    );
}

#[test]
fn duplicates_are_errors_naming_both_rows() {
    let mut t = seed();
    // Exact duplicate of row 31.
    t.ips.push(ProviderIp { line: Some(40), ..row(100, 16, 1506852360, Some("89.208.190.8"), Direction::In, "SIP") });
    // Same address for the same provider, other direction.
    t.ips.push(row(101, 4, 3514573417, None, Direction::Out, "SIP"));
    // Same address written as a literal in domainname.
    t.ips.push(row(102, 8, PLACEHOLDER, Some("95.211.119.240"), Direction::In, "SIP"));
    // Same id twice (possible in a dump or CSV).
    t.ips.push(ProviderIp { line: Some(50), ..row(44, 7, 1, None, Direction::In, "SIP") });
    // Same placeholder name twice for one provider.
    t.ips.push(row(103, 8, PLACEHOLDER, Some("SBC.VoxBeam.com"), Direction::Out, "SIP"));
    t.providers.push(Provider { id: 3, name: Some("Zadarma again".into()), cli: None, line: Some(9) });
    assert_eq!(
        errors(&t),
        vec![
            "providers row 3 and row 3 (line 9): the same id twice",
            "providers_ips row 44 and providers_ips row 44 (line 50): the same id twice",
            "providers_ips row 100 (line 40) duplicates providers_ips row 31 (same provider, address, name, direction)",
            "providers_ips row 101 lists 209.124.34.105/32 for provider 4 again (already providers_ips row 51); use one row, IN/OUT for both directions",
            "providers_ips row 102 lists 95.211.119.240/32 for provider 8 again (already providers_ips row 2); use one row, IN/OUT for both directions",
            "providers_ips row 103 duplicates providers_ips row 1 (same provider, address, name, direction)",
        ]
    );
}

#[test]
fn the_same_address_for_two_providers_is_kept_with_a_note() {
    let mut t = seed();
    t.ips.push(row(110, 7, 1607694320, None, Direction::Out, "SIP"));
    let a = export(&t).unwrap();
    assert_eq!(
        a.notes(),
        ["95.211.119.240/32 is listed for more than one provider: 7 \"WestCall\" (row 110), 8 \"VoxBeam\" (row 2)"]
    );
    let ip: IpAddr = "95.211.119.240".parse().unwrap();
    assert_eq!(a.matches(ip).count(), 2);
    assert!(a.may_originate(ip));
    assert_eq!(a.lookup(ip).map(|e| e.provider_id), Some(8));
    assert_eq!(a.xdp_prefixes().iter().filter(|p| p.addr() == ip).count(), 1);
}

#[test]
fn non_sip_rows_are_skipped_with_a_note_and_an_empty_result_is_an_error() {
    let mut t = seed();
    t.ips.push(row(120, 3, 1, None, Direction::In, "IAX2"));
    let a = export(&t).unwrap();
    assert_eq!(a.notes(), ["row 120 (provider 3 \"Zadarma\"): proto IAX2, skipped (only SIP rows are allowlisted)"]);
    assert!(
        a.render().contains(
            "\n# note: row 120 (provider 3 \"Zadarma\"): proto IAX2, skipped (only SIP rows are allowlisted)\n"
        )
    );

    let only_h323 = Tables { providers: seed().providers, ips: vec![row(1, 3, 1, None, Direction::In, "H323")] };
    assert_eq!(errors(&only_h323), vec!["no entries (1 rows skipped): an empty allowlist would drop every provider"]);
    assert_eq!(errors(&Tables::default()), vec!["no entries: an empty allowlist would drop every provider"]);
    // Every name unresolvable and allowed: still empty, still an error.
    let names = Tables {
        providers: seed().providers,
        ips: vec![row(1, 3, PLACEHOLDER, Some("gone.test"), Direction::In, "SIP")],
    };
    assert_eq!(
        build(&names, &Options { source: "x".into(), allow_unresolved: true }, fake_dns).unwrap_err(),
        vec![ExportError::Empty { skipped: 1 }]
    );
}

#[test]
fn bad_sql_rows_fail_naming_their_line() {
    let seed_sql = std::fs::read_to_string(vectors().join("seed.sql")).unwrap();
    let bad = format!(
        "{seed_sql}INSERT INTO `providers_ips` VALUES\n(200, 3, 2130706433, 'x.zadarma.com', 'IN'),\n(201, 3, 'oops', NULL, 'IN', 'SIP');\n"
    );
    let line = seed_sql.lines().count() as u32;
    let e: Vec<String> = sql::parse(bad.as_bytes()).unwrap_err().iter().map(ToString::to_string).collect();
    assert_eq!(
        e,
        vec![
            format!("line {}: `providers_ips` row has 5 values, expected 6", line + 2),
            format!(
                "line {}: `providers_ips`.`ipaddress`: \"oops\" is not an unsigned 32-bit integer or an IPv4 address",
                line + 3
            ),
        ]
    );
}

#[test]
fn rendered_files_parse_back_identically() {
    let mut t = seed();
    t.providers[0].name = Some("Zadarma \"FR\" \\ Ltd\u{7}".into());
    t.providers[1].name = None;
    t.ips.push(row(120, 3, 1, None, Direction::In, "IAX2"));
    t.ips.push(row(121, 7, PLACEHOLDER, Some("2001:db8:7::/48"), Direction::In, "SIP"));
    let a = build(&t, &opts("mysql://sbc@db.example/voip"), fake_dns).unwrap().allowlist;
    let text = a.render();
    let b = Allowlist::parse(text.as_bytes()).unwrap();
    assert_eq!(a, b);
    assert_eq!(b.render(), text);
    assert_eq!(b.source(), "mysql://sbc@db.example/voip");
}

#[test]
fn parsers_never_panic_and_whatever_exports_reads_back_identically() {
    // Deterministic garbage from fragments that matter to the three grammars.
    let frags: &[&[u8]] = &[
        b"INSERT INTO `providers_ips` VALUES ", b"INSERT INTO providers VALUES ", b"(", b")", b",", b";", b"'", b"\"", b"`",
        b"\\", b"-- ", b"#", b"/*", b"*/", b"\n", b"\r\n", b"NULL", b"2130706433", b"1607694320", b"7", b"-", b"'IN'", b"'OUT'",
        b"'IN/OUT'", b"'SIP'", b"'IAX2'", b"'sbc.voxbeam.com'", b"'203.0.113.0/24'", b"'x'", b"DELIMITER ;;\n", b";;",
        b"CREATE TABLE providers_ips (id INT, provider_id INT, ipaddress INT, domainname TEXT, direction TEXT, proto TEXT) ",
        b"(8,'VoxBeam',1,NULL,NULL,NULL,'N','N',1,NULL)", b"(1,8,2130706433,'sbc.voxbeam.com','OUT','SIP')",
        b"(2,8,1607694320,NULL,'IN','SIP')", b"id,provider_id,provider_name,ipaddress,domainname,direction,proto\n",
        b"3,8,VoxBeam,1,,IN,SIP\n", b"\xef\xbb\xbf", b"\xff", b"\xd0\x92", b"# sbc-allowlist v1\n",
        b"203.0.113.0/24 IN 1 \"A\" 2 ip\n", b"2001:db8::/32 OUT 3 \"\\x09\" 4 dns:a.b\n", b" ", b"\t", b"\\x",
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut exported = 0;
    for i in 0..3000 {
        // Every other input starts valid, so the export and the round trip get exercised too.
        let mut input = Vec::new();
        if i % 2 == 0 {
            input.extend_from_slice(b"INSERT INTO providers VALUES (8,'VoxBeam',1,NULL,NULL,NULL,'N','N',1,NULL);\nINSERT INTO providers_ips VALUES (2,8,1607694320,NULL,'IN','SIP')");
        }
        for _ in 0..next() % if i % 2 == 0 { 6 } else { 40 } {
            input.extend_from_slice(frags[(next() % frags.len() as u64) as usize]);
        }
        let _ = csv::parse(&input);
        let _ = Allowlist::parse(&input);
        for tables in [sql::parse(&input), csv::parse(&input)].into_iter().flatten() {
            if let Ok(e) = build(&tables, &opts("fuzz"), fake_dns) {
                let text = e.allowlist.render();
                assert_eq!(Allowlist::parse(&text).as_ref(), Ok(&e.allowlist), "{text}");
                exported += 1;
            }
        }
    }
    assert!(exported > 100, "the generator hardly ever made a valid table ({exported})");
}

#[test]
fn database_rows_are_checked_like_dump_rows() {
    let r =
        ip_row([Some("1"), Some("8"), Some("2130706433"), Some("sbc.voxbeam.com"), Some("OUT"), Some("SIP")]).unwrap();
    assert_eq!(r, row(1, 8, PLACEHOLDER, Some("sbc.voxbeam.com"), Direction::Out, "SIP"));
    let e = ip_row([Some("1"), None, Some("-1"), None, Some("UP"), None]).unwrap_err();
    assert_eq!(e.len(), 4, "{e:?}");
    assert_eq!(
        provider_row([Some("8"), None, None, None]).unwrap(),
        Provider { id: 8, name: None, cli: None, line: None }
    );
    assert_eq!(
        provider_row([Some("x"), Some(&"n".repeat(MAX_TEXT + 1)), Some("maybe"), Some("12a")]).unwrap_err().len(),
        3
    );
    let p = provider_row([Some("7"), Some("WestCall"), Some("n"), Some("+74951815283")]).unwrap();
    assert_eq!(p.cli, Some(CliPolicy { allowed: false, number: Number::parse(b"+74951815283") }));
    let p = provider_row([Some("8"), None, Some("Y"), Some("")]).unwrap();
    assert_eq!(p.cli, Some(CliPolicy { allowed: true, number: None }));
}
