//! Overload protection through the real daemon (issue 15/16): an INVITE flood far beyond what
//! the (debug) SBC can handle is shed with 503 + Retry-After; a call established before the
//! flood keeps working (its BYE goes through during it); OPTIONS health checks to the SBC are
//! answered throughout; the daemon's peak resident memory stays under a stated bound; and once
//! the flood ends, new calls are served again.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use sbc_lab::calls::{core_port, sipp_ok, spawn_sipp};
use sbc_lab::{Lab, lab_lock, privileged, sbc_cli, scenario, sipp_stats, stat};

const FLOOD_CALLS: u64 = 30_000;
const FLOOD_RATE: u32 = 3000;
/// The bound on the daemon's peak RSS (VmHWM): 64 MiB. Shed requests build no state, so what
/// can grow is the input queue (at most 4096 datagrams, each copied to its own size: the flood's
/// INVITEs are about 0.6 KiB, 2.5 MiB for a full queue) and the calls admitted before and
/// between overload spells (a few KiB of transaction and dialog state each, a few hundred of
/// them, ended by their BYE). An idle debug daemon here holds about 16 MiB; 64 MiB leaves room
/// for the allocator and the runtime, and is far below what an unbounded queue or state table
/// would reach in a 30 000-call flood (a transaction and dialog per call: over 100 MiB).
const RSS_BOUND_KIB: u64 = 64 * 1024;

fn stats(lab: &Lab) -> Result<String> {
    let (ok, text) = sbc_cli(&["stats", "--socket", &lab.admin_socket().to_string_lossy()])?;
    ensure!(ok, "sbc stats failed: {text}");
    Ok(text)
}

fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")
}

/// Sends `req` from `sock` to `target` and returns the first response (2 s at most).
fn ask(sock: &UdpSocket, target: SocketAddr, req: &str) -> Option<String> {
    let mut buf = [0u8; 4096];
    sock.send_to(req.as_bytes(), target).ok()?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(len) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(buf.get(..len)?).into_owned();
            // A provisional response to an INVITE: wait for the final one.
            if !text.starts_with("SIP/2.0 1") {
                return Some(text);
            }
        }
    }
    None
}

fn request(method: &str, n: u32, local: SocketAddr, ruri: &str) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-ov-{method}-{n}\r\nMax-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag=ov{n}\r\nTo: <{ruri}>\r\nCall-ID: ov-{method}-{n}@{local}\r\nCSeq: 1 {method}\r\n\
         Contact: <sip:probe@{local}>\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn a_flood_beyond_capacity_is_shed_with_503_while_calls_and_health_checks_go_on() -> Result<()> {
    if !privileged("overload") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("ov1", "overload")?;
    let mut sbc = lab.start_sbc(
        "[probe]\ninterval_ms = 0\n[overload]\nqueue_high = 64\nqueue_low = 8\nhold_ms = 1000\nretry_after_secs = 3\n",
    )?;
    let pid = sbc.pid().context("sbc pid")?;
    let a = lab.addrs;
    let sbc_ext: SocketAddr = format!("{}:5060", a.sbc_ext).parse()?;
    let target = sbc_ext.to_string();
    let idle_hwm = vm_hwm_kib(pid)?;
    // The core answers every call (bounded by -m and -timeout).
    let uas = scenario("uas.xml").to_string_lossy().into_owned();
    let uac = scenario("uac.xml").to_string_lossy().into_owned();
    let core_port = core_port();
    let mut callee = spawn_sipp(
        &lab,
        &lab.core,
        "callee",
        &["-sf", &uas, "-t", "u1", "-i", a.core, "-p", &core_port, "-m", "100000", "-timeout", "120s"],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    // A call set up before the flood, hung up (BYE) 15 s later, in the middle of it.
    let long = spawn_sipp(
        &lab,
        &lab.ext,
        "long",
        &["-sf", &uac, "-t", "u1", "-i", a.ext_peer, "-p", "5062", "-s", "1000", &target, "-m", "1", "-d", "15000"],
    )?;
    let t0 = Instant::now();
    while stat(&stats(&lab)?, "state.dialogs") < 1 {
        ensure!(t0.elapsed() < Duration::from_secs(5), "the call before the flood was not set up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (flood_calls, flood_rate) = (FLOOD_CALLS.to_string(), FLOOD_RATE.to_string());
    let mut flood = spawn_sipp(
        &lab,
        &lab.ext,
        "flood",
        &[
            "-sf",
            &uac,
            "-t",
            "u1",
            "-i",
            a.ext_peer,
            "-p",
            "5064",
            "-s",
            "1000",
            &target,
            "-m",
            &flood_calls,
            "-r",
            &flood_rate,
            "-d",
            "0",
            "-timeout",
            "25s",
        ],
    )?;
    // During the flood: an OPTIONS health check every 200 ms must be answered 200, and a new
    // INVITE of ours, sent while the daemon says it is overloaded, must get 503 + Retry-After.
    let probe = lab.ext.enter(|| UdpSocket::bind(SocketAddr::new(a.ext_peer_ip(), 5070)))??;
    probe.set_read_timeout(Some(Duration::from_millis(200)))?;
    let local = probe.local_addr()?;
    let (mut checks, mut answered, mut shed_seen) = (0u32, 0u32, None);
    let mut active_seen = false;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(12) {
        checks += 1;
        let opt = request("OPTIONS", checks, local, &format!("sip:{target}"));
        if ask(&probe, sbc_ext, &opt).is_some_and(|r| r.starts_with("SIP/2.0 200 ")) {
            answered += 1;
        }
        let st = stats(&lab)?;
        if stat(&st, "overload.active") == 1 {
            active_seen = true;
            if shed_seen.is_none() {
                let inv = request("INVITE", checks, local, &format!("sip:ov@{target}"));
                if let Some(r) = ask(&probe, sbc_ext, &inv).filter(|r| r.starts_with("SIP/2.0 503 ")) {
                    shed_seen = Some(r);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let flood_exit = flood.wait(Duration::from_secs(60))?;
    let flood_stats = sipp_stats(&flood.log_text());
    let during = stats(&lab)?;
    let hwm = vm_hwm_kib(pid)?;
    eprintln!(
        "flood {flood_stats:?} (exit {flood_exit}); health checks {answered}/{checks}; VmHWM idle {idle_hwm} kB, \
         peak {hwm} kB; overload.entered {}, overload.shed {}",
        stat(&during, "overload.entered"),
        stat(&during, "overload.shed")
    );
    ensure!(active_seen, "the daemon never entered overload:\n{during}");
    let resp = shed_seen.context("no 503 to a new INVITE while overloaded")?;
    ensure!(resp.contains("\r\nRetry-After: 3\r\n"), "503 without Retry-After: 3:\n{resp}");
    ensure!(stat(&during, "overload.shed") > 0, "nothing shed:\n{during}");
    ensure!(flood_stats.failed > 0, "the flood was not shed at all: {flood_stats:?}");
    ensure!(answered == checks, "health checks answered {answered}/{checks} during the flood");
    // The call from before the flood ended normally: its BYE passed during the flood.
    sipp_ok(long, Duration::from_secs(30), 1)?;
    ensure!(hwm <= RSS_BOUND_KIB, "peak RSS {hwm} kB over the bound {RSS_BOUND_KIB} kB");
    // After the flood: overload ends (hold 1 s, queue drained) and new calls are served.
    let t1 = Instant::now();
    while stat(&stats(&lab)?, "overload.active") == 1 {
        ensure!(t1.elapsed() < Duration::from_secs(10), "still overloaded 10 s after the flood");
        // Overload is re-evaluated as inputs arrive: a health check is one.
        let _ = ask(&probe, sbc_ext, &request("OPTIONS", 100_000, local, &format!("sip:{target}")));
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = spawn_sipp(
        &lab,
        &lab.ext,
        "after",
        &[
            "-sf", &uac, "-t", "u1", "-i", a.ext_peer, "-p", "5066", "-s", "1000", &target, "-m", "20", "-r", "10",
            "-d", "200", "-timeout", "30s",
        ],
    )?;
    sipp_ok(after, Duration::from_secs(40), 20)?;
    let end = stats(&lab)?;
    callee.stop();
    sbc.stop();
    ensure!(stat(&end, "overload.active") == 0, "overloaded at the end:\n{end}");
    Ok(())
}
