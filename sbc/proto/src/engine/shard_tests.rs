//! Sharded engines: N engines (2 and 4), each told its shard, with every message handed to the
//! one [`super::steer::shard_of`] names — as the daemon's socket side does. Calls in both
//! directions, REGISTER then a call to the phone, CANCEL, re-INVITE and BYE from either side
//! complete, with the messages of one call landing on different shards from the ones another
//! call uses, and no state left behind on any shard.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

const UA: &str = "198.51.100.7:5060";
const CORE: &str = "10.99.0.10:5070";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ext() -> Flow {
    Flow { side: Side::External, transport: Transport::Udp, local: sa("203.0.113.1:5060"), remote: sa(UA) }
}

fn core() -> Flow {
    Flow { side: Side::Internal, transport: Transport::Udp, local: sa("10.99.0.1:5060"), remote: sa(CORE) }
}

/// N engines sharing one secret, and the shards each delivered message went to.
struct Cluster {
    engines: Vec<Engine>,
    now: Instant,
    landed: BTreeSet<usize>,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        let now = Instant::now();
        let engines = (0..n)
            .map(|i| {
                let cfg = Config {
                    shard: Shard::new(i, n).unwrap(),
                    seed: 11 + i as u64,
                    nat: NatConfig { register_expiry: None, ping_interval: None, ..NatConfig::default() },
                    ..Config::example()
                };
                Engine::new(cfg, now)
            })
            .collect();
        Cluster { engines, now, landed: BTreeSet::new() }
    }

    /// Steers `msg` to its shard, returns that shard and everything any shard sent.
    fn deliver(&mut self, flow: Flow, msg: &str) -> (usize, Vec<(Flow, String)>) {
        let n = self.engines.len();
        let shard = steer::shard_of(msg.as_bytes(), n, 64).expect("an owner");
        self.landed.insert(shard);
        self.engines[shard].handle_datagram(self.now, flow, msg.as_bytes());
        (shard, self.drain())
    }

    fn drain(&mut self) -> Vec<(Flow, String)> {
        let mut out = Vec::new();
        for e in &mut self.engines {
            out.extend(std::iter::from_fn(|| e.poll_transmit()).map(|t| (t.flow, String::from_utf8(t.data).unwrap())));
        }
        out
    }

    /// The one message of `out` that starts with `start` and went to `side`.
    fn one(out: &[(Flow, String)], side: Side, start: &str) -> String {
        let m: Vec<_> = out.iter().filter(|(f, m)| f.side == side && m.starts_with(start)).collect();
        assert_eq!(m.len(), 1, "one {start:?} toward {side:?} in {out:#?}");
        m[0].1.clone()
    }

    /// Lets every timer run out (transactions end, dialogs that ended are swept).
    fn settle(&mut self) {
        for _ in 0..10 {
            self.now += Duration::from_secs(40);
            let now = self.now;
            for e in &mut self.engines {
                e.handle_timeout(now);
            }
            self.drain();
        }
    }

    fn assert_empty(&self) {
        for (i, e) in self.engines.iter().enumerate() {
            assert_eq!(e.sizes(), (0, 0, 0, 0), "shard {i} keeps state: {e:?}");
        }
    }
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

fn uri_of(name_addr: &str) -> String {
    let s = name_addr.split('<').nth(1).unwrap_or(name_addr);
    s.split('>').next().unwrap().to_string()
}

/// Makes every branch the hand-written UAs use unique.
static BRANCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One end of a dialog as a hand-written UA sees it.
#[derive(Debug, Clone)]
struct Leg {
    flow: Flow,
    host: &'static str,
    call_id: String,
    /// Our From (with our tag) for requests we send.
    local: String,
    remote: String,
    target: String,
    cseq: u32,
}

impl Leg {
    /// The callee's view of an INVITE it received.
    fn callee(flow: Flow, host: &'static str, invite: &str, tag: &str) -> Leg {
        Leg {
            flow,
            host,
            call_id: header(invite, "Call-ID").unwrap().into(),
            local: format!("{};tag={tag}", header(invite, "To").unwrap()),
            remote: header(invite, "From").unwrap().into(),
            target: uri_of(header(invite, "Contact").unwrap()),
            cseq: 100,
        }
    }

    /// The caller's view once its INVITE got `ok`.
    fn caller(flow: Flow, host: &'static str, ok: &str) -> Leg {
        Leg {
            flow,
            host,
            call_id: header(ok, "Call-ID").unwrap().into(),
            local: header(ok, "From").unwrap().into(),
            remote: header(ok, "To").unwrap().into(),
            target: uri_of(header(ok, "Contact").unwrap()),
            cseq: 1,
        }
    }

    fn request(&mut self, method: &str, cseq: Option<u32>) -> String {
        let cseq = cseq.unwrap_or_else(|| {
            self.cseq += 1;
            self.cseq
        });
        format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{method}{cseq}n{}\r\nFrom: {}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <sip:peer@{}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            self.target,
            self.host,
            BRANCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            self.local,
            self.remote,
            self.call_id,
            self.host
        )
    }

    /// Our answer to a request we received on this leg.
    fn respond(&self, req: &str, code: u16) -> String {
        respond(req, code, &self.local, self.host)
    }
}

/// A response copying the request's Vias, From, Call-ID, CSeq, with `to` and our Contact.
fn respond(req: &str, code: u16, to: &str, host: &str) -> String {
    let mut out = format!("SIP/2.0 {code} X\r\n");
    for l in req.lines().filter(|l| l.starts_with("Via: ")) {
        out.push_str(l);
        out.push_str("\r\n");
    }
    for name in ["From", "Call-ID", "CSeq"] {
        out.push_str(&format!("{name}: {}\r\n", header(req, name).unwrap()));
    }
    out.push_str(&format!("To: {to}\r\nContact: <sip:peer@{host}>\r\nContent-Length: 0\r\n\r\n"));
    out
}

fn ua_invite(i: usize) -> String {
    format!(
        "INVITE sip:1000@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKinv{i}\r\n\
         From: <sip:alice@198.51.100.7>;tag=ua{i}\r\nTo: <sip:1000@203.0.113.1>\r\nCall-ID: call-{i}@198.51.100.7\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:alice@198.51.100.7:5060>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

fn core_invite(i: usize, ruri: &str) -> String {
    format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.99.0.10:5070;branch=z9hG4bKcinv{i}\r\n\
         From: <sip:2000@core.internal>;tag=core{i}\r\nTo: <{ruri}>\r\nCall-ID: core-{i}@10.99.0.10\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:2000@10.99.0.10:5070>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A call set up from `from` (caller flow/host) through the cluster; returns (caller, callee)
/// legs with the dialog confirmed (ACK delivered).
fn establish(c: &mut Cluster, invite: &str, caller: (Flow, &'static str), callee: (Flow, &'static str)) -> (Leg, Leg) {
    let (_, out) = c.deliver(caller.0, invite);
    let fwd = Cluster::one(&out, callee.0.side, "INVITE ");
    let callee_leg = Leg::callee(callee.0, callee.1, &fwd, "callee");
    let (_, out) = c.deliver(callee.0, &callee_leg.respond(&fwd, 180));
    Cluster::one(&out, caller.0.side, "SIP/2.0 180");
    let (_, out) = c.deliver(callee.0, &callee_leg.respond(&fwd, 200));
    let ok = Cluster::one(&out, caller.0.side, "SIP/2.0 200");
    let mut caller_leg = Leg::caller(caller.0, caller.1, &ok);
    let ack = caller_leg.request("ACK", Some(1));
    let (_, out) = c.deliver(caller.0, &ack);
    Cluster::one(&out, callee.0.side, "ACK ");
    (caller_leg, callee_leg)
}

/// `from` sends `method` in the dialog; the other end answers 200 (and for INVITE the ACK
/// follows). Returns the shard the request landed on.
fn in_dialog(c: &mut Cluster, method: &str, from: &mut Leg, to: &mut Leg) -> usize {
    let req = from.request(method, None);
    let (shard, out) = c.deliver(from.flow, &req);
    let fwd = Cluster::one(&out, to.flow.side, &format!("{method} "));
    let (_, out) = c.deliver(to.flow, &to.respond(&fwd, 200));
    Cluster::one(&out, from.flow.side, "SIP/2.0 200");
    if method == "INVITE" {
        let ack = from.request("ACK", Some(from.cseq));
        let (_, out) = c.deliver(from.flow, &ack);
        Cluster::one(&out, to.flow.side, "ACK ");
    }
    shard
}

fn calls_both_ways(n: usize) {
    let mut c = Cluster::new(n);
    let mut shards_used = BTreeSet::new();
    for i in 0..12 {
        // From outside to the core: re-INVITE from the core, BYE from the phone.
        let (mut ua, mut core_leg) = establish(&mut c, &ua_invite(i), (ext(), "198.51.100.7:5060"), (core(), CORE));
        shards_used.insert(in_dialog(&mut c, "INVITE", &mut core_leg, &mut ua));
        shards_used.insert(in_dialog(&mut c, "BYE", &mut ua, &mut core_leg));
        // From the core to an outside address: re-INVITE from the phone, BYE from the core.
        let (mut core_leg, mut ua) = establish(
            &mut c,
            &core_invite(i, "sip:bob@198.51.100.7:5060"),
            (core(), CORE),
            (ext(), "198.51.100.7:5060"),
        );
        shards_used.insert(in_dialog(&mut c, "INVITE", &mut ua, &mut core_leg));
        shards_used.insert(in_dialog(&mut c, "BYE", &mut core_leg, &mut ua));
    }
    assert_eq!(shards_used.len(), n, "12 calls each way used every shard: {shards_used:?}");
    c.settle();
    c.assert_empty();
}

#[test]
fn calls_in_both_directions_with_reinvite_and_bye_from_either_side_on_2_shards() {
    calls_both_ways(2);
}

#[test]
fn calls_in_both_directions_with_reinvite_and_bye_from_either_side_on_4_shards() {
    calls_both_ways(4);
}

/// CANCEL from the caller on either side: it reaches the INVITE's shard, 487 comes back.
fn cancels(n: usize) {
    let mut c = Cluster::new(n);
    for i in 0..8 {
        for from_core in [false, true] {
            let (invite, caller, callee) = if from_core {
                (core_invite(i, "sip:bob@198.51.100.7:5060"), (core(), CORE), (ext(), "198.51.100.7:5060"))
            } else {
                (ua_invite(i), (ext(), "198.51.100.7:5060"), (core(), CORE))
            };
            let (inv_shard, out) = c.deliver(caller.0, &invite);
            let fwd = Cluster::one(&out, callee.0.side, "INVITE ");
            let callee_leg = Leg::callee(callee.0, callee.1, &fwd, "callee");
            c.deliver(callee.0, &callee_leg.respond(&fwd, 180));
            let cancel = invite.replacen("INVITE ", "CANCEL ", 1).replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
            let (shard, out) = c.deliver(caller.0, &cancel);
            assert_eq!(shard, inv_shard, "the CANCEL found its INVITE's shard");
            Cluster::one(&out, caller.0.side, "SIP/2.0 200");
            let fwd_cancel = Cluster::one(&out, callee.0.side, "CANCEL ");
            c.deliver(callee.0, &callee_leg.respond(&fwd_cancel, 200));
            let (_, out) = c.deliver(callee.0, &callee_leg.respond(&fwd, 487));
            let r487 = Cluster::one(&out, caller.0.side, "SIP/2.0 487");
            // The hop-by-hop ACK for the 487, absorbed on the same shard.
            let ack = format!(
                "ACK {} SIP/2.0\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                invite.split(' ').nth(1).unwrap(),
                header(&invite, "Via").unwrap(),
                header(&r487, "From").unwrap(),
                header(&r487, "To").unwrap(),
                header(&r487, "Call-ID").unwrap(),
            );
            let (shard, out) = c.deliver(caller.0, &ack);
            assert_eq!(shard, inv_shard);
            assert!(out.is_empty(), "the ACK of a 487 stays at the SBC: {out:#?}");
        }
    }
    assert_eq!(c.landed.len(), n);
    c.settle();
    c.assert_empty();
}

#[test]
fn cancel_from_either_side_reaches_its_invite_on_2_shards() {
    cancels(2);
}

#[test]
fn cancel_from_either_side_reaches_its_invite_on_4_shards() {
    cancels(4);
}

/// A phone registers (the binding lives on the shard its AOR hashes to); the core calls it
/// through the token it was given, the call is re-INVITEd and hung up from both sides.
fn register_then_call(n: usize) {
    let mut c = Cluster::new(n);
    let mut binding_shards = BTreeSet::new();
    for i in 0..10 {
        let user = format!("p{i}");
        let register = format!(
            "REGISTER sip:203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKreg{i}\r\n\
             From: <sip:{user}@203.0.113.1>;tag=r{i}\r\nTo: <sip:{user}@203.0.113.1>\r\nCall-ID: reg-{i}@phone\r\n\
             CSeq: 1 REGISTER\r\nContact: <sip:{user}@198.51.100.7:5060>;expires=300\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        let (reg_shard, out) = c.deliver(ext(), &register);
        binding_shards.insert(reg_shard);
        let fwd = Cluster::one(&out, Side::Internal, "REGISTER ");
        let token_uri = uri_of(header(&fwd, "Contact").unwrap());
        let answer = respond(&fwd, 200, &format!("{};tag=reg", header(&fwd, "To").unwrap()), CORE)
            .replace("Contact: <sip:peer@10.99.0.10:5070>", &format!("Contact: <{token_uri}>;expires=300"));
        let (shard, out) = c.deliver(core(), &answer);
        assert_eq!(shard, reg_shard, "the REGISTER's answer found its shard");
        Cluster::one(&out, Side::External, "SIP/2.0 200");
        // The core calls the phone at the token; the call is set up on the binding's shard.
        let invite = core_invite(100 + i, &token_uri);
        assert_eq!(steer::shard_of(invite.as_bytes(), n, 64), Some(reg_shard), "the token names the binding's shard");
        let (mut core_leg, mut phone) = establish(&mut c, &invite, (core(), CORE), (ext(), "198.51.100.7:5060"));
        in_dialog(&mut c, "INVITE", &mut phone, &mut core_leg);
        in_dialog(&mut c, "INVITE", &mut core_leg, &mut phone);
        in_dialog(&mut c, if i % 2 == 0 { "BYE" } else { "UPDATE" }, &mut phone, &mut core_leg);
        if i % 2 == 1 {
            in_dialog(&mut c, "BYE", &mut core_leg, &mut phone);
        }
        // Unregister: the binding goes from its shard.
        let unregister = register
            .replace("CSeq: 1 REGISTER", "CSeq: 2 REGISTER")
            .replace("expires=300", "expires=0")
            .replace(&format!("z9hG4bKreg{i}"), &format!("z9hG4bKunreg{i}"));
        let (shard, out) = c.deliver(ext(), &unregister);
        assert_eq!(shard, reg_shard);
        let fwd = Cluster::one(&out, Side::Internal, "REGISTER ");
        let (_, out) =
            c.deliver(core(), &respond(&fwd, 200, &format!("{};tag=reg", header(&fwd, "To").unwrap()), CORE));
        Cluster::one(&out, Side::External, "SIP/2.0 200");
    }
    assert!(binding_shards.len() > 1, "bindings on more than one shard: {binding_shards:?}");
    c.settle();
    c.assert_empty();
}

#[test]
fn register_then_a_call_to_the_phone_on_2_shards() {
    register_then_call(2);
}

#[test]
fn register_then_a_call_to_the_phone_on_4_shards() {
    register_then_call(4);
}
