//! The guard in the running SBC against real attack tools from Debian (sipvicious's svcrack,
//! svwar and svmap, sipsak), with Kamailio as a core that challenges every REGISTER
//! (`kamailio-core.cfg -A WITH_AUTH`) and a legitimate sipp caller beside the attacker:
//!
//! ```text
//! [ext 203.0.113.66 attacker (primary address), 203.0.113.10 phone] ─ e0/x0 (XDP) ─ [sbc] ─ [core: Kamailio :5070, sipp UAS :5072]
//! ```
//!
//! The SBC's access port is 203.0.113.1:5080 (not a protected trunk port: the allowlist's
//! filter does not apply, the guard does); the XDP program is attached on x0 for the trunk
//! port and holds the blocklist, which drops a banned source on every port.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use sbc_lab::calls::{Captured, spawn_sipp, start_kamailio_with};
use sbc_lab::{
    CORE, Capture, EXT_PEER, Lab, Proc, SBC_EXT, lab_lock, pcap, privileged, sbc_cli, scenario, sipp_stats, stat,
};

const ATTACKER: &str = "203.0.113.66";
/// A second attacker (svwar, sending from it).
const ENUMERATOR: &str = "203.0.113.67";
const ACCESS_PORT: u16 = 5080;
/// The default `sip-auth` jail's maxretry.
const MAXRETRY: usize = 5;
/// The default `sip-garbage` jail's maxretry (malformed messages, unknown domains).
const GARBAGE_MAXRETRY: usize = 10;
/// The domain the SBC serves in this lab (`guard.domains`); its own address is served too.
const DOMAIN: &str = "voip.example.com";
/// A domain it does not serve.
const FOREIGN: &str = "192.0.2.99";

/// The lab: the attacker's address first on e0 (the tools without a bind option send from it),
/// the phone's second; Kamailio challenging REGISTERs.
fn guard_lab(prefix: &str, name: &str) -> Result<(Lab, Proc)> {
    let lab = Lab::new(prefix, name)?;
    lab.ext.ip(&["addr", "flush", "dev", "e0"])?;
    lab.ext.ip(&["addr", "add", &format!("{ATTACKER}/24"), "dev", "e0"])?;
    lab.ext.ip(&["addr", "add", &format!("{EXT_PEER}/24"), "dev", "e0"])?;
    lab.ext.ip(&["addr", "add", &format!("{ENUMERATOR}/24"), "dev", "e0"])?;
    std::fs::write(lab.dir.join("allow.txt"), "# sbc-allowlist v1\n203.0.113.20/32 IN 7 \"Carrier\" 1 ip\n")?;
    let kamailio = start_kamailio_with(&lab, &["WITH_AUTH"])?;
    Ok((lab, kamailio))
}

/// Starts the SBC; `signatures`: the default scanner signatures, or none (svcrack's
/// User-Agent is "friendly-scanner": with signatures it is banned on first sight, and the
/// jail counting the core's 401s would never be reached).
fn start_sbc(lab: &Lab, signatures: bool) -> Result<Proc> {
    let listen = format!("udp = [\"{SBC_EXT}:5060\", \"{SBC_EXT}:{ACCESS_PORT}\"]");
    let scanner = if signatures { "" } else { "[guard.scanner]\nuser_agents = []\nfrom_names = []\nfrom_hosts = []\n" };
    let extra = format!(
        "[trunk]\nallowlist = \"{dir}/allow.txt\"\ninterface = \"x0\"\nxdp_mode = \"native\"\n\
         protected = [\"{SBC_EXT}:5060/udp\"]\n[media]\nenabled = true\nports = \"40000-40999\"\nworkers = 1\n[guard]\nstate_dir = \"{dir}/state\"\ndomains = [\"{DOMAIN}\"]\n{scanner}",
        dir = lab.dir.display()
    );
    let sbc = lab.start_sbc_listening(&listen, true, &extra)?;
    ensure!(sbc.log_text().contains("XDP filter attached"), "XDP not attached:\n{}", sbc.log_text());
    Ok(sbc)
}

fn stats(lab: &Lab) -> Result<String> {
    let (ok, text) = sbc_cli(&["stats", "--socket", &lab.admin_socket().to_string_lossy()])?;
    ensure!(ok, "sbc stats failed: {text}");
    Ok(text)
}

fn bans(lab: &Lab, args: &[&str]) -> Result<(bool, String)> {
    let sock = lab.admin_socket().to_string_lossy().into_owned();
    let mut all = vec!["bans"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--socket", &sock]);
    sbc_cli(&all)
}

/// sipsak's OPTIONS from the attacker's address to the access port: whether anything answered
/// (sipsak exits 0 on a 200, 1 on another answer, 2 or more on no answer).
fn sipsak_answered(lab: &Lab) -> Result<bool> {
    let out = lab
        .ext
        .cmd("timeout")
        .args(["10", "sipsak", "-s", &format!("sip:{SBC_EXT}:{ACCESS_PORT}"), "-D", "2"])
        .output()?;
    Ok(matches!(out.status.code(), Some(0 | 1)))
}

/// sipsak's OPTIONS for `uri` from the attacker's address, sent to the access port.
fn sipsak_probe(lab: &Lab, uri: &str) -> Result<()> {
    lab.ext
        .cmd("timeout")
        .args(["10", "sipsak", "-s", uri, "-p", &format!("{SBC_EXT}:{ACCESS_PORT}"), "-D", "2"])
        .output()?;
    Ok(())
}

/// Unix time of an RFC 3339 UTC log timestamp (`2026-12-02T11:17:36.913794Z`).
fn unix_of(ts: &str) -> Option<Duration> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let mut t = time.split(':');
    let (h, min, s) = (t.next()?.parse::<u64>().ok()?, t.next()?.parse::<u64>().ok()?, t.next()?.parse::<f64>().ok()?);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + min * 60;
    Some(Duration::from_secs(secs) + Duration::from_secs_f64(s))
}

/// The time of the SBC's first `ban` log line for `prefix`.
fn ban_logged_at(log: &str, prefix: &str) -> Option<Duration> {
    log.lines().find(|l| l.contains(" ban ") && l.contains(&format!("prefix={prefix}"))).and_then(|l| {
        let ts = l.split_whitespace().next()?.to_string();
        unix_of(&ts)
    })
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

fn d2(before: &str, after: &str, name: &str) -> u64 {
    stat(after, name).saturating_sub(stat(before, name))
}

fn text(p: &pcap::Packet) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

#[test]
fn svcrack_is_banned_after_maxretry_failures_and_dropped_in_xdp_while_a_phone_keeps_calling() -> Result<()> {
    if !privileged("guard") {
        return Ok(());
    }
    let _g = lab_lock();
    let (lab, _kamailio) = guard_lab("sbg", "guard")?;
    let mut sbc = start_sbc(&lab, false)?;
    let access: SocketAddr = format!("{SBC_EXT}:{ACCESS_PORT}").parse()?;

    // The phone: 40 calls at 4/s to "svc" (Kamailio relays them to the UAS on :5072).
    let uas_sf = scenario("uas-core.xml").to_string_lossy().into_owned();
    let uas = spawn_sipp(&lab, &lab.core, "callee", &["-sf", &uas_sf, "-i", CORE, "-p", "5072", "-timeout", "90s"])?;
    std::thread::sleep(Duration::from_millis(300));
    let internal = Capture::start(&lab.sbc, "i0", lab.dir.join("internal.pcap"), &lab.dir)?;
    let external = Capture::start(&lab.ext, "e0", lab.dir.join("external.pcap"), &lab.dir)?;
    let before = stats(&lab)?;
    let uac_sf = scenario("uac.xml").to_string_lossy().into_owned();
    let target = access.to_string();
    let caller = spawn_sipp(
        &lab,
        &lab.ext,
        "caller",
        &[
            "-sf", &uac_sf, "-i", EXT_PEER, "-p", "5062", "-s", "svc", &target, "-m", "40", "-r", "4", "-d", "200",
            "-timeout", "60s",
        ],
    )?;
    // The attacker: svcrack guessing user 1000's password (0001..0200) from its own address.
    let mut crack = lab.ext.cmd("svcrack");
    crack.args(["-u", "1000", "-r", "1-200", "-z", "4", "-b", ATTACKER, "-p", &ACCESS_PORT.to_string()]);
    crack.args(["--maximumtime", "5", SBC_EXT]);
    let mut crack = Proc::spawn("svcrack", crack, lab.dir.join("svcrack.log"))?;
    let started = Instant::now();
    let _ = crack.wait(Duration::from_secs(60));
    let mut caller = caller;
    caller.wait(Duration::from_secs(60)).context("the phone's sipp")?;
    let after = stats(&lab)?;
    let (internal, external) = (internal.finish()?, external.finish()?);

    // The phone: every call completed.
    let calls = sipp_stats(&caller.log_text());
    ensure!(calls.successful == 40 && calls.failed == 0, "phone calls: {calls:?}\n{}", caller.log_text());
    // The phone's calls carried SDP both ways (the core's callee answers with its own): nothing
    // of the core, its SDP included, reached the outside.
    let (internal, external) = {
        let cap = Captured { external, internal, core: CORE.parse()?, sbc_external: SBC_EXT.parse()? };
        let report = cap.leak_report();
        let answers = pcap::sdp_bodies(&cap.internal, cap.core).len();
        ensure!(answers >= 40, "{answers} SDP answers from the core for 40 calls");
        ensure!(
            report.leaks.is_empty(),
            "{} leaks, first:\n{}",
            report.leaks.len(),
            report.leaks.first().map_or("", |l| l.at.as_str())
        );
        (cap.internal, cap.external)
    };

    // The ban: by the sip-auth jail, logged with its evidence.
    let (ok, list) = bans(&lab, &["list"])?;
    ensure!(ok && list.contains(&format!("{ATTACKER}/32 jail=sip-auth")), "no sip-auth ban:\n{list}");
    let log = strip_ansi(&sbc.log_text());
    let t_ban = ban_logged_at(&log, &format!("{ATTACKER}/32")).context("no ban log line")?;
    ensure!(log.contains("evidence=") && log.contains("401 to REGISTER"), "ban log without evidence:\n{log}");

    // The failure that crossed maxretry: the core's 401 to the attacker's MAXRETRY-th REGISTER
    // carrying credentials, as it reached the SBC (internal capture).
    let core_ip: std::net::IpAddr = CORE.parse()?;
    let mut with_creds = 0;
    let mut t_fail = None;
    let mut after_fail = 0;
    for p in &internal {
        let t = text(p);
        if p.dst.ip() == core_ip && t.starts_with("REGISTER ") && t.contains("\r\nAuthorization:") {
            if t_fail.is_some() {
                after_fail += 1;
            }
            with_creds += 1;
        } else if p.src.ip() == core_ip && t.starts_with("SIP/2.0 401") && with_creds == MAXRETRY && t_fail.is_none() {
            t_fail = Some(p.ts);
        }
    }
    let t_fail = t_fail.context("no 401 to the 5th REGISTER with credentials in the internal capture")?;
    ensure!(with_creds == MAXRETRY, "{with_creds} REGISTERs with credentials reached the core (want {MAXRETRY})");
    ensure!(after_fail == 0, "{after_fail} attacker REGISTERs reached the core after the ban");
    // One `auth failure` line per failure (what fail2ban's sbc-auth filter counts), none for
    // the challenges to REGISTERs without credentials.
    let auth_lines =
        log.lines().filter(|l| l.contains(&format!("WARN sbc::auth: auth failure from {ATTACKER} port="))).count();
    ensure!(auth_lines == MAXRETRY, "{auth_lines} auth failure lines for the attacker (want {MAXRETRY}):\n{log}");
    let reaction = t_ban.saturating_sub(t_fail);
    // What the attacker sent after the ban, and what was answered (external capture).
    let attacker: std::net::IpAddr = ATTACKER.parse()?;
    let sent_after = external.iter().filter(|p| p.src.ip() == attacker && p.ts > t_ban).count();
    let answered_after =
        external.iter().filter(|p| p.dst.ip() == attacker && p.ts > t_ban + Duration::from_millis(5)).count();
    let d = |name: &str| stat(&after, name).saturating_sub(stat(&before, name));
    let xdp_drops = d("xdp.drop_blocked");
    ensure!(sent_after > 0, "svcrack sent nothing after its ban (the test proves nothing)");
    ensure!(answered_after == 0, "{answered_after} answers to the attacker after its ban");
    ensure!(xdp_drops >= sent_after as u64, "XDP dropped {xdp_drops} of {sent_after} attacker packets\n{after}");
    ensure!(d("guard.userspace_dropped_packets") == 0, "XDP let a banned packet through\n{after}");
    ensure!(reaction < Duration::from_millis(100), "ban {reaction:?} after the failure");
    eprintln!(
        "GUARD svcrack: banned {:.3} ms after the core's {MAXRETRY}th 401 reached the SBC; attacker packets after the \
         ban: {sent_after} sent, {xdp_drops} dropped in XDP, {answered_after} answered, 0 reached the core; \
         phone calls ok={} failed={}; svcrack ran {:.1} s",
        reaction.as_secs_f64() * 1000.0,
        calls.successful,
        calls.failed,
        started.elapsed().as_secs_f64()
    );
    drop(uas);

    // svwar enumerating extensions 100..300, with no signature to match (they are off in this
    // run, as if it had changed its User-Agent): banned by behaviour, many target users
    // without a success (sip-scanner jail), then dropped in XDP.
    let before = stats(&lab)?;
    let mut war = lab.ext.cmd("svwar");
    // (svwar takes its port from the target URL: its -p is not honoured.)
    war.args(["-e", "100-300", "-m", "INVITE", "--maximumtime", "3", &format!("udp://{SBC_EXT}:{ACCESS_PORT}")]);
    // svwar's -b does not choose its source address: a route toward the SBC does, for the run.
    let host_route = format!("{SBC_EXT}/32");
    lab.ext.ip(&["route", "replace", &host_route, "dev", "e0", "src", ENUMERATOR])?;
    let mut war = Proc::spawn("svwar", war, lab.dir.join("svwar.log"))?;
    let _ = war.wait(Duration::from_secs(60));
    lab.ext.ip(&["route", "del", &host_route])?;
    let after = stats(&lab)?;
    let (ok, shown) = bans(&lab, &["show", ENUMERATOR])?;
    ensure!(ok && shown.contains("jail=sip-scanner"), "svwar not banned by behaviour: {shown}\n{}", war.log_text());
    ensure!(shown.contains("distinct"), "the evidence does not name the behaviour: {shown}");
    let war_drops = d2(&before, &after, "xdp.drop_blocked");
    ensure!(war_drops > 0, "no XDP drop of svwar after its ban\n{after}");
    eprintln!("GUARD svwar: {}; {war_drops} packets dropped in XDP afterwards", shown.trim());

    // A restart (with the default scanner signatures now) keeps the ban: sipsak gets nothing.
    sbc.stop();
    let _sbc2 = start_sbc(&lab, true)?;
    let (ok, shown) = bans(&lab, &["show", ATTACKER])?;
    ensure!(ok && shown.contains("jail=sip-auth"), "the ban did not survive the restart: {shown}");
    let before = stats(&lab)?;
    ensure!(!sipsak_answered(&lab)?, "a banned source was answered after the restart");
    let after = stats(&lab)?;
    ensure!(stat(&after, "xdp.drop_blocked") > stat(&before, "xdp.drop_blocked"), "no XDP drop after the restart");

    // `sbc bans del` lifts it at once.
    let (ok, out) = bans(&lab, &["del", ATTACKER])?;
    ensure!(ok, "bans del failed: {out}");
    ensure!(sipsak_answered(&lab)?, "sipsak not answered right after `sbc bans del`");

    // Probes for a domain the SBC does not serve (guard.domains): each answered 404 on the
    // wire and never forwarded, an unknown-domain event each; the sip-garbage jail bans on the
    // GARBAGE_MAXRETRY-th, which gets no answer; then dropped in XDP.
    let internal = Capture::start(&lab.sbc, "i0", lab.dir.join("internal-domain.pcap"), &lab.dir)?;
    let external = Capture::start(&lab.ext, "e0", lab.dir.join("external-domain.pcap"), &lab.dir)?;
    let before = stats(&lab)?;
    // (An address, not a name: sipsak resolves the Request-URI's host even with a proxy.)
    for _ in 0..GARBAGE_MAXRETRY {
        sipsak_probe(&lab, &format!("sip:100@{FOREIGN}"))?;
    }
    ensure!(!sipsak_answered(&lab)?, "answered after the unknown-domain ban");
    let after = stats(&lab)?;
    let (internal, external) = (internal.finish()?, external.finish()?);
    let not_found = external.iter().filter(|p| p.dst.ip() == attacker && text(p).starts_with("SIP/2.0 404 ")).count();
    ensure!(not_found == GARBAGE_MAXRETRY - 1, "{not_found} 404s to the probes (want {})", GARBAGE_MAXRETRY - 1);
    let leaked = internal.iter().filter(|p| text(p).contains(FOREIGN)).count();
    ensure!(leaked == 0, "{leaked} probes for the foreign domain reached the core side");
    let events = d2(&before, &after, "guard.events.unknown-domain");
    ensure!(events == GARBAGE_MAXRETRY as u64, "{events} unknown-domain events\n{after}");
    ensure!(d2(&before, &after, "xdp.drop_blocked") > 0, "no XDP drop after the unknown-domain ban\n{after}");
    let (ok, shown) = bans(&lab, &["show", ATTACKER])?;
    ensure!(
        ok && shown.contains("jail=sip-garbage") && shown.contains("unknown domain"),
        "no unknown-domain ban: {shown}"
    );
    eprintln!("GUARD unknown domain: {not_found} probes answered 404, then {}", shown.trim());
    let (ok, out) = bans(&lab, &["del", ATTACKER])?;
    ensure!(ok, "bans del failed: {out}");

    // svmap: banned on first sight by its signature, dropped in XDP from then on.
    let before_svmap = stats(&lab)?;
    let out = lab.ext.cmd("timeout").args(["20", "svmap", "-p", &ACCESS_PORT.to_string(), SBC_EXT]).output()?;
    let (ok, shown) = bans(&lab, &["show", ATTACKER])?;
    ensure!(
        ok && shown.contains("jail=sip-scanner"),
        "svmap not banned: {shown}\nsvmap: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        diff_stats(&before_svmap, &stats(&lab)?)
    );
    ensure!(!sipsak_answered(&lab)?, "answered after the svmap ban");

    // An operator's ban, and one of a listed provider, which is refused.
    let (ok, out) = bans(&lab, &["add", "198.51.100.0/24", "--for", "60", "--reason", "abuse report"])?;
    ensure!(ok && out.contains("jail=manual") && out.contains("abuse report"), "bans add: {out}");
    let (ok, out) = bans(&lab, &["add", "203.0.113.20"])?;
    ensure!(!ok && out.contains("exempt"), "a provider was banned: {out}");
    let (ok, list) = bans(&lab, &["list"])?;
    ensure!(ok && list.lines().count() == 3, "want svwar's, svmap's and the operator's bans:\n{list}");
    Ok(())
}

/// The `sbc stats` lines that changed between two readings (for a failure's message).
fn diff_stats(before: &str, after: &str) -> String {
    after.lines().filter(|l| !before.lines().any(|b| b == *l)).collect::<Vec<_>>().join("\n")
}

#[test]
fn log_timestamps_convert_to_unix_time() {
    assert_eq!(unix_of("1970-01-01T00:00:01.5Z"), Some(Duration::from_millis(1500)));
    assert_eq!(unix_of("2026-12-02T11:17:36Z"), Some(Duration::from_secs(1_796_210_256)));
    assert_eq!(strip_ansi("\x1b[2m2026\x1b[0m x"), "2026 x");
}

/// The listed provider (the allowlist's "Carrier").
const PROVIDER: &str = "203.0.113.20";
/// The flooding sources (besides the spoofed provider address).
const FLOODERS: [&str; 4] = ["203.0.113.70", "203.0.113.71", "203.0.113.72", "203.0.113.73"];
/// Legitimate calls per caller (the subscriber, the provider) and their rate (calls/s each).
const LEGIT_CALLS: u32 = 40;
const LEGIT_RATE: u32 = 4;

/// Sends `count` distinct out-of-dialog INVITEs (to a premium-rate number the core does not
/// know, so it answers 404) from `src`:`sport` to `dst`, `rate` per second, from python3 in
/// the ext namespace. Bounded in count and time.
fn spawn_invite_flood(
    lab: &Lab,
    name: &str,
    src: &str,
    sport: u16,
    dst: SocketAddr,
    count: u32,
    rate: u32,
) -> Result<Proc> {
    let script = format!(
        "import socket,time\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(({src:?},{sport}))\n\
         t0=time.time()\n\
         for i in range({count}):\n\
         \x20 m=('INVITE sip:900123456@{dst} SIP/2.0\\r\\nVia: SIP/2.0/UDP {src}:{sport};branch=z9hG4bK{name}%d\\r\\n'\n\
         \x20   'Max-Forwards: 70\\r\\nFrom: <sip:flood@{src}>;tag=f%d\\r\\nTo: <sip:900123456@{dst}>\\r\\n'\n\
         \x20   'Call-ID: {name}%d@{src}\\r\\nCSeq: 1 INVITE\\r\\nContact: <sip:flood@{src}:{sport}>\\r\\n'\n\
         \x20   'Content-Length: 0\\r\\n\\r\\n') % (i, i, i)\n\
         \x20 s.sendto(m.encode(),({ip:?},{port}))\n\
         \x20 d=t0+(i+1)/{rate}-time.time()\n\
         \x20 if d>0: time.sleep(d)\n",
        ip = dst.ip().to_string(),
        port = dst.port(),
    );
    let mut c = lab.ext.cmd("timeout");
    c.args(["60", "python3", "-c", &script]);
    Proc::spawn(name, c, lab.dir.join(format!("{name}.log")))
}

/// Under a bounded flood — 10× the legitimate INVITE rate from several attacker addresses on
/// the access port, and a spoofed flood from the listed provider's address on the trunk port
/// — a subscriber and the provider keep calling: the share of their calls that completed is
/// printed and must be 100% (every flooding access source is banned and then dropped in XDP;
/// the provider's address is never banned, only limited per trunk, and its spoofed INVITEs
/// stay under the trunk's call rate here).
#[test]
fn legitimate_calls_complete_under_an_invite_flood_and_a_spoofed_provider_flood() -> Result<()> {
    if !privileged("guard_flood") {
        return Ok(());
    }
    let _g = lab_lock();
    let (lab, _kamailio) = guard_lab("sbgf", "guard_flood")?;
    for a in std::iter::once(&PROVIDER).chain(FLOODERS.iter()) {
        lab.ext.ip(&["addr", "add", &format!("{a}/24"), "dev", "e0"])?;
    }
    let _sbc = start_sbc(&lab, true)?;
    let access: SocketAddr = format!("{SBC_EXT}:{ACCESS_PORT}").parse()?;
    let trunk: SocketAddr = format!("{SBC_EXT}:5060").parse()?;
    let uas_sf = scenario("uas-core.xml").to_string_lossy().into_owned();
    let uas = spawn_sipp(&lab, &lab.core, "callee", &["-sf", &uas_sf, "-i", CORE, "-p", "5072", "-timeout", "90s"])?;
    std::thread::sleep(Duration::from_millis(300));
    let internal = Capture::start(&lab.sbc, "i0", lab.dir.join("internal.pcap"), &lab.dir)?;
    let before = stats(&lab)?;
    let uac_sf = scenario("uac.xml").to_string_lossy().into_owned();
    let (m, r) = (LEGIT_CALLS.to_string(), LEGIT_RATE.to_string());
    let legit = |name: &str, ip: &str, port: &str, target: &SocketAddr| {
        let target = target.to_string();
        let args = [
            "-sf", &uac_sf, "-i", ip, "-p", port, "-s", "svc", &target, "-m", &m, "-r", &r, "-d", "200", "-timeout",
            "60s",
        ];
        spawn_sipp(&lab, &lab.ext, name, &args)
    };
    let mut subscriber = legit("subscriber", EXT_PEER, "5062", &access)?;
    let mut provider = legit("provider", PROVIDER, "5064", &trunk)?;
    // The flood, for as long as the legitimate calls are placed: 10× their INVITE rate split
    // over the flooders, and 10× the provider's rate spoofed from its address.
    let secs = LEGIT_CALLS / LEGIT_RATE;
    let per_flooder = 10 * 2 * LEGIT_RATE / FLOODERS.len() as u32;
    let mut floods = Vec::new();
    for (i, a) in FLOODERS.iter().enumerate() {
        floods.push(spawn_invite_flood(&lab, &format!("flood{i}"), a, 5900, access, per_flooder * secs, per_flooder)?);
    }
    let spoof_rate = 10 * LEGIT_RATE;
    floods.push(spawn_invite_flood(&lab, "spoofed", PROVIDER, 5999, trunk, spoof_rate * secs, spoof_rate)?);
    for f in &mut floods {
        f.wait(Duration::from_secs(70)).context("a flood did not end")?;
    }
    subscriber.wait(Duration::from_secs(70)).context("the subscriber's sipp")?;
    provider.wait(Duration::from_secs(70)).context("the provider's sipp")?;
    let after = stats(&lab)?;
    let internal = internal.finish()?;
    drop(uas);

    let (sub, prov) = (sipp_stats(&subscriber.log_text()), sipp_stats(&provider.log_text()));
    let placed = 2 * u64::from(LEGIT_CALLS);
    let completed = sub.successful + prov.successful;
    let share = completed as f64 * 100.0 / placed as f64;
    let flood_sent = u64::from(per_flooder * secs) * FLOODERS.len() as u64 + u64::from(spoof_rate * secs);
    let flood_at_core = internal.iter().filter(|p| text(p).starts_with("INVITE sip:900123456@")).count();
    let (ok, list) = bans(&lab, &["list"])?;
    ensure!(ok, "bans list: {list}");
    let banned: Vec<&str> = FLOODERS.iter().copied().filter(|a| list.contains(&format!("{a}/32 "))).collect();
    eprintln!(
        "GUARD flood: legitimate calls completed {completed}/{placed} = {share:.1}% (subscriber {}/{LEGIT_CALLS} \
         failed {}, provider {}/{LEGIT_CALLS} failed {}); flood {flood_sent} INVITEs ({} per s from {} addresses + \
         {spoof_rate} per s spoofed from the provider), {flood_at_core} reached the core; flooders banned {}/{}; \
         XDP drops {}; 503s {}; trunk rate hits {}",
        sub.successful,
        sub.failed,
        prov.successful,
        prov.failed,
        per_flooder * FLOODERS.len() as u32,
        FLOODERS.len(),
        banned.len(),
        FLOODERS.len(),
        d2(&before, &after, "xdp.drop_blocked"),
        d2(&before, &after, "guard.rejected"),
        d2(&before, &after, "guard.rate_hits.trunk"),
    );
    ensure!(completed == placed, "{completed} of {placed} legitimate calls completed\n{}", subscriber.log_text());
    ensure!(banned.len() == FLOODERS.len(), "not every flooder was banned:\n{list}");
    ensure!(!list.contains(&format!("{PROVIDER}/")), "the provider was banned:\n{list}");
    ensure!(d2(&before, &after, "xdp.drop_blocked") > 0, "no flood packet dropped in XDP\n{after}");
    Ok(())
}
