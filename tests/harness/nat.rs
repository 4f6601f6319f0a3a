//! The NAT lab: a home network behind a masquerading router, in front of the standard lab.
//!
//! ```text
//! [home 192.168.1.2] h0 ─ l0 [router 192.168.1.1 | 198.51.100.20] w0 ─ n0 [ext 198.51.100.1 | 203.0.113.10] e0 ─ x0 [sbc] ─ [core]
//! ```
//!
//! The router masquerades everything leaving its public side (`w0`) with nftables, mapping UDP
//! and TCP source ports into [`NAT_PORTS`] (so a public port never equals the phone's own, and
//! whoever uses the Via or Contact port instead of the packet's source is caught). Its UDP
//! conntrack timeouts (`nf_conntrack_udp_timeout` and `..._udp_timeout_stream`, both per network
//! namespace) are shortened to [`UDP_TIMEOUT_SECS`]: a UDP binding with no packet for that long
//! is gone, and what arrives for it afterwards meets the router's own stack (an ICMP port
//! unreachable), never the phone. The standard lab's `ext` namespace is the Internet between
//! the router and the SBC (it only forwards).
//!
//! Also here: the router's conntrack table read with `conntrack -L` (what it maps, and for how
//! much longer), and the scan for the home network's private addresses in captured bytes.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail, ensure};

use crate::pcap::{self, Packet};
use crate::{Capture, EXT_PEER, Lab, Netns, Proc, SBC_EXT, scenario, sipp};

/// The phone's private address.
pub const PHONE: &str = "192.168.1.2";
/// The router's address on the home network.
pub const HOME_GW: &str = "192.168.1.1";
/// Every private address of the home network starts with this: none may cross the SBC.
pub const HOME_NET_PREFIX: &str = "192.168.1.";
/// The router's public address, the one the SBC sees.
pub const ROUTER_PUBLIC: &str = "198.51.100.20";
/// The Internet's side of the router's link (the `ext` namespace).
pub const ISP_GW: &str = "198.51.100.1";
/// The router's UDP conntrack timeouts (seconds).
pub const UDP_TIMEOUT_SECS: u64 = 20;
/// Where the router maps UDP and TCP source ports.
pub const NAT_PORTS: RangeInclusive<u16> = 40000..=40999;

/// The standard lab plus the home network and its router.
pub struct NatLab {
    pub lab: Lab,
    pub router: Netns,
    pub home: Netns,
}

impl NatLab {
    /// Namespaces `sbclab-<prefix>-{ext,sbc,core,rtr,home}-<pid>`, wired and routed; the
    /// router's masquerade and conntrack timeouts set and read back.
    pub fn new(prefix: &str, test: &str) -> Result<NatLab> {
        let lab = Lab::new(prefix, test)?;
        let router = Netns::new(&format!("{prefix}-rtr"))?;
        let home = Netns::new(&format!("{prefix}-home"))?;
        for ns in [&router, &home] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        crate::veth(&lab.ext, "n0", &router, "w0")?;
        crate::veth(&router, "l0", &home, "h0")?;
        for (ns, ifname, addr) in
            [(&lab.ext, "n0", ISP_GW), (&router, "w0", ROUTER_PUBLIC), (&router, "l0", HOME_GW), (&home, "h0", PHONE)]
        {
            ns.addr(ifname, &format!("{addr}/24"))?;
        }
        home.ip(&["route", "add", "default", "via", HOME_GW])?;
        router.ip(&["route", "add", "default", "via", ISP_GW])?;
        lab.sbc.ip(&["route", "add", "198.51.100.0/24", "via", EXT_PEER])?;
        for ns in [&lab.ext, &router] {
            ns.sysctl("net.ipv4.ip_forward", "1")?;
        }
        let ruleset = format!(
            "table ip nat {{\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
             oifname \"w0\" meta l4proto {{ tcp, udp }} masquerade to :{}-{}\n    oifname \"w0\" masquerade\n  }}\n}}\n",
            NAT_PORTS.start(),
            NAT_PORTS.end()
        );
        let file = lab.dir.join("router.nft");
        std::fs::write(&file, ruleset)?;
        router.exec(&["nft", "-f", &file.to_string_lossy()])?;
        // The conntrack sysctls exist once the masquerade rule has loaded nf_conntrack.
        for key in ["net.netfilter.nf_conntrack_udp_timeout", "net.netfilter.nf_conntrack_udp_timeout_stream"] {
            router.sysctl(key, &UDP_TIMEOUT_SECS.to_string())?;
            let now = router.exec(&["sysctl", "-n", key])?;
            ensure!(
                now.trim() == UDP_TIMEOUT_SECS.to_string(),
                "{key} is {now:?} in the router, not {UDP_TIMEOUT_SECS}"
            );
        }
        Ok(NatLab { lab, router, home })
    }

    pub fn dir(&self) -> &Path {
        &self.lab.dir
    }

    /// The router's conntrack table (`conntrack -L`).
    pub fn conntrack(&self) -> Result<Vec<CtEntry>> {
        let out = self.router.exec(&["conntrack", "-L"])?;
        Ok(out.lines().filter_map(CtEntry::parse).collect())
    }

    /// The router's entry for a flow the home network opened from `private` to `server`.
    pub fn mapping(&self, tcp: bool, private: SocketAddr, server: SocketAddr) -> Result<Option<CtEntry>> {
        let proto = if tcp { "tcp" } else { "udp" };
        Ok(self.conntrack()?.into_iter().find(|e| e.proto == proto && e.orig_src == private && e.orig_dst == server))
    }

    /// The router's entry for the one flow the home host `private` opened to `server` (any
    /// source port: a phone's TCP connection has an ephemeral one). Fails when there are several.
    pub fn mapping_from(&self, tcp: bool, private: IpAddr, server: SocketAddr) -> Result<Option<CtEntry>> {
        let proto = if tcp { "tcp" } else { "udp" };
        let mut found: Vec<CtEntry> = self
            .conntrack()?
            .into_iter()
            .filter(|e| e.proto == proto && e.orig_src.ip() == private && e.orig_dst == server)
            .collect();
        ensure!(found.len() <= 1, "{} {proto} flows from {private} to {server}: {found:?}", found.len());
        Ok(found.pop())
    }

    /// A capture of the home network's link, on the router (`l0`).
    pub fn capture_home(&self) -> Result<Capture> {
        Capture::start(&self.router, "l0", self.lab.dir.join("home.pcap"), &self.lab.dir)
    }
}

/// One line of `conntrack -L`: `udp 17 18 src=… dst=… sport=… dport=… src=… dst=… sport=… dport=… [ASSURED] …`
/// (TCP has its state after the timeout). The first tuple is the original direction, the second
/// the reply: for a masqueraded flow the reply's destination is the public address and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtEntry {
    pub proto: String,
    /// Seconds left before the entry expires.
    pub timeout_secs: u64,
    pub orig_src: SocketAddr,
    pub orig_dst: SocketAddr,
    pub reply_src: SocketAddr,
    pub reply_dst: SocketAddr,
    pub assured: bool,
}

impl CtEntry {
    pub fn parse(line: &str) -> Option<CtEntry> {
        let mut words = line.split_whitespace();
        let proto = words.next()?.to_string();
        let _number = words.next()?;
        let timeout_secs = words.next()?.parse().ok()?;
        let rest: Vec<&str> = words.collect();
        let values = |key: &str| -> Vec<&str> { rest.iter().filter_map(|w| w.strip_prefix(key)).collect() };
        let (src, dst, sport, dport) = (values("src="), values("dst="), values("sport="), values("dport="));
        let at = |i: usize| -> Option<(SocketAddr, SocketAddr)> {
            let s = SocketAddr::new(src.get(i)?.parse().ok()?, sport.get(i)?.parse().ok()?);
            let d = SocketAddr::new(dst.get(i)?.parse().ok()?, dport.get(i)?.parse().ok()?);
            Some((s, d))
        };
        let (orig_src, orig_dst) = at(0)?;
        let (reply_src, reply_dst) = at(1)?;
        Some(CtEntry {
            proto,
            timeout_secs,
            orig_src,
            orig_dst,
            reply_src,
            reply_dst,
            assured: rest.contains(&"[ASSURED]"),
        })
    }

    /// The public address and port the router gave the flow.
    pub fn public(&self) -> SocketAddr {
        self.reply_dst
    }
}

/// The sipp phone in the home network (192.168.1.2:5060, sipp -t `transport`): registers `user`
/// at the SBC's external address, takes one incoming call, un-registers
/// (phone-register-uas.xml + phone-incoming-call.xml; it waits 60 s at most for the call). Its
/// SDP carries the router's public address, as a phone that asked a STUN server writes it
/// (rewriting a private SDP address is the media relay's job, not NAT traversal's).
pub fn spawn_home_phone(nat: &NatLab, transport: &str, user: &str) -> Result<Proc> {
    let dir = nat.dir();
    let c = sipp(
        &nat.home,
        dir,
        &[
            "-sf",
            &scenario("phone-register-uas.xml").to_string_lossy(),
            "-oocsf",
            &scenario("phone-incoming-call.xml").to_string_lossy(),
            "-t",
            transport,
            "-i",
            PHONE,
            "-p",
            "5060",
            "-s",
            user,
            &format!("{SBC_EXT}:5060"),
            "-m",
            "1",
            "-timeout",
            "75s",
            "-set",
            "sdp_ip",
            ROUTER_PUBLIC,
        ],
    );
    Proc::spawn("phone", c, dir.join("phone.log"))
}

/// Where the home network's private address showed up in captured packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Where {
    /// In an IP header (source or destination address).
    Address,
    /// In a SIP message's start line or headers: the line.
    Header(String),
    /// In an SDP body: the line.
    Sdp(String),
    /// Anywhere else in a payload (another body, a non-SIP payload).
    Payload,
}

/// One packet carrying an address starting with `prefix` (e.g. [`HOME_NET_PREFIX`]).
#[derive(Debug, Clone)]
pub struct Found {
    pub packet: usize,
    pub at: Where,
    pub text: String,
}

/// Every place `prefix` appears in `packets`: their IP addresses, and every byte of their
/// payloads (each occurrence classified as header, SDP body or other).
pub fn find_addresses(packets: &[Packet], prefix: &str) -> Vec<Found> {
    let mut out = Vec::new();
    let needle = prefix.as_bytes();
    for (i, p) in packets.iter().enumerate() {
        let text = String::from_utf8_lossy(&p.payload).into_owned();
        for ip in [p.src.ip(), p.dst.ip()] {
            if ip.to_string().starts_with(prefix) {
                out.push(Found { packet: i, at: Where::Address, text: format!("{} → {}", p.src, p.dst) });
            }
        }
        let raw = p.payload.windows(needle.len()).filter(|w| *w == needle).count();
        let mut classified = 0;
        for msg in pcap::sip_messages(&p.payload) {
            if msg.method().is_none() && msg.status().is_none() {
                continue;
            }
            let m = String::from_utf8_lossy(&msg.0).into_owned();
            let (head, body) = m.split_once("\r\n\r\n").unwrap_or((m.as_str(), ""));
            let sdp = head.lines().any(|l| {
                let l = l.to_ascii_lowercase();
                (l.starts_with("content-type:") || l.starts_with("c:")) && l.contains("application/sdp")
            });
            for line in head.lines().filter(|l| l.contains(prefix)) {
                classified += line.matches(prefix).count();
                out.push(Found { packet: i, at: Where::Header(line.to_string()), text: text.clone() });
            }
            for line in body.lines().filter(|l| l.contains(prefix)) {
                classified += line.matches(prefix).count();
                let at = if sdp { Where::Sdp(line.to_string()) } else { Where::Payload };
                out.push(Found { packet: i, at, text: text.clone() });
            }
        }
        if raw > classified {
            out.push(Found { packet: i, at: Where::Payload, text: text.clone() });
        }
    }
    out
}

/// Waits until `f` holds, checking every 200 ms, `limit` at most.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if f()? {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_lines_parse_into_both_tuples() {
        let udp = "udp      17 18 src=192.168.1.2 dst=203.0.113.1 sport=5060 dport=5060 src=203.0.113.1 \
                   dst=198.51.100.20 sport=5060 dport=40123 [ASSURED] mark=0 use=1";
        let e = CtEntry::parse(udp).unwrap();
        assert_eq!(e.proto, "udp");
        assert_eq!(e.timeout_secs, 18);
        assert_eq!(e.orig_src, "192.168.1.2:5060".parse().unwrap());
        assert_eq!(e.public(), "198.51.100.20:40123".parse().unwrap());
        assert!(e.assured);
        let tcp = "tcp      6 431999 ESTABLISHED src=192.168.1.2 dst=203.0.113.1 sport=5060 dport=5060 \
                   src=203.0.113.1 dst=198.51.100.20 sport=5060 dport=40007 [ASSURED] mark=0 use=1";
        let e = CtEntry::parse(tcp).unwrap();
        assert_eq!((e.proto.as_str(), e.timeout_secs), ("tcp", 431999));
        assert_eq!(e.public().port(), 40007);
        let unreplied = "udp      17 29 src=192.168.1.2 dst=203.0.113.1 sport=1 dport=2 [UNREPLIED] src=203.0.113.1 \
                         dst=198.51.100.20 sport=2 dport=40001 mark=0 use=1";
        assert!(!CtEntry::parse(unreplied).unwrap().assured);
        assert_eq!(CtEntry::parse("conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown."), None);
    }

    fn packet(src: &str, dst: &str, payload: &str) -> Packet {
        Packet {
            ts: Duration::ZERO,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            l4: pcap::L4::Udp,
            payload: payload.replace('\n', "\r\n").into_bytes(),
        }
    }

    #[test]
    fn private_addresses_are_found_in_headers_sdp_and_ip_addresses() {
        let invite = "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 10.99.0.10:5070;branch=z9hG4bK1\nFrom: <sip:a@x>;tag=1\n\
                      To: <sip:b@y>;tag=2\nCall-ID: 77@192.168.1.2\nCSeq: 1 INVITE\nContent-Type: application/sdp\n\
                      Content-Length: 38\n\nv=0\no=- 1 1 IN IP4 192.168.1.2\ns=-\n";
        let clean = "OPTIONS sip:x SIP/2.0\nVia: SIP/2.0/UDP 10.99.0.1:5060;branch=z9hG4bK2\nContent-Length: 0\n\n";
        let packets = [
            packet("10.99.0.1:5060", "10.99.0.10:5070", invite),
            packet("10.99.0.1:5060", "10.99.0.10:5070", clean),
            packet("192.168.1.9:5060", "10.99.0.10:5070", clean),
            packet("10.99.0.1:5060", "10.99.0.10:5070", "\u{1}\u{1}\0\u{8}!\u{12}\u{a4}B192.168.1.3"),
        ];
        let found = find_addresses(&packets, HOME_NET_PREFIX);
        let at: Vec<(usize, &Where)> = found.iter().map(|f| (f.packet, &f.at)).collect();
        assert_eq!(
            at,
            [
                (0, &Where::Header("Call-ID: 77@192.168.1.2".into())),
                (0, &Where::Sdp("o=- 1 1 IN IP4 192.168.1.2".into())),
                (2, &Where::Address),
                (3, &Where::Payload),
            ]
        );
    }
}
