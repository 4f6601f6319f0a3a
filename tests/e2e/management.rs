//! The management listener and the service-manager protocol, from outside the running daemon:
//!
//! * started with `NOTIFY_SOCKET` (a fake systemd: a unix datagram socket in the lab dir) and
//!   `WATCHDOG_USEC`, the daemon sends `READY=1` only once it answers SIP, then `WATCHDOG=1`
//!   at least every half period, and `STOPPING=1` on SIGTERM;
//! * `GET /metrics` on `[management] listen` (inside the SBC's namespace, off the SIP sides) is
//!   the Prometheus text format, accepted by the reference parser (`prometheus_client`, Debian's
//!   python3-prometheus-client), and its SIP counters follow the traffic sent;
//! * under a UDP flood of the external SIP port (bounded: 4 s, at most 400 000 datagrams),
//!   `/health` keeps answering 200 and the watchdog pings keep their period.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sbc_lab::{CORE, CORE_PORT, EXT_PEER, Lab, Proc, SBC_EXT, SBC_INT, lab_lock, privileged, sbc_bin};

const MGMT: &str = "127.0.0.1:9090";
/// WATCHDOG_USEC given to the daemon: it must ping at least every 300 ms.
const WATCHDOG_USEC: u64 = 600_000;

fn start(lab: &Lab, notify: &std::path::Path) -> Result<Proc> {
    let cfg = format!(
        "[external]\nudp = [\"{SBC_EXT}:5060\"]\nhide_topology = true\n[internal]\nudp = [\"{SBC_INT}:5060\"]\n\
         [[core]]\naddress = \"{CORE}:{CORE_PORT}\"\ntransport = \"udp\"\n[probe]\ninterval_ms = 0\n\
         [admin]\nsocket = \"{admin}\"\n[guard]\nenabled = false\n[management]\nlisten = \"{MGMT}\"\n",
        admin = lab.admin_socket().display()
    );
    let path = lab.dir.join("sbc.toml");
    std::fs::write(&path, cfg)?;
    let mut c = lab.sbc.cmd(&sbc_bin().to_string_lossy());
    c.arg("run").arg("-c").arg(&path).env("NOTIFY_SOCKET", notify).env("WATCHDOG_USEC", WATCHDOG_USEC.to_string());
    Proc::spawn("sbc", c, lab.dir.join("sbc.log"))
}

/// One HTTP/1.1 GET inside the SBC's namespace: (status line, body), and how long it took.
fn get(lab: &Lab, path: &str) -> Result<(String, String, Duration)> {
    let t = Instant::now();
    let mut s = lab.sbc.enter(|| TcpStream::connect_timeout(&MGMT.parse().unwrap(), Duration::from_secs(2)))??;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: sbc\r\n\r\n").as_bytes())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no blank line after the head")?;
    let status = head.lines().next().unwrap_or_default().to_string();
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).context("no Content-Length")?.trim().parse()?;
    ensure!(body.len() == len, "Content-Length {len}, body {} bytes", body.len());
    Ok((status, body.to_string(), t.elapsed()))
}

/// A sample's value from the page (`name value` or `name{labels} value`).
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The page through prometheus_client's parser: "family type" per line, or the parser's error.
fn reference_parse(page: &str) -> Result<Vec<String>> {
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as parse\n\
                  for f in parse(sys.stdin.read()):\n  print(f.name, f.type, len(f.samples))\n";
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("/usr/bin/python3 (python3-prometheus-client, .ci/install-deps)")?;
    child.stdin.take().context("stdin")?.write_all(page.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "prometheus_client refused the page: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
}

fn options(n: u32) -> String {
    format!(
        "OPTIONS sip:{SBC_EXT}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {EXT_PEER}:5099;branch=z9hG4bK-mg{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:mon@example.net>;tag=m{n}\r\nTo: <sip:{SBC_EXT}>\r\nCall-ID: mg{n}@example.net\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Every notification that arrived, with when.
fn drain(sock: &UnixDatagram, into: &mut Vec<(Instant, String)>) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = sock.recv(&mut buf) {
        into.push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
    }
}

#[test]
fn management_metrics_parse_health_holds_under_flood_and_systemd_hears_ready_and_watchdog() -> Result<()> {
    if !privileged("management_lab") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("apm", "management_lab")?;
    let notify_path = lab.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut sbc = start(&lab, &notify_path)?;
    let sip: SocketAddr = format!("{SBC_EXT}:5060").parse()?;
    let peer = lab.ext.enter(|| UdpSocket::bind((EXT_PEER, 5099)))??;
    peer.set_read_timeout(Some(Duration::from_secs(2)))?;

    // READY=1 (with a status line) once the daemon is bound: a SIP OPTIONS sent right after
    // it is answered 200.
    let mut notes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !notes.iter().any(|(_, m): &(Instant, String)| m.starts_with("READY=1")) {
        ensure!(sbc.running() && Instant::now() < deadline, "no READY=1 within 10 s:\n{}", sbc.log_text());
        drain(&notify, &mut notes);
    }
    let ready = notes.iter().find(|(_, m)| m.starts_with("READY=1")).unwrap().1.clone();
    ensure!(ready.contains("\nSTATUS=serving"), "{ready:?}");
    peer.send_to(options(0).as_bytes(), sip)?;
    let mut buf = [0u8; 4096];
    let n = peer.recv(&mut buf).context("no answer to OPTIONS right after READY=1")?;
    ensure!(buf[..n].starts_with(b"SIP/2.0 200 "), "{}", String::from_utf8_lossy(&buf[..n]));
    for i in 1..=4 {
        peer.send_to(options(i).as_bytes(), sip)?;
        peer.recv(&mut buf).context("no answer to OPTIONS")?;
    }

    // /health and /metrics; the page is what the reference parser accepts, and counts the 5.
    let (status, body, _) = get(&lab, "/health")?;
    ensure!(status == "HTTP/1.1 200 OK" && body.starts_with("ok: engine loop beat"), "{status} {body}");
    let (status, page, _) = get(&lab, "/metrics")?;
    ensure!(status == "HTTP/1.1 200 OK", "{status}");
    std::fs::write(lab.dir.join("metrics.txt"), &page)?;
    let families = reference_parse(&page)?;
    for want in [
        "sbc_sip_requests_in counter 1",
        "sbc_sip_local_replies counter 1",
        "sbc_state_dialogs gauge 1",
        "sbc_state_server_transactions gauge 1",
        "sbc_engine_up gauge 1",
        "process_resident_memory_bytes gauge 1",
        "process_cpu_seconds counter 1",
    ] {
        ensure!(families.iter().any(|f| f == want), "parser did not report {want:?}: {families:#?}");
    }
    ensure!(families.len() >= 30, "only {} families: {families:#?}", families.len());
    ensure!(sample(&page, "sbc_sip_requests_in_total") == Some(5.0), "{page}");
    ensure!(sample(&page, "sbc_sip_local_replies_total") == Some(5.0), "{page}");
    let rss = sample(&page, "process_resident_memory_bytes").context("no RSS")?;
    ensure!(rss > 1e6 && rss < 1e9, "RSS {rss}");

    // A flood of the external SIP port from the outside; meanwhile /health from inside.
    notes.clear();
    drain(&notify, &mut Vec::new());
    let flood_for = Duration::from_secs(4);
    let flooder = {
        let sock = lab.ext.enter(|| UdpSocket::bind((EXT_PEER, 0)))??;
        std::thread::spawn(move || -> u64 {
            let end = Instant::now() + flood_for;
            let mut sent = 0u64;
            while Instant::now() < end && sent < 400_000 {
                let msg = options(1000 + (sent % 50_000) as u32);
                if sock.send_to(msg.as_bytes(), sip).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    };
    let mut worst = Duration::ZERO;
    let mut probes = 0;
    let flood_end = Instant::now() + flood_for;
    while Instant::now() < flood_end {
        let (status, body, took) = get(&lab, "/health")?;
        ensure!(status == "HTTP/1.1 200 OK", "under flood: {status} {body}");
        worst = worst.max(took);
        probes += 1;
        drain(&notify, &mut notes);
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = flooder.join().map_err(|_| anyhow::anyhow!("flooder panicked"))?;
    drain(&notify, &mut notes);
    let pings: Vec<Instant> = notes.iter().filter(|(_, m)| m == "WATCHDOG=1").map(|(t, _)| *t).collect();
    let gap = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(Duration::MAX);
    eprintln!(
        "flood: {sent} datagrams in {flood_for:?}; /health {probes} probes, slowest {worst:?}; {} watchdog pings, widest gap {gap:?}",
        pings.len()
    );
    ensure!(sent > 10_000, "the flood did not flood: {sent} datagrams");
    ensure!(worst < Duration::from_secs(1), "/health took {worst:?} under flood");
    ensure!(pings.len() >= 8, "only {} WATCHDOG=1 in {flood_for:?} of flood (every 300 ms expected)", pings.len());
    ensure!(gap < Duration::from_micros(WATCHDOG_USEC), "a {gap:?} gap between pings under flood");
    let (_, page, _) = get(&lab, "/metrics")?;
    ensure!(sample(&page, "sbc_sip_requests_in_total").unwrap_or(0.0) > 1000.0, "the engine saw the flood:\n{page}");

    // SIGTERM: STOPPING=1.
    sbc.stop();
    drain(&notify, &mut notes);
    if !notes.iter().any(|(_, m)| m.starts_with("STOPPING=1")) {
        bail!("no STOPPING=1 after SIGTERM: {notes:?}");
    }
    Ok(())
}
