//! The lab harness: network namespaces joined by veth pairs ([`netns`]), real peers (sipp,
//! Kamailio) and the SBC started inside them, tcpdump captures of each side, and the leak check
//! that reads them. Everything started is stopped by PID when its guard drops, and every
//! namespace is deleted, even when a test fails.
//!
//! Privileged tests call [`privileged`] first: without root they skip, unless
//! `SBC_REQUIRE_PRIVILEGED=1` (CI), where a skip is a failure.

pub mod baresip;
pub mod calls;
pub mod nat;
pub mod netns;
pub mod pcap;

pub use netns::{Netns, veth};

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Labs are CPU-heavy (sipp, tcpdump, the SBC): one at a time per test binary. (Their namespace
/// names never clash: see [`netns`].)
static LAB_LOCK: Mutex<()> = Mutex::new(());

pub fn lab_lock() -> MutexGuard<'static, ()> {
    LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when privileged lab tests can run here. Without root: a skip message and `false`, or a
/// panic when `SBC_REQUIRE_PRIVILEGED=1`.
pub fn privileged(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let have_ip = Command::new("ip").arg("-V").output().is_ok();
    if root && have_ip {
        return true;
    }
    let why = if !root { "not root" } else { "iproute2 missing" };
    if std::env::var("SBC_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: privileged lab test cannot run ({why}) and SBC_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("SKIPPED {test}: {why} (set SBC_REQUIRE_PRIVILEGED=1 to make this a failure)");
    false
}

/// The workspace root (this crate lives in tests/).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The sbc binary: `SBC_BIN`, else the workspace's debug build (what `just test` builds first).
pub fn sbc_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SBC_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root().join("target"));
    target.join("debug/sbc")
}

pub fn scenario(name: &str) -> PathBuf {
    root().join("tests/peers/scenarios").join(name)
}

/// A child process stopped by PID (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout+stderr to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Proc> {
        let f = std::fs::File::create(&log)?;
        let f2 = f.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc { name: name.into(), child: Some(child), log })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits for exit up to `limit`; kills it when the limit passes.
    pub fn wait(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let Some(child) = self.child.as_mut() else { bail!("{} already reaped", self.name) };
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!("{} did not finish within {limit:?}; killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, up to 3 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; fails when the process exits or `limit` passes.
    pub fn wait_log(&mut self, needle: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while !self.log_text().contains(needle) {
            if !self.running() || Instant::now() > deadline {
                bail!("{}: no {needle:?} in its log within {limit:?}:\n{}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tcpdump capture of one interface inside a namespace.
pub struct Capture {
    proc: Proc,
    pub file: PathBuf,
}

impl Capture {
    pub fn start(ns: &Netns, ifname: &str, file: PathBuf, dir: &Path) -> Result<Capture> {
        let mut c = ns.cmd("tcpdump");
        // -B: a 16 MiB kernel buffer, so a loaded machine (2 cores, builds running) does not make
        // tcpdump drop packets, which `finish` treats as a failed capture.
        c.args(["-i", ifname, "--immediate-mode", "-U", "-n", "-s", "0", "-B", "16384", "-w"]).arg(&file);
        let proc = Proc::spawn(&format!("tcpdump {ifname}"), c, dir.join(format!("tcpdump-{ifname}.log")))?;
        // tcpdump prints "listening on" once the capture is armed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !proc.log_text().contains("listening on") {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Capture { proc, file })
    }

    /// Stops the capture and returns the packets' transport payloads. Fails when tcpdump
    /// captured fewer packets than its filter received: a leak check must see everything.
    pub fn finish(mut self) -> Result<Vec<pcap::Packet>> {
        std::thread::sleep(Duration::from_millis(200));
        self.proc.stop();
        let log = self.proc.log_text();
        let count = |what: &str| -> Option<u64> {
            log.lines().find(|l| l.ends_with(what)).and_then(|l| l.split_whitespace().next()?.parse().ok())
        };
        // A packet the kernel dropped is one the leak check never saw: that fails. A packet or
        // two the filter took in while tcpdump was being stopped (a probe, a retransmission
        // after the traffic under test ended) was never read: tolerated, counted in the error
        // only when more are missing.
        if let Some(dropped) = count("packets dropped by kernel") {
            ensure!(dropped == 0, "{}: the kernel dropped {dropped} packets", self.proc.name);
        }
        if let (Some(captured), Some(received)) = (count("packets captured"), count("packets received by filter")) {
            ensure!(captured + 2 >= received, "{}: captured {captured} of {received} packets", self.proc.name);
        }
        pcap::read(&self.file)
    }
}

/// A scratch directory for a test's logs and captures, kept (under target/lab) for CI artifacts.
pub fn workdir(test: &str) -> Result<PathBuf> {
    let dir = root().join("target/lab").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The standard three-namespace lab (`sbclab-<prefix>-{ext,sbc,core}-<pid>`):
/// `[ext 203.0.113.10] ─ e0/x0 ─ [sbc 203.0.113.1 | 10.99.0.1] ─ i0/c0 ─ [core 10.99.0.10]`,
/// or with other addresses ([`Addrs`], e.g. [`V6_OUTSIDE`]).
pub struct Lab {
    pub ext: Netns,
    pub sbc: Netns,
    pub core: Netns,
    pub dir: PathBuf,
    pub addrs: Addrs,
}

/// The lab's four addresses, each IPv4 or IPv6 (an IPv6 one turns IPv6 on for its interface
/// only, with a /64; an IPv4 one gets a /24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// The peer outside (carrier, phone), on e0.
    pub ext_peer: &'static str,
    /// The SBC's external address (x0) and internal one (i0).
    pub sbc_ext: &'static str,
    pub sbc_int: &'static str,
    /// The core (c0), SIP port [`CORE_PORT`].
    pub core: &'static str,
}

impl Addrs {
    pub fn ext_peer_ip(&self) -> IpAddr {
        ip(self.ext_peer)
    }
    pub fn sbc_ext_ip(&self) -> IpAddr {
        ip(self.sbc_ext)
    }
    pub fn sbc_int_ip(&self) -> IpAddr {
        ip(self.sbc_int)
    }
    pub fn core_ip(&self) -> IpAddr {
        ip(self.core)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// `ip:port`, an IPv6 address in brackets (for configs, sipp targets, URIs).
pub fn hostport(ip: &str, port: u16) -> String {
    if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") }
}

/// The IPv4 lab every test used first.
pub const V4: Addrs = Addrs { ext_peer: EXT_PEER, sbc_ext: SBC_EXT, sbc_int: SBC_INT, core: CORE };

/// IPv6 outside, IPv4 inside: phones and carriers on 2001:db8:1::/64, the core IPv4-only.
pub const V6_OUTSIDE: Addrs =
    Addrs { ext_peer: "2001:db8:1::10", sbc_ext: "2001:db8:1::1", sbc_int: SBC_INT, core: CORE };

/// The reverse: IPv4 outside, an IPv6-only core on a private (ULA) range inside.
pub const V6_INSIDE: Addrs = Addrs { ext_peer: EXT_PEER, sbc_ext: SBC_EXT, sbc_int: "fd00:99::1", core: "fd00:99::10" };

pub const EXT_PEER: &str = "203.0.113.10";
pub const SBC_EXT: &str = "203.0.113.1";
pub const SBC_INT: &str = "10.99.0.1";
pub const CORE: &str = "10.99.0.10";
/// The core's SIP port: distinct from every SBC port, so finding it outside is a leak.
pub const CORE_PORT: u16 = 5070;
/// The host name the core's UAs put in their From, P-Asserted-Identity, Referred-By and
/// Call-IDs (written in the core-side scenarios; sipp's `-cid_str` for the Call-ID).
pub const CORE_HOST: &str = "pbx.core.example.internal";
/// The core's User-Agent (requests) and Server (responses) value, as the scenarios write it.
pub const CORE_UA: &str = "CorePBX 5.6";

impl Lab {
    pub fn new(prefix: &str, test: &str) -> Result<Lab> {
        Lab::with_addrs(prefix, test, V4)
    }

    /// The lab on `addrs`.
    pub fn with_addrs(prefix: &str, test: &str, addrs: Addrs) -> Result<Lab> {
        let dir = workdir(test)?;
        let ext = Netns::new(&format!("{prefix}-ext"))?;
        let sbc = Netns::new(&format!("{prefix}-sbc"))?;
        let core = Netns::new(&format!("{prefix}-core"))?;
        // IPv4 unless a test asks ([`Lab::enable_ipv6`]): then no router solicitation or MLD
        // report lands at a random moment, e.g. while a capture stops.
        for ns in [&ext, &sbc, &core] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        veth(&ext, "e0", &sbc, "x0")?;
        veth(&sbc, "i0", &core, "c0")?;
        for (ns, ifname, addr) in [
            (&ext, "e0", addrs.ext_peer),
            (&sbc, "x0", addrs.sbc_ext),
            (&sbc, "i0", addrs.sbc_int),
            (&core, "c0", addrs.core),
        ] {
            if addr.contains(':') {
                Lab::enable_ipv6(ns, ifname)?;
                ns.addr(ifname, &format!("{addr}/64"))?;
            } else {
                ns.addr(ifname, &format!("{addr}/24"))?;
            }
        }
        Ok(Lab { ext, sbc, core, dir, addrs })
    }

    /// Turns IPv6 on for one interface of the lab (off by default), before adding addresses.
    pub fn enable_ipv6(ns: &Netns, ifname: &str) -> Result<()> {
        ns.sysctl(&format!("net.ipv6.conf.{ifname}.disable_ipv6"), "0")
    }

    /// The admin socket of this lab's SBC.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// Writes the SBC config and starts it; waits until its sockets are bound.
    pub fn start_sbc(&self, extra: &str) -> Result<Proc> {
        self.start_sbc_hiding(true, extra)
    }

    /// As [`Lab::start_sbc`], choosing whether the external side is hidden.
    pub fn start_sbc_hiding(&self, hide_external: bool, extra: &str) -> Result<Proc> {
        let ext = hostport(self.addrs.sbc_ext, 5060);
        let listen = format!("udp = [\"{ext}\"]\ntcp = [\"{ext}\"]");
        self.start_sbc_listening(&listen, hide_external, extra)
    }

    /// As [`Lab::start_sbc`], with the internal side hidden too: what reaches the core carries
    /// masked Call-IDs and tags, none of the outside's (a phone's Call-ID often holds its
    /// private address).
    pub fn start_sbc_hiding_both(&self, extra: &str) -> Result<Proc> {
        let ext = hostport(self.addrs.sbc_ext, 5060);
        let listen = format!("udp = [\"{ext}\"]\ntcp = [\"{ext}\"]");
        self.start_sbc_sides(&listen, true, true, extra)
    }

    /// As [`Lab::start_sbc`], with the external side's `udp`/`tcp` lines given.
    pub fn start_sbc_listening(&self, external_listen: &str, hide_external: bool, extra: &str) -> Result<Proc> {
        self.start_sbc_sides(external_listen, hide_external, false, extra)
    }

    fn start_sbc_sides(
        &self,
        external_listen: &str,
        hide_external: bool,
        hide_internal: bool,
        extra: &str,
    ) -> Result<Proc> {
        let (int, core) = (hostport(self.addrs.sbc_int, 5060), hostport(self.addrs.core, CORE_PORT));
        let cfg = format!(
            r#"[external]
{external_listen}
hide_topology = {hide_external}
[internal]
udp = ["{int}"]
tcp = ["{int}"]
hide_topology = {hide_internal}
[[core]]
address = "{core}"
transport = "udp"
[log]
level = "info"
[admin]
socket = "{admin}"
{extra}
{guard}
"#,
            admin = self.admin_socket().display(),
            // The guard's per-source rate limits would refuse the load the other labs make from
            // one address: it is off unless a test configures it (tests/e2e/guard.rs).
            guard = if extra.contains("[guard]") { "" } else { "[guard]\nenabled = false\n" },
        );
        let path = self.dir.join("sbc.toml");
        std::fs::File::create(&path)?.write_all(cfg.as_bytes())?;
        let mut c = self.sbc.cmd(&sbc_bin().to_string_lossy());
        c.arg("run").arg("-c").arg(&path);
        let mut p = Proc::spawn("sbc", c, self.dir.join("sbc.log"))?;
        p.wait_log("sbc running", Duration::from_secs(5)).context("sbc did not start")?;
        Ok(p)
    }
}

/// Sends `count` UDP datagrams from `src` to `dst` inside `ns` (python3's socket module), at
/// most `rate` per second. Bounded in count and time.
pub fn send_udp(ns: &Netns, src: &str, dst: std::net::SocketAddr, payload: &str, count: u32, rate: u32) -> Result<()> {
    let fam = if dst.is_ipv6() { "AF_INET6" } else { "AF_INET" };
    let script = format!(
        "import socket,time\ns=socket.socket(socket.{fam},socket.SOCK_DGRAM)\ns.bind(({src:?},0))\n\
         p={payload:?}.encode()\nfor i in range({count}):\n  s.sendto(p,({ip:?},{port}))\n  time.sleep({gap})\n",
        ip = dst.ip().to_string(),
        port = dst.port(),
        gap = 1.0 / f64::from(rate.max(1)),
    );
    let out = ns.cmd("python3").args(["-c", &script]).output()?;
    ensure!(out.status.success(), "python sender failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Tries `count` TCP connections from `src` to `dst` inside `ns`, each with a 1 s timeout;
/// returns how many connected.
pub fn try_tcp(ns: &Netns, src: &str, dst: std::net::SocketAddr, count: u32) -> Result<u32> {
    let fam = if dst.is_ipv6() { "AF_INET6" } else { "AF_INET" };
    let script = format!(
        "import socket\nok=0\nfor i in range({count}):\n  s=socket.socket(socket.{fam},socket.SOCK_STREAM)\n  s.settimeout(1)\n  \
         s.bind(({src:?},0))\n  try:\n    s.connect(({ip:?},{port})); ok+=1\n  except Exception:\n    pass\n  s.close()\nprint(ok)\n",
        ip = dst.ip().to_string(),
        port = dst.port(),
    );
    let out = ns.cmd("python3").args(["-c", &script]).output()?;
    ensure!(out.status.success(), "python connector failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// Runs `sbc <args>` (the CLI, e.g. `stats --socket ...`) and returns (success, stdout+stderr).
pub fn sbc_cli(args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(sbc_bin()).args(args).output()?;
    Ok((
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    ))
}

/// A counter from `sbc stats` output (`name value` lines).
pub fn stat(text: &str, name: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

/// A sipp run: its final statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SippStats {
    pub successful: u64,
    pub failed: u64,
}

/// Reads the cumulative "Successful call" / "Failed call" counters of sipp's final screen.
pub fn sipp_stats(log: &str) -> SippStats {
    let last = |label: &str| -> u64 {
        log.lines()
            .rev()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split('|').nth(2))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    SippStats { successful: last("Successful call"), failed: last("Failed call") }
}

/// `sipp` with the lab's defaults (no stdin, bounded by -timeout, errors traced into `dir`).
pub fn sipp(ns: &Netns, dir: &Path, args: &[&str]) -> Command {
    let mut c = ns.cmd("sipp");
    c.current_dir(dir);
    c.args(["-nostdin", "-timeout_error", "-trace_err", "-trace_screen"]);
    c.args(args);
    c
}

/// Every textual form of `ip` a SIP message may carry: the canonical one and, for IPv6, the
/// fully written one (`2001:0db8:0001:0000:...`).
pub fn address_forms(ip: IpAddr) -> Vec<String> {
    let mut out = vec![ip.to_string()];
    if let IpAddr::V6(v6) = ip {
        out.push(v6.segments().iter().map(|s| format!("{s:04x}")).collect::<Vec<_>>().join(":"));
    }
    out
}

/// The other direction of the leak check, for labs where the sides speak different families:
/// every string of the outside that must not appear on the internal side: every form of each
/// of `ips` (the peers' addresses outside, the SBC's external ones) and the `prefixes` of the
/// outside's networks as text (e.g. `2001:db8:1:`, so that no address of it at all crosses).
/// Search the internal capture for them with [`leaks`].
pub fn outside_secrets(ips: &[IpAddr], prefixes: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = ips.iter().flat_map(|ip| address_forms(*ip)).collect();
    out.extend(prefixes.iter().map(|p| p.to_string()));
    out.sort();
    out.dedup();
    out
}

/// Every string that must not appear on the external side: the core's addresses and port,
/// and what the core created (read from the internal capture, [`pcap::Sip::core_identifiers`]):
/// branches, tags, Call-IDs, the host names in its From, Call-ID, P-Asserted-Identity and
/// Referred-By, its Server and User-Agent values.
pub fn core_secrets(internal: &[pcap::Packet], core_ip: IpAddr, core_names: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = address_forms(core_ip);
    out.push(format!(":{CORE_PORT}"));
    out.extend(core_names.iter().map(|s| s.to_string()));
    for p in internal.iter().filter(|p| p.src.ip() == core_ip) {
        for msg in pcap::sip_messages(&p.payload) {
            out.extend(msg.core_identifiers());
        }
    }
    out.retain(|s| s.len() >= 6);
    out.sort();
    out.dedup();
    out
}

/// One secret found in a capture (the external one for the core's, the internal one for the
/// outside's).
#[derive(Debug, Clone)]
pub struct Leak {
    pub secret: String,
    /// Which packet, and its text.
    pub at: String,
}

/// The inward leak check: every secret found in what the SBC (`sbc_int`) sent to the core in
/// the internal capture, except in the header fields a response copies from the core's own
/// request (RFC 3261 §8.2.6.2: Via, From, To, Call-ID, CSeq), which the core wrote itself
/// (e.g. the Request-URI and To of its call to an outside address).
pub fn inside_leaks(internal: &[pcap::Packet], sbc_int: IpAddr, secrets: &[String]) -> Vec<Leak> {
    const COPIED: &[&str] = &["via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"];
    let mut found = Vec::new();
    for (i, p) in internal.iter().enumerate().filter(|(_, p)| p.src.ip() == sbc_int) {
        for msg in pcap::sip_messages(&p.payload) {
            let text = String::from_utf8_lossy(&msg.0).into_owned();
            let response = text.starts_with("SIP/2.0 ");
            for line in text.lines() {
                let name = line.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
                if response && COPIED.contains(&name.as_str()) {
                    continue;
                }
                for s in secrets.iter().filter(|s| line.contains(s.as_str())) {
                    let at = format!("packet {i} ({} → {}) contains {s:?} in {line:?}:\n{text}", p.src, p.dst);
                    found.push(Leak { secret: s.clone(), at });
                }
            }
        }
    }
    found
}

/// The SDP half of the leak check: every media port (`m=`, `a=rtcp`) of the SDP the core
/// (`core_ip`) sent on the internal capture found in an SDP the SBC (`sbc_ip`) sent on the
/// external one. (The core's addresses, its `o=` and `s=` are among [`core_secrets`].)
pub fn sdp_port_leaks(
    internal: &[pcap::Packet],
    core_ip: IpAddr,
    external: &[pcap::Packet],
    sbc_ip: IpAddr,
) -> Vec<Leak> {
    let core: std::collections::BTreeSet<u16> =
        pcap::sdp_bodies(internal, core_ip).iter().flat_map(|b| pcap::sdp_ports(b)).collect();
    let mut found = Vec::new();
    for body in pcap::sdp_bodies(external, sbc_ip) {
        for port in pcap::sdp_ports(&body).into_iter().filter(|p| core.contains(p)) {
            found.push(Leak {
                secret: format!("the core's media port {port}"),
                at: format!("SDP sent outside:\n{body}"),
            });
        }
    }
    found
}

/// Every secret found in a capture, with where.
pub fn leaks(capture: &[pcap::Packet], secrets: &[String]) -> Vec<Leak> {
    let mut found = Vec::new();
    for (i, p) in capture.iter().enumerate() {
        for s in secrets {
            if p.payload.windows(s.len()).any(|w| w == s.as_bytes()) {
                let text = String::from_utf8_lossy(&p.payload);
                let at = format!("packet {i} ({} → {}) contains {s:?}:\n{text}", p.src, p.dst);
                found.push(Leak { secret: s.clone(), at });
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_core(text: &str) -> pcap::Packet {
        pcap::Packet {
            ts: Duration::ZERO,
            src: format!("{CORE}:{CORE_PORT}").parse().unwrap(),
            dst: format!("{SBC_INT}:5060").parse().unwrap(),
            l4: pcap::L4::Udp,
            payload: text.replace('\n', "\r\n").into_bytes(),
        }
    }

    #[test]
    fn core_secrets_hold_the_hosts_and_product_names_the_core_sends() {
        let invite = "INVITE sip:bob@203.0.113.10 SIP/2.0\nVia: SIP/2.0/UDP 10.99.0.10:5070;branch=z9hG4bK-abc123\n\
                      From: \"Caller\" <sip:caller@from.pbx.example>;tag=tag-from-1\nTo: <sip:bob@203.0.113.10>\n\
                      Call-ID: 1-2@callid.pbx.example\nCSeq: 1 INVITE\n\
                      P-Asserted-Identity: <sip:caller@pai.pbx.example>, <tel:+15551234>\n\
                      User-Agent: Agent-Of-Core 1\nContent-Length: 0\n\n";
        let refer = "REFER sip:x@10.99.0.1 SIP/2.0\nVia: SIP/2.0/UDP 10.99.0.10:5070;branch=z9hG4bK-def456\n\
                     From: <sip:bob@203.0.113.1>;tag=tag-from-2\nTo: <sip:a@203.0.113.1>;tag=tag-to-2\n\
                     Call-ID: outside-made@203.0.113.10\nCSeq: 1 REFER\nReferred-By: <sip:bob@refer.pbx.example>\n\
                     Content-Length: 0\n\n";
        let ok = "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 10.99.0.1:5060;branch=z9hG4bK-x\nFrom: <sip:a@b.example>;tag=t1\n\
                  To: <sip:c@d.example>;tag=to-tag-3\nCall-ID: x@y\nCSeq: 1 INVITE\nServer: Server-Of-Core 2\n\
                  Content-Length: 0\n\n";
        let secrets = core_secrets(&[from_core(invite), from_core(refer), from_core(ok)], CORE.parse().unwrap(), &[]);
        for want in [
            "from.pbx.example",
            "callid.pbx.example",
            "1-2@callid.pbx.example",
            "pai.pbx.example",
            "refer.pbx.example",
            "Agent-Of-Core 1",
            "Server-Of-Core 2",
            "tag-from-1",
            "to-tag-3",
        ] {
            assert!(secrets.iter().any(|s| s == want), "{want:?} missing from {secrets:?}");
        }
        // An in-dialog request's From and Call-ID were made outside (the SBC's host, the
        // caller's Call-ID): they are not the core's, and finding them outside is no leak.
        for not in ["203.0.113.1", "203.0.113.10", "outside-made@203.0.113.10"] {
            assert!(!secrets.iter().any(|s| s == not), "{not:?} wrongly in {secrets:?}");
        }
    }
}
