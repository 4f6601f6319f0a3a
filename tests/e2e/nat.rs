//! NAT traversal with a real NAT: a home network (192.168.1.0/24) behind a router namespace
//! that masquerades with nftables and forgets an idle UDP binding after 20 s (its conntrack UDP
//! timeouts), in front of the SBC and the Kamailio registrar of the standard lab
//! (`sbc_lab::nat`). Captures on both SBC veths and on the home link.
//!
//! - STUN from behind the NAT, on the SIP UDP port and on a `[stun] udp` port, answers the
//!   router's public address and port (the router's own conntrack entry for that flow), never
//!   the private one.
//! - A phone behind the NAT (sipp, and the real softphone baresip) registers through the SBC;
//!   the lab waits past the router's UDP timeout; the core calls it through Kamailio, and the
//!   call must reach the phone and complete. Over TCP the connection keeps its conntrack entry.
//! - Nothing of the home network (192.168.1.x) in any byte on the SBC's internal side.
//! - The negative control: without keepalives the same call after the timeout never reaches
//!   the phone (the router has no binding and answers the SBC's INVITE with an ICMP port
//!   unreachable), proving the lab really NATs and really expires.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sbc_lab::baresip;
use sbc_lab::calls::{sipp_ok, spawn_sipp, start_kamailio};
use sbc_lab::nat::{
    HOME_NET_PREFIX, NAT_PORTS, NatLab, PHONE, ROUTER_PUBLIC, UDP_TIMEOUT_SECS, Where, find_addresses,
    spawn_home_phone, wait_for,
};
use sbc_lab::pcap::{L4, Packet, sdp_bodies, sip_messages};
use sbc_lab::{
    CORE, CORE_PORT, Capture, Proc, SBC_EXT, SBC_INT, lab_lock, privileged, sbc_cli, scenario, sdp_port_leaks,
    sipp_stats, stat,
};
use sbc_media::stun::{BINDING, Class, Limits, Message, Writer};

const STUN_PORT: u16 = 3478;
/// How long past the router's UDP timeout the lab waits before the core calls.
const PAST_TIMEOUT: Duration = Duration::from_secs(UDP_TIMEOUT_SECS + 4);

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])), port)
}

fn sbc_sip() -> SocketAddr {
    addr(SBC_EXT, 5060)
}

/// The SBC's configuration for these labs: probing the core (Kamailio answers OPTIONS), a
/// dedicated STUN port, and `extra`.
fn sbc_extra(extra: &str) -> String {
    format!("[probe]\ninterval_ms = 1000\ntimeout_ms = 1000\n[stun]\nudp = [\"{SBC_EXT}:{STUN_PORT}\"]\n{extra}")
}

fn sbc_stat(nat: &NatLab, name: &str) -> Result<u64> {
    let (ok, text) = sbc_cli(&["stats", "--socket", &nat.lab.admin_socket().to_string_lossy()])?;
    ensure!(ok, "sbc stats failed: {text}");
    Ok(stat(&text, name))
}

// ---------------------------------------------------------------------------------------------
// STUN from behind the NAT

fn binding_request(tid: &[u8; 12]) -> Vec<u8> {
    Writer::new(Class::Request, BINDING, tid).finish_with_fingerprint()
}

/// Sends a Binding request to `to` (3 tries, 500 ms each) and returns its XOR-MAPPED-ADDRESS.
fn stun_mapped(sock: &UdpSocket, to: SocketAddr, tid: &[u8; 12]) -> Result<SocketAddr> {
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        sock.send_to(&binding_request(tid), to)?;
        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        ensure!(from == to, "STUN answer from {from}, asked {to}");
        let m = Message::parse(buf.get(..n).unwrap_or_default(), &Limits::default())
            .map_err(|e| anyhow::anyhow!("answer from {to} does not parse: {e}"))?;
        ensure!(m.class == Class::SuccessResponse && m.method == BINDING, "{to}: not a Binding success: {:?}", m.class);
        ensure!(&m.transaction_id == tid, "{to}: transaction id not echoed");
        return m
            .xor_mapped_address()
            .context("no XOR-MAPPED-ADDRESS")?
            .map_err(|e| anyhow::anyhow!("bad XOR-MAPPED-ADDRESS: {e}"));
    }
    bail!("no STUN answer from {to} in 3 tries")
}

#[test]
fn stun_from_behind_the_nat_returns_the_routers_public_address_and_port() -> Result<()> {
    if !privileged("nat_stun") {
        return Ok(());
    }
    let _g = lab_lock();
    let nat = NatLab::new("snt1", "nat_stun")?;
    let _sbc = nat.lab.start_sbc(&sbc_extra(""))?;
    let ext = Capture::start(&nat.lab.sbc, "x0", nat.dir().join("external.pcap"), nat.dir())?;
    let sock = nat.home.enter(|| UdpSocket::bind((PHONE, 0)))??;
    let local = sock.local_addr()?;
    let mut seen = Vec::new();
    for (i, to) in [sbc_sip(), addr(SBC_EXT, STUN_PORT)].into_iter().enumerate() {
        let mapped = stun_mapped(&sock, to, &[i as u8 + 1; 12])?;
        let entry = nat.mapping(false, local, to)?.with_context(|| format!("no conntrack entry {local} → {to}"))?;
        ensure!(mapped.ip().to_string() == ROUTER_PUBLIC, "{to} mapped {mapped}, not the router's {ROUTER_PUBLIC}");
        ensure!(NAT_PORTS.contains(&mapped.port()), "{to} mapped port {} outside the NAT's range", mapped.port());
        ensure!(mapped == entry.public(), "{to} mapped {mapped}; the router mapped {local} to {}", entry.public());
        ensure!(entry.timeout_secs <= UDP_TIMEOUT_SECS, "the router keeps this binding {}s", entry.timeout_secs);
        seen.push((to, mapped, entry.timeout_secs));
    }
    let external = ext.finish()?;
    let private = find_addresses(&external, HOME_NET_PREFIX);
    ensure!(private.is_empty(), "the home network seen outside the router: {:?}", private.first());
    let answered = sbc_stat(&nat, "stun.answered")?;
    ensure!(answered == 2, "stun.answered {answered}");
    for (to, mapped, left) in seen {
        eprintln!("nat_stun: {local} asked {to}: mapped {mapped} (the router's entry, {left} s left)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Calls from the core to a phone behind the NAT

/// The core calls `user` through Kamailio (sipp core-call-user.xml, one call, 200 ms long).
fn spawn_core_call(nat: &NatLab, user: &str) -> Result<Proc> {
    spawn_core_caller(nat, "core-call-user.xml", user, &[], 200, "20s")
}

/// One call from the core's sipp (`sf`, from CORE:5072 through Kamailio) to `user`, held
/// `hold_ms`; `extra` options go before the user (e.g. `-mp` for a scenario that plays RTP).
fn spawn_core_caller(nat: &NatLab, sf: &str, user: &str, extra: &[&str], hold_ms: u32, timeout: &str) -> Result<Proc> {
    let sf = scenario(sf).to_string_lossy().into_owned();
    let target = format!("{CORE}:{CORE_PORT}");
    let hold = hold_ms.to_string();
    let mut args = vec!["-sf", &sf, "-t", "u1", "-i", CORE, "-p", "5072"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-s", user, &target, "-m", "1", "-d", &hold, "-timeout", timeout]);
    spawn_sipp(&nat.lab, &nat.lab.core, "core-caller", &args)
}

/// Captures on the SBC's two veths and on the home link.
struct Captures {
    external: Capture,
    internal: Capture,
    home: Capture,
}

struct Captured {
    external: Vec<Packet>,
    internal: Vec<Packet>,
    home: Vec<Packet>,
}

impl Captures {
    fn start(nat: &NatLab) -> Result<Captures> {
        Ok(Captures {
            external: Capture::start(&nat.lab.sbc, "x0", nat.dir().join("external.pcap"), nat.dir())?,
            internal: Capture::start(&nat.lab.sbc, "i0", nat.dir().join("internal.pcap"), nat.dir())?,
            home: nat.capture_home()?,
        })
    }

    fn finish(self) -> Result<Captured> {
        Ok(Captured { external: self.external.finish()?, internal: self.internal.finish()?, home: self.home.finish()? })
    }
}

/// The SIP requests `method` in `packets` with their packets.
fn requests<'a>(packets: &'a [Packet], method: &str) -> Vec<&'a Packet> {
    packets.iter().filter(|p| sip_messages(&p.payload).iter().any(|m| m.method().as_deref() == Some(method))).collect()
}

/// What a phone's registration left: the router's mapping for its flow, when it registered.
struct Registered {
    public: SocketAddr,
    at: Instant,
}

/// Waits for the SBC to hold one registration, then reads the router's entry for the phone's
/// flow: the public side must be the router's address and a mapped port; a UDP entry must live
/// no longer than the shortened timeout.
fn registered(nat: &NatLab, tcp: bool, phone: IpAddr) -> Result<Registered> {
    wait_for("the SBC holding the phone's registration", Duration::from_secs(10), || {
        Ok(sbc_stat(nat, "state.registrations")? == 1)
    })?;
    let at = Instant::now();
    let entry = nat.mapping_from(tcp, phone, sbc_sip())?.context("the router has no entry for the phone's flow")?;
    ensure!(entry.public().ip().to_string() == ROUTER_PUBLIC, "the phone's flow is mapped to {}", entry.public());
    ensure!(NAT_PORTS.contains(&entry.public().port()), "the phone's flow kept port {}", entry.public().port());
    if !tcp {
        ensure!(
            entry.timeout_secs <= UDP_TIMEOUT_SECS,
            "the router keeps the phone's UDP binding {}s",
            entry.timeout_secs
        );
    }
    eprintln!(
        "registered: {} is {} outside ({}, {} s left)",
        entry.orig_src,
        entry.public(),
        entry.proto,
        entry.timeout_secs
    );
    Ok(Registered { public: entry.public(), at })
}

/// Sleeps until `PAST_TIMEOUT` after `since`.
fn wait_past_timeout(since: Instant) {
    std::thread::sleep(PAST_TIMEOUT.saturating_sub(since.elapsed()));
}

/// The checks every call test makes on the captures: the phone was seen outside only as the
/// router's public address; nothing of the home network on the internal side (SDP lines with
/// a home address are returned for the caller's check and report); and how long the phone's flow carried no request of the
/// phone before the core's INVITE was sent to it.
struct Observed {
    /// Requests the phone sent (REGISTERs) before the INVITE: the gap from the last one to the
    /// INVITE on the external capture.
    phone_quiet: Duration,
    /// Lines of SDP bodies on the internal side with a home address.
    sdp_private: Vec<String>,
    /// SBC → phone requests that are not the call (OPTIONS keepalives).
    options_to_phone: usize,
    /// Of those, the ones sent at least 1 s before the capture ended that got no response
    /// from the phone's public address.
    options_unanswered: usize,
    /// Time between consecutive keepalives.
    ping_gaps: Vec<Duration>,
}

/// A header's value in a captured message (first occurrence, full name).
fn header(msg: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(msg);
    text.lines().skip(1).take_while(|l| !l.is_empty()).find_map(|l| {
        l.split_once(':').filter(|(n, _)| n.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
    })
}

/// The OPTIONS the SBC sent to `public` (time, Call-ID), and the Call-IDs `public` answered.
fn keepalives(external: &[Packet], public: SocketAddr) -> (Vec<(Duration, String)>, Vec<String>) {
    let mut sent = Vec::new();
    let mut answered = Vec::new();
    for p in external {
        for m in sip_messages(&p.payload) {
            let Some(call_id) = header(&m.0, "Call-ID") else { continue };
            if p.dst == public && m.method().as_deref() == Some("OPTIONS") {
                sent.push((p.ts, call_id));
            } else if p.src == public
                && m.status().is_some()
                && header(&m.0, "CSeq").is_some_and(|c| c.ends_with("OPTIONS"))
            {
                answered.push(call_id);
            }
        }
    }
    (sent, answered)
}

fn observe(cap: &Captured, public: SocketAddr) -> Result<Observed> {
    let outside = find_addresses(&cap.external, HOME_NET_PREFIX);
    let ips: Vec<_> = outside.iter().filter(|f| f.at == Where::Address).collect();
    ensure!(ips.is_empty(), "a home address in an IP header outside the router: {}", ips[0].text);
    let invites: Vec<_> = requests(&cap.external, "INVITE").into_iter().filter(|p| p.dst == public).collect();
    let first_invite = invites.first().context("no INVITE to the phone's public address on the external capture")?;
    let last_register = requests(&cap.external, "REGISTER")
        .into_iter()
        .filter(|p| p.src == public && p.ts <= first_invite.ts)
        .map(|p| p.ts)
        .max()
        .context("no REGISTER from the phone's public address on the external capture")?;
    let inside = find_addresses(&cap.internal, HOME_NET_PREFIX);
    let mut sdp_private = Vec::new();
    for f in &inside {
        match &f.at {
            Where::Sdp(line) => sdp_private.push(line.clone()),
            other => bail!("the home network on the internal side ({other:?}) in packet {}:\n{}", f.packet, f.text),
        }
    }
    let (pings, answers) = keepalives(&cap.external, public);
    let end = cap.external.last().map_or(Duration::ZERO, |p| p.ts);
    let options_unanswered =
        pings.iter().filter(|(ts, id)| *ts + Duration::from_secs(1) < end && !answers.contains(id)).count();
    let ping_gaps = pings.windows(2).map(|w| w[1].0.saturating_sub(w[0].0)).collect();
    Ok(Observed {
        phone_quiet: first_invite.ts.saturating_sub(last_register),
        sdp_private,
        options_to_phone: pings.len(),
        options_unanswered,
        ping_gaps,
    })
}

/// The relay in these labs: the core's calls carry SDP, so the SBC anchors their media.
macro_rules! media_section {
    () => {
        "[media]\nenabled = true\nports = \"30000-30099\"\nworkers = 1\n"
    };
}

/// The SBC's `[nat]` settings for the calls that must arrive: an OPTIONS ping to each phone
/// behind NAT over UDP every 10 s, half the router's UDP timeout.
const KEEPALIVE_ON: &str = concat!("[nat]\nping_interval_secs = 10\n", media_section!());
/// The negative control's: no pings.
const KEEPALIVE_OFF: &str = concat!("[nat]\nping_interval_secs = 0\n", media_section!());
/// For baresip, which keeps its private address in `o=` and the session's `c=`: the SBC
/// anchors the media, so the SDP the core gets names only the SBC's relay (every config here
/// does: the core's call carries SDP).
const KEEPALIVE_ON_MEDIA: &str = KEEPALIVE_ON;

/// What a call test expects of the core's call after the router's UDP timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// It reaches the phone and completes.
    Arrives,
    /// It never reaches the phone (the negative control).
    Lost,
}

/// Which phone is behind the NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phone {
    /// sipp: phone-register-uas.xml + phone-incoming-call.xml, user `alice`.
    Sipp,
    /// baresip, user `carol`, asking the SBC's STUN port for its media address.
    Baresip,
}

impl Phone {
    fn user(self) -> &'static str {
        match self {
            Phone::Sipp => "alice",
            Phone::Baresip => "carol",
        }
    }

    fn spawn(self, nat: &NatLab, transport: &str) -> Result<Proc> {
        match self {
            Phone::Sipp => spawn_home_phone(nat, transport, self.user()),
            Phone::Baresip => {
                let account = baresip::Account {
                    user: self.user(),
                    registrar: sbc_sip(),
                    transport: if transport == "t1" { "tcp" } else { "udp" },
                    listen: addr(PHONE, 5060),
                    regint_secs: 300,
                    stun: Some(addr(SBC_EXT, STUN_PORT)),
                    record: None,
                };
                baresip::spawn(&nat.home, &nat.dir().join("baresip"), &account, Duration::from_secs(90))
            }
        }
    }

    /// After the core's call completed: the phone's own account of it.
    fn finish(self, mut phone: Proc) -> Result<()> {
        match self {
            Phone::Sipp => sipp_ok(phone, Duration::from_secs(20), 1),
            Phone::Baresip => {
                phone.wait_log(BARESIP_CALL_CLOSED, Duration::from_secs(5))?;
                phone.stop();
                let log = phone.log_text();
                ensure!(log.contains(BARESIP_CALL_ANSWERED), "baresip never answered:\n{log}");
                Ok(())
            }
        }
    }
}

/// What baresip logs when it answers a call, and when the caller's BYE ends it.
const BARESIP_CALL_ANSWERED: &str = "Call established";
const BARESIP_CALL_CLOSED: &str = "session closed";

/// A phone behind the NAT registers over `transport`; once past the router's UDP timeout the
/// core calls it through Kamailio. Checks what `expect` says on the phone, the core and the
/// three captures.
fn called_after_timeout(
    phone: Phone,
    prefix: &str,
    test: &str,
    transport: &str,
    nat_cfg: &str,
    expect: Expect,
) -> Result<()> {
    let _g = lab_lock();
    let started = Instant::now();
    let nat = NatLab::new(prefix, test)?;
    let _k = start_kamailio(&nat.lab)?;
    let _sbc = nat.lab.start_sbc_hiding_both(&sbc_extra(nat_cfg))?;
    let tcp = transport == "t1";
    let caps = Captures::start(&nat)?;
    let run = || -> Result<(Registered, bool, String)> {
        let mut phone_proc = phone.spawn(&nat, transport)?;
        let phone_ip = PHONE.parse()?;
        let reg = registered(&nat, tcp, phone_ip)?;
        wait_past_timeout(reg.at);
        let alive = nat.mapping_from(tcp, phone_ip, sbc_sip())?.is_some();
        let mut core = spawn_core_call(&nat, phone.user())?;
        match expect {
            Expect::Arrives => {
                sipp_ok(core, Duration::from_secs(30), 1)
                    .with_context(|| format!("the router's binding for the phone alive at the call: {alive}"))?;
                phone.finish(phone_proc)?;
                Ok((reg, alive, String::new()))
            }
            Expect::Lost => {
                let _ = core.wait(Duration::from_secs(30))?;
                phone_proc.stop();
                Ok((reg, alive, core.log_text()))
            }
        }
    };
    let res = run();
    let cap = caps.finish()?;
    let (reg, alive, core_log) = res?;
    let seen = observe(&cap, reg.public)?;
    ensure!(
        seen.phone_quiet > Duration::from_secs(UDP_TIMEOUT_SECS),
        "the phone's last REGISTER was only {:?} before the INVITE",
        seen.phone_quiet
    );
    // sipp writes a public address in its SDP (`-set sdp_ip`); baresip keeps its private one in
    // `o=` and the session's `c=`, which the SBC rewrites when it anchors the media.
    ensure!(seen.sdp_private.is_empty(), "home addresses in SDP on the internal side: {:?}", seen.sdp_private);
    // And nothing of the core's SDP outside: its address (the core's SDP names it) and ports.
    no_core_sdp_outside(&cap)?;
    let home_invites = requests(&cap.home, "INVITE").len();
    match expect {
        Expect::Arrives => {
            ensure!(home_invites > 0, "no INVITE on the home link");
            if !tcp {
                ensure!(alive, "the router's binding for the phone expired: nothing kept it open");
                ensure!(seen.options_to_phone > 0, "no OPTIONS keepalive to the phone's public address");
                ensure!(seen.options_unanswered == 0, "{} keepalives unanswered", seen.options_unanswered);
            }
        }
        Expect::Lost => {
            ensure!(!alive, "the router still had the phone's binding {PAST_TIMEOUT:?} after the registration");
            ensure!(seen.options_to_phone == 0, "{} OPTIONS to the phone with keepalives off", seen.options_to_phone);
            ensure!(home_invites == 0, "{home_invites} INVITEs reached the home link");
            let stats = sipp_stats(&core_log);
            ensure!(stats.successful == 0 && stats.failed == 1, "the core's call: {stats:?}");
            let icmp = cap.external.iter().any(|p| {
                p.src.ip().to_string() == ROUTER_PUBLIC && p.is_port_unreachable() && p.icmp_about() == Some(reg.public)
            });
            ensure!(icmp, "no ICMP port unreachable from the router about {} on the external capture", reg.public);
        }
    }
    let refused: Vec<u16> = sip_messages_of(&cap.internal)
        .filter(|(p, code)| p.src.ip().to_string() == SBC_INT && *code >= 300)
        .map(|(_, code)| code)
        .collect();
    eprintln!(
        "{test}: {expect:?}: INVITE to the phone {:?} after its last REGISTER; router entry alive at the call: {alive}; \
         {} OPTIONS to the phone ({} unanswered, {:?} apart); {home_invites} INVITEs on the home link; SBC's final non-2xx to the core: {refused:?}; \
         home addresses in SDP on the internal side: {:?}; {:.1} s in all",
        seen.phone_quiet,
        seen.options_to_phone,
        seen.options_unanswered,
        seen.ping_gaps,
        seen.sdp_private,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The SDP the SBC sent outside names neither the core's address nor its media ports.
fn no_core_sdp_outside(cap: &Captured) -> Result<()> {
    let (core, sbc_ext): (IpAddr, IpAddr) = (CORE.parse()?, SBC_EXT.parse()?);
    ensure!(!sdp_bodies(&cap.internal, core).is_empty(), "the core sent no SDP: the check would prove nothing");
    for body in sdp_bodies(&cap.external, sbc_ext) {
        ensure!(!body.contains(CORE), "the core's address in SDP outside:\n{body}");
    }
    let leaks = sdp_port_leaks(&cap.internal, core, &cap.external, sbc_ext);
    ensure!(leaks.is_empty(), "{}: {}", leaks[0].secret, leaks[0].at);
    Ok(())
}

/// The status codes of the responses in `packets`, with their packets.
fn sip_messages_of(packets: &[Packet]) -> impl Iterator<Item = (&Packet, u16)> {
    packets.iter().flat_map(|p| sip_messages(&p.payload).into_iter().filter_map(move |m| Some((p, m.status()?))))
}

#[test]
fn a_phone_behind_nat_registered_over_udp_is_called_after_the_nat_timeout() -> Result<()> {
    if !privileged("nat_sipp_udp") {
        return Ok(());
    }
    called_after_timeout(Phone::Sipp, "snt3", "nat_sipp_udp", "u1", KEEPALIVE_ON, Expect::Arrives)
}

#[test]
fn a_phone_behind_nat_registered_over_tcp_is_called_after_the_udp_timeout() -> Result<()> {
    if !privileged("nat_sipp_tcp") {
        return Ok(());
    }
    called_after_timeout(Phone::Sipp, "snt2", "nat_sipp_tcp", "t1", KEEPALIVE_ON, Expect::Arrives)
}

/// The negative control: the lab really NATs and really expires. Without keepalives, the
/// phone's UDP binding is gone from the router after its timeout, the SBC's INVITE to the
/// phone's public address meets the router's ICMP port unreachable, and nothing reaches the
/// home link.
#[test]
fn without_keepalives_the_call_after_the_nat_timeout_never_reaches_the_phone() -> Result<()> {
    if !privileged("nat_no_keepalive") {
        return Ok(());
    }
    called_after_timeout(Phone::Sipp, "snt4", "nat_no_keepalive", "u1", KEEPALIVE_OFF, Expect::Lost)
}

#[test]
fn baresip_behind_nat_registered_over_udp_answers_the_core_after_the_nat_timeout() -> Result<()> {
    if !privileged("nat_baresip_udp") {
        return Ok(());
    }
    called_after_timeout(Phone::Baresip, "snt5", "nat_baresip_udp", "u1", KEEPALIVE_ON_MEDIA, Expect::Arrives)
}

#[test]
fn baresip_behind_nat_registered_over_tcp_answers_the_core_after_the_udp_timeout() -> Result<()> {
    if !privileged("nat_baresip_tcp") {
        return Ok(());
    }
    called_after_timeout(Phone::Baresip, "snt6", "nat_baresip_tcp", "t1", KEEPALIVE_ON_MEDIA, Expect::Arrives)
}

// ---------------------------------------------------------------------------------------------
// Audio both ways through the NAT and the relay

/// sipp's sample (package sip-tester): 236 PCMA packets of speech over 7 s.
const SAMPLE: &str = "/usr/share/sip-tester/g711a.pcap";
const SAMPLE_PACKETS: usize = 236;
/// The core's media port.
const CORE_MEDIA: u16 = 16000;

/// An RTP datagram (RFC 3550 version 2) of at least a header and 160 octets of G.711.
fn is_rtp(p: &Packet) -> bool {
    p.l4 == L4::Udp && p.payload.len() >= 172 && p.payload.first().is_some_and(|b| b >> 6 == 2)
}

/// A call from the core to baresip behind the nftables NAT, media anchored by the SBC: the core
/// (sipp) plays sipp's speech sample, baresip (auto-answer) plays its own wav file and records
/// what it hears. Counted on all three captures (home link, both SBC veths), in `sbc stats`
/// (per-call counters while the call runs, every pair back after it), and the recording is
/// not silence.
#[test]
fn baresip_behind_nat_hears_the_cores_audio_and_the_core_gets_the_phones_through_the_relay() -> Result<()> {
    if !privileged("nat_baresip_audio") {
        return Ok(());
    }
    let _g = lab_lock();
    let nat = NatLab::new("snt7", "nat_baresip_audio")?;
    std::fs::copy(SAMPLE, nat.dir().join("g711a.pcap")).context("sipp's sample pcap (package sip-tester)")?;
    let _k = start_kamailio(&nat.lab)?;
    let _sbc = nat.lab.start_sbc_hiding_both(&sbc_extra(KEEPALIVE_ON_MEDIA))?;
    let stats = || -> Result<String> {
        let (ok, text) = sbc_cli(&["stats", "--socket", &nat.lab.admin_socket().to_string_lossy()])?;
        ensure!(ok, "sbc stats failed: {text}");
        Ok(text)
    };
    let recordings = nat.dir().join("recorded");
    let caps = Captures::start(&nat)?;
    let run = || -> Result<String> {
        let account = baresip::Account {
            user: "dave",
            registrar: sbc_sip(),
            transport: "udp",
            listen: addr(PHONE, 5060),
            regint_secs: 300,
            stun: Some(addr(SBC_EXT, STUN_PORT)),
            record: Some(&recordings),
        };
        let mut phone = baresip::spawn(&nat.home, &nat.dir().join("baresip"), &account, Duration::from_secs(90))?;
        registered(&nat, false, PHONE.parse()?)?;
        let mp = CORE_MEDIA.to_string();
        let core = spawn_core_caller(&nat, "core-call-user-rtp.xml", "dave", &["-mp", &mp], 9000, "40s")?;
        // Mid-call: the call's own counters in `sbc stats`.
        std::thread::sleep(Duration::from_secs(5));
        let during = stats()?;
        sipp_ok(core, Duration::from_secs(40), 1)?;
        phone.wait_log(BARESIP_CALL_CLOSED, Duration::from_secs(5))?;
        phone.stop();
        ensure!(phone.log_text().contains(BARESIP_CALL_ANSWERED), "baresip never answered:\n{}", phone.log_text());
        Ok(during)
    };
    let res = run();
    let cap = caps.finish()?;
    let during = res?;
    let (core, sbc_int, sbc_ext, router, phone): (IpAddr, IpAddr, IpAddr, IpAddr, IpAddr) =
        (CORE.parse()?, SBC_INT.parse()?, SBC_EXT.parse()?, ROUTER_PUBLIC.parse()?, PHONE.parse()?);
    let count = |c: &[Packet], from: IpAddr, to: IpAddr| {
        c.iter().filter(|p| is_rtp(p) && p.src.ip() == from && p.dst.ip() == to).count()
    };
    let core_to_sbc = count(&cap.internal, core, sbc_int);
    let sbc_to_router = count(&cap.external, sbc_ext, router);
    let home_to_phone = count(&cap.home, sbc_ext, phone);
    let phone_out = count(&cap.home, phone, sbc_ext);
    let router_to_sbc = count(&cap.external, router, sbc_ext);
    let sbc_to_core = count(&cap.internal, sbc_int, core);
    eprintln!(
        "RTP core→SBC {core_to_sbc}, SBC→router {sbc_to_router}, router→phone {home_to_phone}; \
         phone→router {phone_out}, router→SBC {router_to_sbc}, SBC→core {sbc_to_core}"
    );
    ensure!(core_to_sbc == SAMPLE_PACKETS, "the core played {core_to_sbc} packets");
    // The relay sends toward the phone once it has latched the NAT's mapping (the phone's first
    // packets prove it), so a few of the core's first packets may find no destination yet.
    ensure!(sbc_to_router * 100 >= core_to_sbc * 90, "the relay passed {sbc_to_router} of {core_to_sbc} to the phone");
    // The router drops what the relay sends before the phone's own RTP to the relay port has
    // opened the NAT's mapping for that flow (a few packets at most).
    ensure!(
        home_to_phone * 100 >= sbc_to_router * 97,
        "the router passed {home_to_phone} of {sbc_to_router} to the phone"
    );
    ensure!(phone_out >= 100, "the phone sent {phone_out} RTP packets");
    ensure!(router_to_sbc == phone_out, "the router passed {router_to_sbc} of the phone's {phone_out}");
    ensure!(sbc_to_core * 100 >= router_to_sbc * 97, "the relay passed {sbc_to_core} of {router_to_sbc} to the core");
    ensure!(
        cap.internal.iter().filter(|p| is_rtp(p) && p.dst.ip() == core).all(|p| p.dst.port() == CORE_MEDIA),
        "relayed to a port the core did not offer"
    );
    // The call's counters while it ran, and every pair back afterwards.
    let call = during
        .lines()
        .find_map(|l| l.strip_prefix("media.call.").and_then(|r| r.split_once(".packets_from_internal ")))
        .context(format!("no per-call counters mid-call:\n{during}"))?;
    let mid: u64 = call.1.trim().parse()?;
    ensure!(mid > 50, "call {}: {mid} packets from the core relayed 5 s into the call:\n{during}", call.0);
    let after = stats()?;
    ensure!(stat(&after, "media.port_pairs_in_use") == 0 && stat(&after, "media.calls_listed") == 0, "{after}");
    ensure!(stat(&after, "media.port_pairs_released") == stat(&after, "media.port_pairs_allocated"), "{after}");
    no_core_sdp_outside(&cap)?;
    // What the phone heard: the core's speech, not silence (sipp's sample peaks at 16896, RMS
    // about 1900; a silent G.711 stream decodes to |s| ≤ 8).
    let dec = std::fs::read_dir(&recordings)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .context("baresip recorded no decoded audio")?;
    let samples = baresip::wav_samples(&std::fs::read(&dec)?)?;
    let (peak, rms) = baresip::level(&samples);
    eprintln!(
        "{}: {} samples ({:.1} s at 8 kHz), peak {peak}, RMS {rms:.0}",
        dec.display(),
        samples.len(),
        samples.len() as f64 / 8000.0
    );
    ensure!(samples.len() >= 8000 * 5, "only {} samples recorded", samples.len());
    ensure!(peak >= 4000 && rms >= 300.0, "the phone heard silence: peak {peak}, RMS {rms:.0}");
    // What the core got: the phone's tone (amplitude 8000, RMS about 5700), decoded from the
    // PCMA payloads the relay sent it.
    let heard: Vec<i16> = cap
        .internal
        .iter()
        .filter(|p| is_rtp(p) && p.dst.ip() == core && p.payload.get(1).is_some_and(|pt| pt & 0x7f == 8))
        .flat_map(|p| p.payload.get(12..).unwrap_or_default().iter().map(|&b| baresip::alaw_to_linear(b)))
        .collect();
    let (core_peak, core_rms) = baresip::level(&heard);
    eprintln!("the core got {} samples of the phone, peak {core_peak}, RMS {core_rms:.0}", heard.len());
    ensure!(core_peak >= 4000 && core_rms >= 1000.0, "the core got silence: peak {core_peak}, RMS {core_rms:.0}");
    Ok(())
}
