//! The registration cache (RFC 3261 §10; RFC 5626 for flows): every registration that passed
//! through the SBC, by the opaque token the registrar stores as its Contact. A request from the
//! other side to that token is delivered to the UA's real Contact over the flow it registered
//! from (its source address and port, transport and connection) — the way a phone behind NAT is
//! reached at all.
//!
//! For a UA behind NAT ([`crate::nat`]) the cache also keeps the NAT binding open and spares the
//! registrar:
//! * the UA is granted a short expiry (`phone_expiry`, e.g. 60 s) so it refreshes often;
//! * a refresh from the same flow, the same Call-ID with a higher CSeq and the same Contacts, while
//!   the registrar's own registration still outlives the next refresh, is answered here and never
//!   reaches the registrar ([`Registrations::absorb`]): the registrar sees one refresh per its own
//!   expiry, not one a minute;
//! * over UDP it is pinged with OPTIONS every `ping_interval`; `ping_failures` unanswered pings in
//!   a row end the binding.
//!
//! A changed flow, Contact or Call-ID always goes to the registrar (which authenticates it), and
//! a binding's flow changes only when the registrar accepts the REGISTER that moved it — an
//! unauthenticated REGISTER cannot steer a phone's calls elsewhere.
//!
//! Every binding has an expiry (the phone's, plus a small grace); the table has a limit.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::flow::{Flow, Side};
use crate::nat::Evidence;
use crate::sip::uri::Transport;

/// How long past the expiry it granted a binding is kept (a refresh on its way).
const GRACE: Duration = Duration::from_secs(10);
/// A refresh is absorbed only while the registrar's registration outlives the next expected
/// refresh by at least this much (room for one forwarded REGISTER with its challenge).
const CORE_MARGIN: Duration = Duration::from_secs(32);

/// The cache's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegConfig {
    /// Expiry granted to UAs behind NAT; None keeps the registrar's.
    pub phone_expiry: Option<Duration>,
    /// OPTIONS pings to UAs behind NAT over UDP; None: no pings.
    pub ping_interval: Option<Duration>,
    /// Unanswered pings in a row that end a binding.
    pub ping_failures: u32,
    /// Bindings kept at most.
    pub max: usize,
}

impl Default for RegConfig {
    fn default() -> Self {
        RegConfig { phone_expiry: None, ping_interval: None, ping_failures: 3, max: 100_000 }
    }
}

/// A registration that passed through the SBC: the registrar on the other side stores our
/// token URI; a request to that URI is delivered to the UA's real Contact over its flow.
#[derive(Debug, Clone)]
pub struct Binding {
    pub token: String,
    /// The side the registering UA is on.
    pub side: Side,
    /// The UA's own Contact URI (without angle brackets).
    pub contact: Vec<u8>,
    pub flow: Flow,
    /// Until the registrar confirms, a binding lives for one transaction timeout.
    pub confirmed: bool,
    /// The binding is forgotten at this time (the phone's expiry plus a grace).
    pub expires: Instant,
    /// Why the UA was judged to be behind NAT, if it was.
    pub nat: Option<Evidence>,
    /// When the registrar's registration of our token ends (once confirmed).
    pub core_expires: Option<Instant>,
    /// The REGISTER dialog (RFC 3261 §10.2.4: refreshes reuse the Call-ID, CSeq increases).
    pub call_id: Vec<u8>,
    pub cseq: u32,
    /// A flow and Contact waiting for the registrar's 2xx before they replace the current ones.
    pending: Option<(Flow, Vec<u8>)>,
    ping_failures: u32,
    ping_scheduled: bool,
}

impl Binding {
    /// Pinged: behind NAT, over UDP (TCP and TLS keep their own connection alive).
    fn pinged(&self) -> bool {
        self.nat.is_some() && self.flow.transport == Transport::Udp
    }
}

/// A REGISTER on its way to the registrar: what it says about one Contact.
#[derive(Debug, Clone)]
pub struct Registering<'a> {
    pub token: &'a str,
    pub side: Side,
    pub contact: Vec<u8>,
    pub flow: Flow,
    pub nat: Option<Evidence>,
    pub call_id: &'a [u8],
    pub cseq: u32,
}

/// The cache is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegStats {
    /// REGISTER refreshes answered by the SBC (never reached the registrar).
    pub absorbed: u64,
    /// OPTIONS pings sent, and those that got no answer.
    pub pings_sent: u64,
    pub pings_unanswered: u64,
    /// Bindings ended because pings went unanswered or the flow failed.
    pub lost: u64,
}

#[derive(Debug, Default)]
pub struct Registrations {
    cfg: RegConfig,
    bindings: HashMap<String, Binding>,
    /// (due, token), in due order: every binding has the same interval, so a FIFO is sorted.
    pings: VecDeque<(Instant, String)>,
    pub stats: RegStats,
}

impl Registrations {
    pub fn new(cfg: RegConfig) -> Registrations {
        Registrations { cfg, ..Registrations::default() }
    }
    pub fn len(&self) -> usize {
        self.bindings.len()
    }
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
    /// Bindings of UAs judged to be behind NAT.
    pub fn nat_len(&self) -> usize {
        self.bindings.values().filter(|b| b.nat.is_some()).count()
    }
    pub fn get(&self, token: &str) -> Option<&Binding> {
        self.bindings.get(token)
    }
    pub fn contains(&self, token: &str) -> bool {
        self.bindings.contains_key(token)
    }

    /// A REGISTER passing through to the registrar. A new binding takes the flow at once
    /// (pending the registrar's answer until `pending`); a known one keeps its flow and Contact
    /// until the registrar accepts the change ([`Registrations::confirm`]).
    pub fn register(&mut self, r: Registering<'_>, pending: Instant) -> Result<(), Full> {
        if let Some(b) = self.bindings.get_mut(r.token) {
            if b.flow != r.flow || b.contact != r.contact {
                b.pending = Some((r.flow, r.contact));
            }
            b.nat = r.nat;
            b.call_id = r.call_id.to_vec();
            b.cseq = b.cseq.max(r.cseq);
            b.expires = b.expires.max(pending);
            return Ok(());
        }
        if self.bindings.len() >= self.cfg.max {
            return Err(Full);
        }
        self.bindings.insert(
            r.token.to_owned(),
            Binding {
                token: r.token.to_owned(),
                side: r.side,
                contact: r.contact,
                flow: r.flow,
                confirmed: false,
                expires: pending,
                nat: r.nat,
                core_expires: None,
                call_id: r.call_id.to_vec(),
                cseq: r.cseq,
                pending: None,
                ping_failures: 0,
                ping_scheduled: false,
            },
        );
        Ok(())
    }

    /// The registrar granted `granted` seconds: the binding is confirmed (a pending flow or
    /// Contact now applies), and the UA is told the returned expiry — short when it is behind
    /// NAT. Returns None for an unknown token.
    pub fn confirm(&mut self, now: Instant, token: &str, granted: u32) -> Option<(u32, &Binding)> {
        let cfg = self.cfg;
        let b = self.bindings.get_mut(token)?;
        b.confirmed = true;
        if let Some((flow, contact)) = b.pending.take() {
            b.flow = flow;
            b.contact = contact;
        }
        b.ping_failures = 0;
        b.core_expires = Some(now + Duration::from_secs(u64::from(granted)));
        let phone = match (b.nat, cfg.phone_expiry) {
            (Some(_), Some(p)) => granted.min(u32::try_from(p.as_secs()).unwrap_or(u32::MAX)),
            _ => granted,
        };
        b.expires = now + Duration::from_secs(u64::from(phone)) + GRACE;
        if let Some(interval) = cfg.ping_interval
            && b.pinged()
            && !b.ping_scheduled
        {
            b.ping_scheduled = true;
            self.pings.push_back((now + interval, token.to_owned()));
        }
        Some((phone, &*b))
    }

    /// A refresh the SBC can answer itself: every token is a confirmed binding of a UA behind
    /// NAT with a shortened expiry, from the same flow and Contact, in the same REGISTER dialog
    /// with a higher CSeq, asking for a non-zero expiry, and the registrar's registration outlives
    /// the next refresh. Returns the expiry granted (the same for every token), after refreshing
    /// the bindings; None: forward it to the registrar.
    pub fn absorb(
        &mut self,
        now: Instant,
        flow: &Flow,
        call_id: &[u8],
        cseq: u32,
        contacts: &[(&str, &[u8])],
        requested: u32,
    ) -> Option<u32> {
        let phone = self.cfg.phone_expiry?;
        if contacts.is_empty() || requested == 0 {
            return None;
        }
        let grant = u32::try_from(phone.as_secs()).unwrap_or(u32::MAX).min(requested);
        let next_refresh = now + Duration::from_secs(u64::from(grant)) + CORE_MARGIN;
        let ok = contacts.iter().all(|(token, contact)| {
            self.bindings.get(*token).is_some_and(|b| {
                b.confirmed
                    && b.nat.is_some()
                    && b.pending.is_none()
                    && b.flow == *flow
                    && b.contact == *contact
                    && b.call_id == call_id
                    // Equal: a retransmission of the refresh answered last (its 200 was lost).
                    && cseq >= b.cseq
                    && b.core_expires.is_some_and(|c| c > next_refresh)
            })
        });
        if !ok {
            return None;
        }
        for (token, _) in contacts {
            if let Some(b) = self.bindings.get_mut(*token) {
                b.cseq = cseq;
                b.expires = now + Duration::from_secs(u64::from(grant)) + GRACE;
            }
        }
        self.stats.absorbed += 1;
        Some(grant)
    }

    /// The registrar refused: bindings it never confirmed go; the others drop the change.
    pub fn refused(&mut self, tokens: &[String]) {
        for t in tokens {
            match self.bindings.get_mut(t) {
                Some(b) if !b.confirmed => {
                    self.bindings.remove(t);
                }
                Some(b) => b.pending = None,
                None => {}
            }
        }
    }

    /// An unREGISTER accepted, or a binding the registrar no longer lists: gone at once.
    pub fn remove(&mut self, token: &str) {
        self.bindings.remove(token);
    }

    /// Forgets every binding past its expiry.
    pub fn expire(&mut self, now: Instant) {
        self.bindings.retain(|_, b| b.expires > now);
    }

    /// The next binding due for a ping at `now`: its token, flow and Contact. The binding is
    /// rescheduled one interval later; call repeatedly until None.
    pub fn next_ping(&mut self, now: Instant) -> Option<(String, Flow, Vec<u8>)> {
        let interval = self.cfg.ping_interval?;
        while let Some((due, _)) = self.pings.front() {
            if *due > now {
                return None;
            }
            let (_, token) = self.pings.pop_front()?;
            let Some(b) = self.bindings.get_mut(&token) else { continue };
            if !b.pinged() {
                b.ping_scheduled = false;
                continue;
            }
            self.pings.push_back((now + interval, token.clone()));
            self.stats.pings_sent += 1;
            return Some((token, b.flow, b.contact.clone()));
        }
        None
    }

    /// The UA answered a ping (any response: it is there).
    pub fn ping_answered(&mut self, token: &str) {
        if let Some(b) = self.bindings.get_mut(token) {
            b.ping_failures = 0;
        }
    }

    /// A ping went unanswered; true when the binding ended (`ping_failures` in a row).
    pub fn ping_unanswered(&mut self, token: &str) -> bool {
        self.stats.pings_unanswered += 1;
        let limit = self.cfg.ping_failures.max(1);
        let Some(b) = self.bindings.get_mut(token) else { return false };
        b.ping_failures += 1;
        if b.ping_failures >= limit {
            self.bindings.remove(token);
            self.stats.lost += 1;
            return true;
        }
        false
    }

    /// The transport says the UA's flow is dead (ICMP unreachable, a reset connection): every
    /// binding on it ends. Returns how many.
    pub fn flow_failed(&mut self, flow: &Flow) -> usize {
        let before = self.bindings.len();
        self.bindings.retain(|_, b| b.flow != *flow);
        let n = before - self.bindings.len();
        self.stats.lost += n as u64;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(remote: &str) -> Flow {
        Flow {
            side: Side::External,
            transport: Transport::Udp,
            local: "203.0.113.1:5060".parse().unwrap(),
            remote: remote.parse().unwrap(),
        }
    }

    fn cfg() -> RegConfig {
        RegConfig {
            phone_expiry: Some(Duration::from_secs(60)),
            ping_interval: Some(Duration::from_secs(15)),
            ping_failures: 3,
            max: 10,
        }
    }

    fn reg<'a>(token: &'a str, f: Flow, cseq: u32) -> Registering<'a> {
        Registering {
            token,
            side: Side::External,
            contact: b"sip:alice@192.168.1.2".to_vec(),
            flow: f,
            nat: Some(Evidence::ViaAddress),
            call_id: b"cid",
            cseq,
        }
    }

    #[test]
    fn a_nated_phone_is_granted_the_short_expiry_and_refreshes_are_absorbed_until_the_core_needs_one() {
        let t0 = Instant::now();
        let mut r = Registrations::new(cfg());
        let f = flow("198.51.100.20:40000");
        r.register(reg("r1", f, 1), t0 + Duration::from_secs(32)).unwrap();
        let (granted, _) = r.confirm(t0, "r1", 3600).unwrap();
        assert_eq!(granted, 60);
        let contacts: [(&str, &[u8]); 1] = [("r1", b"sip:alice@192.168.1.2")];
        let mut absorbed = 0;
        let mut cseq = 2;
        let mut now = t0;
        loop {
            now += Duration::from_secs(55);
            if now > t0 + Duration::from_secs(3600) {
                break;
            }
            if r.absorb(now, &f, b"cid", cseq, &contacts, 3600).is_some() {
                absorbed += 1;
            } else {
                // The registrar is asked again before its registration runs out.
                assert!(t0 + Duration::from_secs(3600) - now <= Duration::from_secs(60) + CORE_MARGIN);
                break;
            }
            cseq += 1;
        }
        assert_eq!(absorbed, 63);
    }

    #[test]
    fn a_refresh_from_a_changed_flow_or_call_id_or_an_old_cseq_is_not_absorbed() {
        let t0 = Instant::now();
        let mut r = Registrations::new(cfg());
        let f = flow("198.51.100.20:40000");
        r.register(reg("r1", f, 5), t0).unwrap();
        r.confirm(t0, "r1", 3600).unwrap();
        let c: [(&str, &[u8]); 1] = [("r1", b"sip:alice@192.168.1.2")];
        let now = t0 + Duration::from_secs(50);
        assert_eq!(r.absorb(now, &flow("198.51.100.20:40001"), b"cid", 6, &c, 3600), None);
        assert_eq!(r.absorb(now, &f, b"other", 6, &c, 3600), None);
        assert_eq!(r.absorb(now, &f, b"cid", 4, &c, 3600), None);
        assert_eq!(r.absorb(now, &f, b"cid", 6, &c, 0), None, "an unREGISTER goes to the registrar");
        let other: [(&str, &[u8]); 1] = [("r1", b"sip:alice@192.168.1.3")];
        assert_eq!(r.absorb(now, &f, b"cid", 6, &other, 3600), None);
        assert_eq!(r.absorb(now, &f, b"cid", 6, &c, 3600), Some(60));
    }

    #[test]
    fn a_new_flow_replaces_the_old_one_only_when_the_registrar_accepts_it() {
        let t0 = Instant::now();
        let mut r = Registrations::new(cfg());
        let old = flow("198.51.100.20:40000");
        let new = flow("198.51.100.20:40999");
        r.register(reg("r1", old, 1), t0).unwrap();
        r.confirm(t0, "r1", 3600).unwrap();
        r.register(reg("r1", new, 2), t0).unwrap();
        assert_eq!(r.get("r1").unwrap().flow, old, "not before the registrar's answer");
        r.refused(&["r1".to_string()]);
        assert_eq!(r.get("r1").unwrap().flow, old, "a refused REGISTER changes nothing");
        r.register(reg("r1", new, 3), t0).unwrap();
        r.confirm(t0, "r1", 3600).unwrap();
        assert_eq!(r.get("r1").unwrap().flow, new);
        assert_eq!(r.len(), 1, "replaced, not accumulated");
    }

    #[test]
    fn unanswered_pings_end_the_binding_and_an_answer_resets_the_count() {
        let t0 = Instant::now();
        let mut r = Registrations::new(cfg());
        r.register(reg("r1", flow("198.51.100.20:40000"), 1), t0).unwrap();
        r.confirm(t0, "r1", 3600).unwrap();
        assert_eq!(r.next_ping(t0 + Duration::from_secs(14)), None);
        let (tok, f, _) = r.next_ping(t0 + Duration::from_secs(15)).unwrap();
        assert_eq!((tok.as_str(), f.remote.port()), ("r1", 40000));
        assert!(!r.ping_unanswered("r1"));
        assert!(!r.ping_unanswered("r1"));
        r.ping_answered("r1");
        assert!(!r.ping_unanswered("r1"));
        assert!(!r.ping_unanswered("r1"));
        assert!(r.ping_unanswered("r1"));
        assert!(!r.contains("r1"));
        assert_eq!(r.stats.lost, 1);
        // The queue skips what is gone.
        assert_eq!(r.next_ping(t0 + Duration::from_secs(100)), None);
    }

    #[test]
    fn the_table_is_bounded_and_expires() {
        let t0 = Instant::now();
        let mut r = Registrations::new(cfg());
        for i in 0..10 {
            r.register(reg(&format!("r{i}"), flow("198.51.100.20:40000"), 1), t0 + Duration::from_secs(32)).unwrap();
        }
        assert_eq!(r.register(reg("r10", flow("198.51.100.20:40000"), 1), t0), Err(Full));
        r.expire(t0 + Duration::from_secs(33));
        assert!(r.is_empty());
    }

    #[test]
    fn a_ua_not_behind_nat_keeps_the_registrars_expiry_and_is_not_pinged() {
        let t0 = Instant::now();
        let mut r = Registrations::new(cfg());
        let mut x = reg("r1", flow("198.51.100.7:5060"), 1);
        x.nat = None;
        r.register(x, t0).unwrap();
        assert_eq!(r.confirm(t0, "r1", 3600).unwrap().0, 3600);
        assert_eq!(r.next_ping(t0 + Duration::from_secs(3600)), None);
    }
}
