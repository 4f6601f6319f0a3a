//! Bans shared by two SBCs through one real `redis-server` (`[guard.store]`):
//!
//! ```text
//! [ext A 203.0.113.10] ─ [sbc A (XDP on x0)] ─ r0/s1 ─┐
//!                                                     [store: redis-server 10.98.1.1, 10.98.2.1 :6379]
//! [ext B 203.0.113.10] ─ [sbc B (XDP on x0)] ─ r0/s2 ─┘
//! ```
//!
//! Both labs use the same addresses (separate namespaces), so one banned prefix names the
//! attacker in front of each SBC. A's allowlist lists nothing the test bans; B's lists the
//! carrier 203.0.113.20, which a ban made on A must never ban on B (the exemption check stays
//! local).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use sbc_lab::{EXT_PEER, Lab, Netns, Proc, SBC_EXT, lab_lock, privileged, sbc_cli, send_udp, stat, veth, workdir};

const ACCESS_PORT: u16 = 5080;
const CARRIER: &str = "203.0.113.20";

fn start_sbc(lab: &Lab, listed: &str, store_ip: &str, node: &str) -> Result<Proc> {
    std::fs::write(lab.dir.join("allow.txt"), format!("# sbc-allowlist v1\n{listed}/32 IN 7 \"Carrier\" 1 ip\n"))?;
    let listen = format!("udp = [\"{SBC_EXT}:5060\", \"{SBC_EXT}:{ACCESS_PORT}\"]");
    let extra = format!(
        "[trunk]\nallowlist = \"{dir}/allow.txt\"\ninterface = \"x0\"\nxdp_mode = \"native\"\n\
         protected = [\"{SBC_EXT}:5060/udp\"]\n[guard]\nstate_dir = \"{dir}/state\"\n\
         [guard.store]\nredis = \"redis://{store_ip}:6379/0\"\nprefix = \"lab\"\nnode = \"{node}\"\n",
        dir = lab.dir.display()
    );
    let mut sbc = lab.start_sbc_listening(&listen, true, &extra)?;
    ensure!(sbc.log_text().contains("XDP filter attached"), "XDP not attached:\n{}", sbc.log_text());
    sbc.wait_log("ban store resynchronised", Duration::from_secs(5)).context("no store connection")?;
    Ok(sbc)
}

fn start_redis(store: &Netns, dir: &std::path::Path) -> Result<Proc> {
    let mut c: Command = store.cmd("redis-server");
    c.args(["--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir);
    let mut p = Proc::spawn("redis-server", c, dir.join("redis.log"))?;
    p.wait_log("Ready to accept connections", Duration::from_secs(5)).context("redis-server did not start")?;
    Ok(p)
}

fn cli(lab: &Lab, args: &[&str]) -> Result<String> {
    let sock = lab.admin_socket().to_string_lossy().into_owned();
    let mut all = args.to_vec();
    all.extend_from_slice(&["--socket", &sock]);
    let (ok, text) = sbc_cli(&all)?;
    ensure!(ok, "sbc {args:?} failed: {text}");
    Ok(text)
}

/// Seconds since midnight of the first line of `log` holding every one of `needles` (its
/// RFC 3339 UTC timestamp, e.g. `2026-12-02T11:17:36.913794Z`, after tracing's colour codes).
fn logged_at(log: &str, needles: &[&str]) -> Option<f64> {
    // Without tracing's colour codes (ESC [ ... m).
    let mut plain = String::with_capacity(log.len());
    let mut esc = false;
    for c in log.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    let line = plain.lines().find(|l| needles.iter().all(|n| l.contains(n)))?;
    let (_, rest) = line.split_once('T')?;
    let (time, _) = rest.split_once('Z')?;
    let mut t = time.split(':');
    let (h, m, s) = (t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Polls `lab`'s `sbc bans list` until `want(list)` holds; the time it took.
fn wait_bans(lab: &Lab, limit: Duration, want: impl Fn(&str) -> bool) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let list = cli(lab, &["bans", "list"])?;
        if want(&list) {
            return Ok(start.elapsed());
        }
        ensure!(start.elapsed() < limit, "not reached within {limit:?}; bans list:\n{list}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_ban_on_one_sbc_is_enforced_in_the_others_xdp_and_resynchronised_after_a_store_outage() -> Result<()> {
    if !privileged("guard_store") {
        return Ok(());
    }
    let _g = lab_lock();
    let a = Lab::new("sgsa", "guard_store_a")?;
    let b = Lab::new("sgsb", "guard_store_b")?;
    let dir = workdir("guard_store")?;
    let store = Netns::new("sgs-store")?;
    veth(&store, "s1", &a.sbc, "r0")?;
    veth(&store, "s2", &b.sbc, "r0")?;
    store.addr("s1", "10.98.1.1/24")?;
    a.sbc.addr("r0", "10.98.1.2/24")?;
    store.addr("s2", "10.98.2.1/24")?;
    b.sbc.addr("r0", "10.98.2.2/24")?;
    let mut redis = start_redis(&store, &dir)?;
    let sbc_a = start_sbc(&a, "203.0.113.30", "10.98.1.1", "a")?;
    let mut sbc_b = start_sbc(&b, CARRIER, "10.98.2.1", "b")?;
    let access: SocketAddr = format!("{SBC_EXT}:{ACCESS_PORT}").parse()?;
    let peer = format!("{EXT_PEER}/32");

    // Before: B's XDP passes the peer (3 garbage datagrams: fewer than the sip-garbage jail's
    // maxretry, so B does not ban it itself).
    let before = cli(&b, &["stats"])?;
    send_udp(&b.ext, EXT_PEER, access, "hello", 3, 200)?;
    let mid = cli(&b, &["stats"])?;
    ensure!(stat(&mid, "xdp.drop_blocked") == stat(&before, "xdp.drop_blocked"), "dropped before any ban");

    // A bans the carrier B lists (A does not), then the peer: B applies the second only.
    cli(&a, &["bans", "add", &format!("{CARRIER}/32"), "--for", "600", "--reason", "shared test"])?;
    let t0 = Instant::now();
    cli(&a, &["bans", "add", &peer, "--for", "600", "--reason", "shared test"])?;
    let add_rtt = t0.elapsed();
    let seen = wait_bans(&b, Duration::from_secs(5), |l| l.contains(&peer))?;
    let latency = t0.elapsed();
    let list_b = cli(&b, &["bans", "list"])?;
    ensure!(!list_b.contains(CARRIER), "B banned the carrier it lists:\n{list_b}");
    ensure!(cli(&a, &["bans", "list"])?.contains(CARRIER), "A did not ban the carrier");
    let before = cli(&b, &["stats"])?;
    send_udp(&b.ext, EXT_PEER, access, "hello", 20, 200)?;
    let after = cli(&b, &["stats"])?;
    let dropped = stat(&after, "xdp.drop_blocked") - stat(&before, "xdp.drop_blocked");
    // From A's ban to B's, in their logs (one clock: the same machine).
    let log_a = sbc_a.log_text();
    let log_b = sbc_b.log_text();
    let banned_a = logged_at(&log_a, &[" ban ", &format!("prefix={peer}")]);
    let banned_b = logged_at(&log_b, &[" ban ", &format!("prefix={peer}")]);
    let (Some(ta), Some(tb)) = (banned_a, banned_b) else {
        anyhow::bail!("no ban log line for {peer}:\nA:\n{log_a}\nB:\n{log_b}")
    };
    let logged = (tb - ta) * 1000.0;
    ensure!((0.0..1000.0).contains(&logged), "A's ban to B's: {logged:.3} ms");
    ensure!(dropped >= 20, "B's XDP dropped {dropped} of 20 packets of the shared ban\n{after}");
    ensure!(stat(&after, "store.applied") >= 1, "{after}");

    // `sbc bans del` on A lifts it on B.
    let t1 = Instant::now();
    cli(&a, &["bans", "del", &peer])?;
    let lifted = wait_bans(&b, Duration::from_secs(5), |l| !l.contains(&peer))?;
    let _ = t1;

    // A jail's ban (sip-garbage: 10 malformed messages from the peer to A) reaches B with its
    // jail and evidence.
    send_udp(&a.ext, EXT_PEER, access, "hello", 12, 500)?;
    let jailed = wait_bans(&b, Duration::from_secs(5), |l| l.contains(&peer))?;
    let list_b = cli(&b, &["bans", "list"])?;
    ensure!(list_b.contains("jail=sip-garbage") && list_b.contains("malformed"), "{list_b}");
    let log_a = sbc_a.log_text();
    let log_b = sbc_b.log_text();
    let jail_a = logged_at(&log_a, &[" ban ", &format!("prefix={peer}"), "jail=sip-garbage"]);
    let jail_b = logged_at(&log_b, &[" ban ", &format!("prefix={peer}"), "jail=sip-garbage"]);
    let (Some(ja), Some(jb)) = (jail_a, jail_b) else { anyhow::bail!("no sip-garbage ban logged:\n{log_b}") };
    let jail_ms = (jb - ja) * 1000.0;
    ensure!((0.0..1000.0).contains(&jail_ms), "A's jail ban to B's: {jail_ms:.3} ms");
    cli(&a, &["bans", "del", &peer])?;
    wait_bans(&b, Duration::from_secs(5), |l| !l.contains(&peer))?;

    // B is stopped (its state file keeps a shared ban), A lifts that ban meanwhile: B,
    // restarted, restores it, then finds A's tombstone when it resynchronises and lifts it.
    let away = "203.0.113.12/32";
    cli(&a, &["bans", "add", away, "--for", "600", "--reason", "lifted while B was away"])?;
    wait_bans(&b, Duration::from_secs(5), |l| l.contains(away))?;
    sbc_b.stop();
    cli(&a, &["bans", "del", away])?;
    let mut sbc_b = start_sbc(&b, CARRIER, "10.98.2.1", "b")?;
    sbc_b.wait_log("ban lifted by another appliance while away", Duration::from_secs(5))?;
    let log_b = sbc_b.log_text();
    ensure!(log_b.contains("bans restored"), "B restored nothing: the step proves nothing\n{log_b}");
    ensure!(!cli(&b, &["bans", "list"])?.contains(away), "B kept a ban A lifted while B was away");

    // The store goes away: A keeps enforcing its new ban, B cannot know yet.
    redis.stop();
    let late = "203.0.113.11/32";
    cli(&a, &["bans", "add", late, "--for", "600", "--reason", "while the store was down"])?;
    ensure!(cli(&a, &["bans", "list"])?.contains(late), "A lost its ban while the store is down");
    std::thread::sleep(Duration::from_millis(500));
    ensure!(!cli(&b, &["bans", "list"])?.contains(late), "B got a ban with the store down");
    // Back (empty: no persistence): A republishes, B resynchronises.
    let _redis = start_redis(&store, &dir)?;
    let resync = wait_bans(&b, Duration::from_secs(10), |l| l.contains(late))?;
    let stats_a = cli(&a, &["stats"])?;
    ensure!(stat(&stats_a, "store.connects") >= 2, "A did not reconnect\n{stats_a}");
    drop(sbc_b);
    eprintln!(
        "guard_store: A's ban log line to B's (B's XDP and userspace hold it): {logged:.3} ms by hand, \
         {jail_ms:.3} ms for a jail's ban (seen in B's list after {jailed:?} of polling)"
    );
    eprintln!(
        "guard_store: ban on A (`sbc bans add` took {add_rtt:?}) seen in B's `sbc bans list` {latency:?} after \
         (polled every 5 ms; {seen:?} of polling), B's XDP dropped {dropped}/20 of the peer's packets; \
         unban seen on B in {lifted:?}; a ban made during a store outage reached B {resync:?} after redis restarted"
    );
    Ok(())
}
