//! The registration cache and NAT keepalives on a virtual clock, with a hand-written registrar
//! on the core side and phones behind a masquerading router on the outside.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

const CORE: &str = "10.0.0.10:5070";
const ROUTER: &str = "198.51.100.20";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn config() -> Config {
    Config {
        internal: SideConfig {
            advertise: "10.0.0.1".into(),
            udp: vec![sa("10.0.0.1:5060")],
            tcp: Vec::new(),
            hide: false,
            nat: NatMode::Off,
        },
        cores: vec![CoreTarget { addr: sa(CORE), transport: Transport::Udp }],
        max_registrations: 5000,
        max_transactions: 100_000,
        seed: 9,
        nat: NatConfig {
            register_expiry: Some(Duration::from_secs(60)),
            ping_interval: Some(Duration::from_secs(15)),
            ping_failures: 3,
        },
        ..Config::example()
    }
}

fn core_flow() -> Flow {
    Flow { side: Side::Internal, transport: Transport::Udp, local: sa("10.0.0.1:5060"), remote: sa(CORE) }
}

/// Phone `i`: 192.168.x.y:5060 at home, seen as the router's port 40000 + i.
struct Phone {
    user: String,
    private: String,
    flow: Flow,
    call_id: String,
    cseq: u32,
}

impl Phone {
    fn new(i: u32) -> Phone {
        Phone {
            user: format!("u{i}"),
            private: format!("192.168.{}.{}", 1 + i / 250, 2 + i % 250),
            flow: Flow {
                side: Side::External,
                transport: Transport::Udp,
                local: sa("203.0.113.1:5060"),
                remote: sa(&format!("{ROUTER}:{}", 40000 + i)),
            },
            call_id: format!("reg-{i}@home"),
            cseq: 0,
        }
    }
    fn user(&self) -> String {
        self.user.clone()
    }
    fn register(&mut self, expires: u32) -> String {
        self.cseq += 1;
        let (p, user, cid, cseq) = (&self.private, self.user(), &self.call_id, self.cseq);
        format!(
            "REGISTER sip:203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP {p}:5060;branch=z9hG4bKr{cseq}x{user};rport\r\n\
             From: <sip:{user}@203.0.113.1>;tag=t{user}\r\nTo: <sip:{user}@203.0.113.1>\r\nCall-ID: {cid}\r\n\
             CSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{p}:5060>;expires={expires}\r\nMax-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n"
        )
    }
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

/// A response copying Via/From/To/Call-ID/CSeq, with a To tag and extra headers.
fn respond(req: &str, code: u16, extra: &str) -> String {
    let mut out = format!("SIP/2.0 {code} X\r\n");
    for name in ["Via", "From", "Call-ID", "CSeq"] {
        for l in req.lines().filter(|l| l.starts_with(&format!("{name}: "))) {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("To: {};tag=reg\r\n{extra}Content-Length: 0\r\n\r\n", header(req, "To").unwrap()));
    out
}

/// The core's registrar: grants at most `max_expires`, stores the token Contact per AOR.
struct Registrar {
    max_expires: u32,
    location: HashMap<String, String>,
    registers: u64,
}

impl Registrar {
    fn answer(&mut self, req: &str) -> String {
        self.registers += 1;
        let contact = header(req, "Contact").unwrap();
        let uri = contact.split(';').next().unwrap().trim_matches(|c| c == '<' || c == '>').to_string();
        let asked: u32 = contact.split("expires=").nth(1).unwrap().parse().unwrap();
        let aor = header(req, "To").unwrap().to_string();
        if asked == 0 {
            self.location.remove(&aor);
            return respond(req, 200, "");
        }
        let granted = asked.min(self.max_expires);
        self.location.insert(aor, uri.clone());
        respond(req, 200, &format!("Contact: <{uri}>;expires={granted}\r\n"))
    }
}

/// Runs the engine's output: REGISTERs to the registrar (answers fed back), OPTIONS pings
/// answered by the phones that are `alive`; returns what reached each phone.
fn pump(e: &mut Engine, now: Instant, reg: &mut Registrar, alive: &dyn Fn(&Flow) -> bool) -> Vec<(Flow, String)> {
    let mut to_phones = Vec::new();
    loop {
        let out: Vec<(Flow, String)> =
            std::iter::from_fn(|| e.poll_transmit()).map(|t| (t.flow, String::from_utf8(t.data).unwrap())).collect();
        if out.is_empty() {
            return to_phones;
        }
        for (f, m) in out {
            if f.side == Side::Internal && m.starts_with("REGISTER ") {
                let answer = reg.answer(&m);
                e.handle_datagram(now, core_flow(), answer.as_bytes());
            } else if f.side == Side::External && m.starts_with("OPTIONS ") {
                if alive(&f) {
                    e.handle_datagram(now, f, respond(&m, 200, "").as_bytes());
                }
                to_phones.push((f, m));
            } else {
                to_phones.push((f, m));
            }
        }
    }
}

fn run_timers(e: &mut Engine, from: Instant, to: Instant, reg: &mut Registrar, alive: &dyn Fn(&Flow) -> bool) {
    let mut now = from;
    while now < to {
        now += Duration::from_millis(500);
        e.handle_timeout(now);
        pump(e, now, reg, alive);
    }
}

fn contact_expires(resp: &str) -> u32 {
    header(resp, "Contact").unwrap().split("expires=").nth(1).unwrap().parse().unwrap()
}

/// The core calls `aor` at the location the registrar holds; returns the INVITE the phone got.
fn call_from_core(e: &mut Engine, now: Instant, reg: &Registrar, aor: &str, n: u32) -> Option<(Flow, String)> {
    let target = reg.location.get(aor)?;
    let inv = format!(
        "INVITE {target} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.10:5070;branch=z9hG4bKcall{n}\r\n\
         From: <sip:bob@10.0.0.10>;tag=cb{n}\r\nTo: {aor}\r\nCall-ID: core-call-{n}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:bob@10.0.0.10:5070>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    e.handle_datagram(now, core_flow(), inv.as_bytes());
    std::iter::from_fn(|| e.poll_transmit())
        .map(|t| (t.flow, String::from_utf8(t.data).unwrap()))
        .find(|(f, m)| f.side == Side::External && m.starts_with("INVITE "))
}

#[test]
fn a_thousand_phones_behind_nat_refreshing_every_50s_for_10_minutes_reach_the_registrar_3_times_each() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(), t0);
    let mut reg = Registrar { max_expires: 300, location: HashMap::new(), registers: 0 };
    let mut phones: Vec<Phone> = (0..1000).map(Phone::new).collect();
    let alive = |_: &Flow| true;
    let mut sent = 0u64;
    let mut now = t0;
    // A REGISTER every 50 s from every phone, 13 rounds (0 s .. 600 s), pings in between.
    for round in 0..13 {
        for p in phones.iter_mut() {
            let r = p.register(3600);
            e.handle_datagram(now, p.flow, r.as_bytes());
            sent += 1;
            let answers = pump(&mut e, now, &mut reg, &alive);
            let ok = answers.iter().find(|(f, m)| *f == p.flow && m.starts_with("SIP/2.0 200")).unwrap();
            assert_eq!(contact_expires(&ok.1), 60, "round {round}: the phone is told 60 s, not the registrar's");
            assert!(ok.1.contains(&format!("<sip:{}@{}:5060>", p.user(), p.private)), "its own Contact back");
        }
        let next = now + Duration::from_secs(50);
        run_timers(&mut e, now, next, &mut reg, &alive);
        now = next;
    }
    // The registrar grants 300 s: asked at 0 s, then once its registration would run out before
    // the next refresh (250 s, 500 s) — 3 of 13.
    assert_eq!(sent, 13_000);
    assert_eq!(reg.registers, 3000, "REGISTERs that reached the registrar");
    let s = e.stats();
    assert_eq!(s.registers_absorbed, 10_000);
    assert_eq!(s.registers_forwarded, 3000);
    // 15 s pings, each answered: nothing lost.
    assert!(s.nat_pings_sent >= 1000 * 39, "pings sent: {}", s.nat_pings_sent);
    assert_eq!((s.nat_pings_unanswered, s.registrations_lost), (0, 0));
    assert_eq!(e.sizes().3, 1000);
    assert_eq!(e.nat_registrations(), 1000);
    // Every phone is reached by a call from the core, on its own NAT flow, at its own Contact.
    for (n, p) in phones.iter().enumerate() {
        let aor = format!("<sip:{}@203.0.113.1>", p.user());
        let (f, inv) = call_from_core(&mut e, now, &reg, &aor, n as u32).unwrap_or_else(|| panic!("{aor} not reached"));
        assert_eq!(f, p.flow);
        assert!(inv.starts_with(&format!("INVITE sip:{}@{}:5060 SIP/2.0", p.user(), p.private)));
    }
}

#[test]
fn a_phone_whose_nat_binding_died_stops_answering_pings_and_is_unreachable_with_480() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(), t0);
    let mut reg = Registrar { max_expires: 3600, location: HashMap::new(), registers: 0 };
    let mut p = Phone::new(1);
    e.handle_datagram(t0, p.flow, p.register(3600).as_bytes());
    pump(&mut e, t0, &mut reg, &|_| true);
    // The router forgets the mapping: pings get no answer. Three unanswered pings (15 s apart,
    // each given the probe timeout) end the binding, well before its 60 s expiry.
    let mut now = t0;
    let mut pings = 0;
    while e.sizes().3 == 1 && now < t0 + Duration::from_secs(59) {
        now += Duration::from_millis(500);
        e.handle_timeout(now);
        pings += pump(&mut e, now, &mut reg, &|_| false).iter().filter(|(_, m)| m.starts_with("OPTIONS")).count();
    }
    assert_eq!(e.sizes().3, 0, "binding ended by unanswered pings");
    assert!(now < t0 + Duration::from_secs(50), "ended at {:?}", now - t0);
    assert!(pings >= 3);
    let s = e.stats();
    assert_eq!((s.nat_pings_unanswered, s.registrations_lost), (3, 1));
    // The registrar still has the token: the SBC answers for the phone at once.
    let inv = format!(
        "INVITE {} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.10:5070;branch=z9hG4bKgone\r\nFrom: <sip:bob@10.0.0.10>;tag=b\r\n\
         To: <sip:u1@203.0.113.1>\r\nCall-ID: gone\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        reg.location.values().next().unwrap()
    );
    e.handle_datagram(now, core_flow(), inv.as_bytes());
    let out: Vec<String> =
        std::iter::from_fn(|| e.poll_transmit()).map(|t| String::from_utf8(t.data).unwrap()).collect();
    assert!(out.iter().any(|m| m.starts_with("SIP/2.0 480 ")), "{out:#?}");
}

#[test]
fn a_refresh_from_a_new_nat_port_reaches_the_registrar_and_replaces_the_binding() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(), t0);
    let mut reg = Registrar { max_expires: 3600, location: HashMap::new(), registers: 0 };
    let mut p = Phone::new(7);
    e.handle_datagram(t0, p.flow, p.register(3600).as_bytes());
    pump(&mut e, t0, &mut reg, &|_| true);
    let token = reg.location.values().next().unwrap().clone();
    // The router restarted: same phone, same Call-ID, new public port.
    let old = p.flow;
    p.flow.remote = sa(&format!("{ROUTER}:51000"));
    let t1 = t0 + Duration::from_secs(30);
    e.handle_datagram(t1, p.flow, p.register(3600).as_bytes());
    pump(&mut e, t1, &mut reg, &|_| true);
    assert_eq!(reg.registers, 2, "a changed flow is not absorbed: the registrar authenticates it");
    assert_eq!(reg.location.values().next().unwrap(), &token, "the registrar refreshes the same binding");
    assert_eq!(e.sizes().3, 1, "replaced, not accumulated");
    let aor = format!("<sip:{}@203.0.113.1>", p.user());
    let (f, _) = call_from_core(&mut e, t1, &reg, &aor, 1).unwrap();
    assert_eq!(f, p.flow);
    assert_ne!(f, old);
}

#[test]
fn an_unauthenticated_register_from_elsewhere_does_not_steer_the_phones_calls() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(), t0);
    let mut reg = Registrar { max_expires: 3600, location: HashMap::new(), registers: 0 };
    let mut p = Phone::new(3);
    e.handle_datagram(t0, p.flow, p.register(3600).as_bytes());
    pump(&mut e, t0, &mut reg, &|_| true);
    // An attacker replays the phone's REGISTER (same Call-ID, Contact, higher CSeq) from its own
    // address; the registrar challenges it.
    let mut forged = Phone::new(3);
    forged.cseq = p.cseq;
    forged.flow.remote = sa("198.51.100.66:5060");
    e.handle_datagram(t0, forged.flow, forged.register(3600).as_bytes());
    let out: Vec<(Flow, String)> =
        std::iter::from_fn(|| e.poll_transmit()).map(|t| (t.flow, String::from_utf8(t.data).unwrap())).collect();
    let fwd = &out.iter().find(|(f, m)| f.side == Side::Internal && m.starts_with("REGISTER")).unwrap().1;
    e.handle_datagram(
        t0,
        core_flow(),
        respond(fwd, 401, "WWW-Authenticate: Digest realm=\"x\", nonce=\"n\"\r\n").as_bytes(),
    );
    let _ = std::iter::from_fn(|| e.poll_transmit()).count();
    let aor = format!("<sip:{}@203.0.113.1>", p.user());
    let (f, _) = call_from_core(&mut e, t0, &reg, &aor, 1).unwrap();
    assert_eq!(f, p.flow, "calls still go to the phone");
}

#[test]
fn an_unregister_reaches_the_registrar_and_ends_the_binding_at_once() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(), t0);
    let mut reg = Registrar { max_expires: 3600, location: HashMap::new(), registers: 0 };
    let mut p = Phone::new(2);
    e.handle_datagram(t0, p.flow, p.register(3600).as_bytes());
    pump(&mut e, t0, &mut reg, &|_| true);
    let token = reg.location.values().next().unwrap().clone();
    e.handle_datagram(t0, p.flow, p.register(0).as_bytes());
    pump(&mut e, t0, &mut reg, &|_| true);
    assert_eq!(reg.registers, 2);
    assert!(reg.location.is_empty());
    assert_eq!(e.sizes().3, 0);
    let inv = format!(
        "INVITE {token} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.10:5070;branch=z9hG4bKstale\r\nFrom: <sip:bob@10.0.0.10>;tag=b\r\n\
         To: <sip:u2@203.0.113.1>\r\nCall-ID: stale\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    e.handle_datagram(t0, core_flow(), inv.as_bytes());
    let out: Vec<String> =
        std::iter::from_fn(|| e.poll_transmit()).map(|t| String::from_utf8(t.data).unwrap()).collect();
    assert!(out.iter().any(|m| m.starts_with("SIP/2.0 480 ")), "{out:#?}");
}

#[test]
fn a_phone_not_behind_nat_keeps_the_registrars_expiry_every_refresh_goes_on_and_it_is_not_pinged() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(), t0);
    let mut reg = Registrar { max_expires: 600, location: HashMap::new(), registers: 0 };
    let mut p = Phone::new(4);
    // A public phone: Via and Contact are its source address.
    p.private = "198.51.100.20".into();
    p.flow.remote = sa("198.51.100.20:5060");
    for i in 0..3 {
        let now = t0 + Duration::from_secs(50 * i);
        e.handle_datagram(now, p.flow, p.register(3600).as_bytes());
        let out = pump(&mut e, now, &mut reg, &|_| true);
        let ok = &out.iter().find(|(_, m)| m.starts_with("SIP/2.0 200")).unwrap().1;
        assert_eq!(contact_expires(ok), 600);
    }
    assert_eq!(reg.registers, 3);
    run_timers(&mut e, t0 + Duration::from_secs(100), t0 + Duration::from_secs(160), &mut reg, &|_| true);
    assert_eq!(e.stats().nat_pings_sent, 0);
    assert_eq!(e.nat_registrations(), 0);
}

#[test]
fn rfc5626_instance_and_reg_id_key_the_binding_across_call_ids() {
    let t0 = Instant::now();
    let mut e = Engine::new(config(), t0);
    let mut reg = Registrar { max_expires: 3600, location: HashMap::new(), registers: 0 };
    let inst = ";+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1";
    let mut p = Phone::new(5);
    let first = p.register(3600).replace(";expires=3600", &format!("{inst};expires=3600"));
    e.handle_datagram(t0, p.flow, first.as_bytes());
    pump(&mut e, t0, &mut reg, &|_| true);
    let token = reg.location.values().next().unwrap().clone();
    // Rebooted: a new Call-ID, a new port; the same instance.
    p.call_id = "after-reboot".into();
    p.cseq = 0;
    p.flow.remote = sa(&format!("{ROUTER}:52000"));
    let again = p.register(3600).replace(";expires=3600", &format!("{inst};expires=3600"));
    e.handle_datagram(t0, p.flow, again.as_bytes());
    pump(&mut e, t0, &mut reg, &|_| true);
    assert_eq!(reg.location.values().next().unwrap(), &token);
    assert_eq!(e.sizes().3, 1);
}

#[test]
fn with_nat_off_registrations_are_relayed_with_the_registrars_expiry() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.external.nat = NatMode::Off;
    let mut e = Engine::new(cfg, t0);
    let mut reg = Registrar { max_expires: 3600, location: HashMap::new(), registers: 0 };
    let mut p = Phone::new(6);
    for i in 0..2 {
        let now = t0 + Duration::from_secs(50 * i);
        e.handle_datagram(now, p.flow, p.register(3600).as_bytes());
        let out = pump(&mut e, now, &mut reg, &|_| true);
        let ok = &out.iter().find(|(_, m)| m.starts_with("SIP/2.0 200")).unwrap().1;
        assert_eq!(contact_expires(ok), 3600);
    }
    assert_eq!(reg.registers, 2);
    assert_eq!(e.stats().registers_absorbed, 0);
}
