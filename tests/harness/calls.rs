//! Call runs between two sipp peers across the SBC, and the two-sided capture with its leak
//! report: shared by the lab tests and `just demo`.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::pcap::Packet;
use crate::{
    CORE, CORE_HOST, CORE_PORT, Capture, Lab, Leak, Netns, Proc, core_secrets, hostport, leaks, scenario,
    sdp_port_leaks, sipp, sipp_stats,
};

pub const CORE_ADDR: &str = CORE;

pub fn core_port() -> String {
    CORE_PORT.to_string()
}

/// What both SBC veths carried while a closure ran.
pub struct Captured {
    pub external: Vec<Packet>,
    pub internal: Vec<Packet>,
    /// The lab's core, whose identifiers the leak check looks for outside.
    pub core: IpAddr,
    /// The SBC's external address: what it sends outside is checked for the core's SDP ports.
    pub sbc_external: IpAddr,
}

/// The leak check's result: the core identifiers it looked for, and where it found any.
pub struct LeakReport {
    pub secrets: Vec<String>,
    pub leaks: Vec<Leak>,
}

impl Captured {
    pub fn leak_report(&self) -> LeakReport {
        let secrets = core_secrets(&self.internal, self.core, &[]);
        let mut leaks = leaks(&self.external, &secrets);
        leaks.extend(sdp_port_leaks(&self.internal, self.core, &self.external, self.sbc_external));
        LeakReport { secrets, leaks }
    }
}

/// Runs `f` with tcpdump on the SBC's external (x0) and internal (i0) veths.
pub fn capture_both<T>(lab: &Lab, f: impl FnOnce() -> T) -> Result<(T, Captured)> {
    let ext = Capture::start(&lab.sbc, "x0", lab.dir.join("external.pcap"), &lab.dir)?;
    let int = Capture::start(&lab.sbc, "i0", lab.dir.join("internal.pcap"), &lab.dir)?;
    let res = f();
    let external = ext.finish()?;
    let internal = int.finish()?;
    Ok((res, Captured { external, internal, core: lab.addrs.core_ip(), sbc_external: lab.addrs.sbc_ext_ip() }))
}

/// Waits for a sipp and requires exactly `want` successful calls and none failed.
pub fn sipp_ok(mut p: Proc, limit: Duration, want: u64) -> Result<()> {
    let st = p.wait(limit)?;
    let log = p.log_text();
    let stats = sipp_stats(&log);
    ensure!(
        st.success() && stats.successful == want && stats.failed == 0,
        "{}: exit {st}, {stats:?}, wanted {want} successful\n{}",
        p.name,
        tail(&log)
    );
    Ok(())
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

pub fn spawn_sipp(lab: &Lab, ns: &Netns, name: &str, args: &[&str]) -> Result<Proc> {
    Proc::spawn(name, sipp(ns, &lab.dir, args), lab.dir.join(format!("{name}.log")))
}

/// sipp's `-cid_str` for a UA of the core: Call-IDs `<call number>-<pid>@pbx.core.example.internal`,
/// as a PBX names them after its host.
pub fn core_call_id() -> String {
    format!("%u-%p@{CORE_HOST}")
}

/// Which way calls cross the SBC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// The caller is outside (203.0.113.10) and calls the SBC's external address; the callee
    /// is the core (10.99.0.10:5070).
    Inbound,
    /// The caller is the core, using the SBC's internal address as outbound proxy (`-rsa`);
    /// the Request-URI names the callee outside (203.0.113.10:5060).
    Outbound,
}

/// One batch of calls between a sipp callee and a sipp caller across the SBC.
#[derive(Debug, Clone, Copy)]
pub struct Calls<'a> {
    pub way: Way,
    /// Scenario files (tests/peers/scenarios).
    pub callee: &'a str,
    pub caller: &'a str,
    /// sipp -t of the caller (the callee is on UDP, as the core target is).
    pub caller_transport: &'a str,
    pub calls: u64,
    pub rate: u32,
}

impl<'a> Calls<'a> {
    pub fn inbound(callee: &'a str, caller: &'a str, calls: u64, rate: u32) -> Self {
        Calls { way: Way::Inbound, callee, caller, caller_transport: "u1", calls, rate }
    }
    pub fn outbound(callee: &'a str, caller: &'a str, calls: u64, rate: u32) -> Self {
        Calls { way: Way::Outbound, callee, caller, caller_transport: "u1", calls, rate }
    }
    pub fn caller_over(self, transport: &'a str) -> Self {
        Calls { caller_transport: transport, ..self }
    }
}

/// Starts the callee, then the caller; returns (caller, callee) still running.
pub fn start_calls(lab: &Lab, c: &Calls<'_>) -> Result<(Proc, Proc)> {
    let n = c.calls.to_string();
    let r = c.rate.to_string();
    let core_port = core_port();
    let a = lab.addrs;
    let ext_target = hostport(a.ext_peer, 5060);
    let sbc_ext = hostport(a.sbc_ext, 5060);
    let rsa = hostport(a.sbc_int, 5060);
    let (callee_ns, callee_ip, callee_port, caller_ns, caller_ip, target) = match c.way {
        Way::Inbound => (&lab.core, a.core, core_port.as_str(), &lab.ext, a.ext_peer, sbc_ext.as_str()),
        Way::Outbound => (&lab.ext, a.ext_peer, "5060", &lab.core, a.core, ext_target.as_str()),
    };
    let callee_sf = scenario(c.callee).to_string_lossy().into_owned();
    let uas = spawn_sipp(
        lab,
        callee_ns,
        "callee",
        &["-sf", &callee_sf, "-t", "u1", "-i", callee_ip, "-p", callee_port, "-m", &n, "-timeout", "120s"],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let caller_sf = scenario(c.caller).to_string_lossy().into_owned();
    let by_key = c.way == Way::Outbound && c.caller.contains("-target");
    let target = if by_key { rsa.as_str() } else { target };
    let mut args = vec![
        "-sf",
        &caller_sf,
        "-t",
        c.caller_transport,
        "-i",
        caller_ip,
        "-p",
        "5062",
        "-s",
        "1000",
        target,
        "-m",
        &n,
        "-r",
        &r,
        "-d",
        "200",
        "-timeout",
        "120s",
    ];
    let cid = core_call_id();
    if c.way == Way::Outbound {
        args.extend_from_slice(&["-cid_str", &cid]);
        // A scenario naming its callee by `[target]` (uac-core-target.xml) sends to the SBC
        // itself: sipp sends only to its own family, and an IPv4 core may call an IPv6 callee.
        if by_key {
            args.extend_from_slice(&["-key", "target", &ext_target]);
        } else {
            args.extend_from_slice(&["-rsa", &rsa]);
        }
    }
    let uac = spawn_sipp(lab, caller_ns, "caller", &args)?;
    Ok((uac, uas))
}

/// Kamailio as the core's registrar (tests/peers/kamailio-core.cfg) on the core's address and
/// port, UDP and TCP. Returns once it answers an OPTIONS: start it before the SBC, whose first
/// probe then finds the core up (a REGISTER while the SBC thinks it down gets the SBC's 503).
pub fn start_kamailio(lab: &Lab) -> Result<Proc> {
    start_kamailio_with(lab, &[])
}

/// As [`start_kamailio`], with the config's optional defines (`-A`, e.g. `WITH_AUTH`).
pub fn start_kamailio_with(lab: &Lab, defines: &[&str]) -> Result<Proc> {
    let run = lab.dir.join("kamailio");
    std::fs::create_dir_all(&run)?;
    let cfg = crate::root().join("tests/peers/kamailio-core.cfg");
    let mut c = lab.core.cmd("kamailio");
    c.arg("-f").arg(&cfg).args(["-DD", "-E", "-m", "64", "-M", "8"]);
    for d in defines {
        c.args(["-A", d]);
    }
    let core = hostport(lab.addrs.core, CORE_PORT);
    c.args(["-l", &format!("udp:{core}"), "-l", &format!("tcp:{core}")]);
    c.arg("-P").arg(run.join("kamailio.pid")).arg("-Y").arg(&run);
    let p = Proc::spawn("kamailio", c, lab.dir.join("kamailio.log"))?;
    wait_answers_options(&lab.core, lab.addrs.core, SocketAddr::new(lab.addrs.core_ip(), CORE_PORT))?;
    Ok(p)
}

/// Sends OPTIONS from `ns` (a socket on `src_ip`) to `target` every 100 ms until any response
/// comes back (5 s at most).
pub fn wait_answers_options(ns: &Netns, src_ip: &str, target: SocketAddr) -> Result<()> {
    let ip: IpAddr = src_ip.parse()?;
    let sock = ns.enter(|| UdpSocket::bind(SocketAddr::new(ip, 0)))??;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let local = sock.local_addr()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    for n in 1.. {
        let options = format!(
            "OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-ready-{n}\r\nMax-Forwards: 70\r\n\
             From: <sip:lab@{local}>;tag=ready\r\nTo: <sip:{target}>\r\nCall-ID: ready-{n}@{local}\r\nCSeq: {n} OPTIONS\r\n\
             Content-Length: 0\r\n\r\n"
        );
        // Refused while nothing listens yet (ICMP): try again.
        let _ = sock.send_to(options.as_bytes(), target);
        if let Ok(len) = sock.recv(&mut buf)
            && buf.get(..len).is_some_and(|b| b.starts_with(b"SIP/2.0 "))
        {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{target} did not answer OPTIONS within 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The phone outside (203.0.113.10:5060, sipp -t `transport`): registers `user` through the
/// SBC, takes one incoming call, un-registers (phone-register-uas.xml + phone-incoming-call.xml).
pub fn spawn_phone(lab: &Lab, transport: &str, user: &str) -> Result<Proc> {
    spawn_phone_with(lab, transport, user, "phone-incoming-call.xml")
}

/// As [`spawn_phone`], the incoming call run by scenario `incoming` (e.g. the `-nosdp` one).
pub fn spawn_phone_with(lab: &Lab, transport: &str, user: &str, incoming: &str) -> Result<Proc> {
    spawn_sipp(
        lab,
        &lab.ext,
        "phone",
        &[
            "-sf",
            &scenario("phone-register-uas.xml").to_string_lossy(),
            "-oocsf",
            &scenario(incoming).to_string_lossy(),
            "-t",
            transport,
            "-i",
            lab.addrs.ext_peer,
            "-p",
            "5060",
            "-s",
            user,
            &hostport(lab.addrs.sbc_ext, 5060),
            "-m",
            "1",
            "-timeout",
            "60s",
        ],
    )
}

/// Runs a batch of calls; every call must succeed on both sides.
pub fn run_calls(lab: &Lab, c: &Calls<'_>) -> Result<()> {
    let (uac, uas) = start_calls(lab, c)?;
    sipp_ok(uac, Duration::from_secs(150), c.calls)?;
    sipp_ok(uas, Duration::from_secs(20), c.calls)?;
    Ok(())
}

/// The core's caller (core-call-user.xml, sipp -t `transport`) calling `user` at the registrar
/// (the lab's core, from its port 5072): Kamailio forwards the call to the SBC's registration
/// Contact, the SBC to the phone.
pub fn spawn_core_caller(lab: &Lab, transport: &str, user: &str) -> Result<Proc> {
    spawn_sipp(
        lab,
        &lab.core,
        "core-caller",
        &[
            "-sf",
            &scenario("core-call-user.xml").to_string_lossy(),
            "-t",
            transport,
            "-i",
            lab.addrs.core,
            "-p",
            "5072",
            "-s",
            user,
            &hostport(lab.addrs.core, CORE_PORT),
            "-m",
            "1",
            "-d",
            "200",
            "-timeout",
            "30s",
            "-cid_str",
            &core_call_id(),
        ],
    )
}
