//! The guard in the daemon: the one `sbc_policy::guard::Guard` of the daemon's life, shared
//! (one task, so the lock is never contended) by
//! - [`EdgeGuard`], the engine's one `engine::Guard`: the trunk allowlist's check
//!   ([`TrunkGuard`]) first, then the policy guard fed every external request (method class,
//!   target user, From, User-Agent, credentials, in-dialog, the provider), every final response
//!   to an external requester (the core's 401/403/407 with whether the request carried
//!   credentials) and every malformed message; its [`BanAction`]s become `GuardAction`s, each
//!   logged with jail, reason and evidence;
//! - the daemon: the userspace block check before the engine ([`GuardState::drop_if_banned`]),
//!   the bans into XDP, `sbc bans`, `sbc stats`, `lift_exempt` after an allowlist reload;
//! - the state file ([`StateFile`]): restored at start, written atomically when dirty.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use sbc_policy::Prefix;
use sbc_policy::allowlist::Allowlist;
use sbc_policy::guard::{
    self as policy, BanAction, Decision, Event, Exempt, FinalResponse, MethodClass, NoExempt, Request,
};
use sbc_proto::engine::{Admit, Final, Flow, Guard, GuardAction, Side};
use sbc_proto::sip::message::HeaderName;
use sbc_proto::sip::sanity::Checked;
use sbc_proto::sip::uri;
use sbc_proto::sip::{Method, values};

use crate::trunk::{SharedList, TrunkGuard};

/// Most trunk calls followed to their end (for the per-trunk concurrent-call count).
const MAX_CALLS: usize = 100_000;

/// The policy guard and what the daemon keeps beside it.
pub struct GuardState {
    pub policy: policy::Guard,
    /// The running allowlist (its providers are exempt from bans), when there is one.
    list: Option<SharedList>,
    /// Dialogs of trunk calls → their trunk, until the dialog ends.
    calls: HashMap<String, String>,
}

pub type Shared = Arc<Mutex<GuardState>>;

/// The allowlist now, or none.
struct ListNow(Option<Arc<Allowlist>>);

impl ListNow {
    fn exempt(&self) -> &dyn Exempt {
        match &self.0 {
            Some(l) => l.as_ref(),
            None => &NoExempt,
        }
    }
    /// The provider `ip` belongs to (a trunk is limited per provider, never banned).
    fn trunk(&self, ip: IpAddr) -> Option<&str> {
        self.0.as_ref()?.lookup(ip.to_canonical()).map(|e| e.provider_name.as_str())
    }
}

impl GuardState {
    pub fn new(config: policy::Config, list: Option<SharedList>, now: Instant) -> Shared {
        Arc::new(Mutex::new(GuardState { policy: policy::Guard::new(config, now), list, calls: HashMap::new() }))
    }

    fn list(&self) -> ListNow {
        ListNow(self.list.as_ref().map(|l| l.read().unwrap_or_else(|e| e.into_inner()).clone()))
    }

    /// The userspace block check, before the engine: true when `ip` is banned.
    pub fn drop_if_banned(&mut self, ip: IpAddr) -> bool {
        self.policy.drop_if_banned(ip)
    }

    /// After an allowlist reload: lifts the bans of prefixes now listed.
    pub fn lift_exempt(&mut self) -> usize {
        let list = self.list();
        self.policy.lift_exempt(list.exempt())
    }

    /// A dialog ended: a trunk call ended with it.
    pub fn dialog_ended(&mut self, dialog: &str) {
        if let Some(trunk) = self.calls.remove(dialog) {
            self.policy.handle_event(Instant::now(), &Event::CallEnded { trunk: &trunk }, &NoExempt);
        }
    }

    /// A ban shared through the store: applied unless exempt here (see
    /// `sbc_policy::guard::Guard::insert_shared`); the prefix when the table changed.
    pub fn insert_shared(&mut self, now: Instant, record: &[u8]) -> Result<Option<Prefix>, policy::PersistError> {
        let list = self.list();
        self.policy.insert_shared(now, SystemTime::now(), record, list.exempt())
    }

    /// `sbc bans add`.
    pub fn add(&mut self, now: Instant, prefix: Prefix, secs: u64, reason: &str) -> Result<String, String> {
        let list = self.list();
        let d = std::time::Duration::from_secs(secs);
        self.policy.add(now, prefix, d, reason, list.exempt()).map(|b| format!("{b}\n")).map_err(|e| e.to_string())
    }
}

pub fn lock(shared: &Shared) -> MutexGuard<'_, GuardState> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The engine's guard: the trunk allowlist's check, then the policy guard (external side).
pub struct EdgeGuard {
    pub trunk: Option<TrunkGuard>,
    pub state: Option<Shared>,
}

impl Guard for EdgeGuard {
    fn admit(&mut self, now: Instant, flow: &Flow, req: &Checked<'_>) -> Admit {
        if let Some(t) = self.trunk.as_mut() {
            let a = t.admit(now, flow, req);
            if a != Admit::Accept {
                return a;
            }
        }
        let Some(state) = self.state.as_ref().filter(|_| flow.side == Side::External) else {
            return Admit::Accept;
        };
        let mut st = lock(state);
        let list = st.list();
        let source = flow.remote.ip().to_canonical();
        let fields = RequestFields::of(req);
        let event = Event::Request(Request {
            source,
            class: MethodClass::of(req.method.as_str()),
            in_dialog: req.to_tag.is_some(),
            target_user: fields.target_user.as_deref(),
            from_name: fields.from_name.as_deref(),
            from_user: fields.from_user.as_deref(),
            from_host: fields.from_host.as_deref(),
            user_agent: fields.user_agent.as_deref(),
            credentials: fields.credentials,
            trunk: list.trunk(source),
        });
        match st.policy.handle_event(now, &event, list.exempt()) {
            Decision::Admit => match unserved_domain(st.policy.config(), flow, req) {
                None => Admit::Accept,
                Some(domain) => {
                    let event = Event::UnknownDomain { source, domain: &domain };
                    match st.policy.handle_event(now, &event, list.exempt()) {
                        // This very probe crossed maxretry: the source is banned, send nothing.
                        Decision::Drop { .. } => Admit::Drop,
                        _ => Admit::Reject { code: 404, reason: "Not Found", retry_after: None },
                    }
                }
            },
            Decision::Reject { code, retry_after, .. } => Admit::Reject {
                code,
                reason: "Service Unavailable",
                retry_after: Some(u32::try_from(retry_after.as_secs().max(1)).unwrap_or(u32::MAX)),
            },
            Decision::Drop { .. } => Admit::Drop,
        }
    }

    fn on_final(&mut self, now: Instant, f: &Final<'_>) {
        if f.requester.side != Side::External {
            return;
        }
        // The running allowlist (the guard's state reads the same slot).
        let list = ListNow(self.trunk.as_ref().map(TrunkGuard::list));
        let source = f.requester.remote.ip().to_canonical();
        let to = to_fields(f.to);
        let trunk = list.trunk(source).map(str::to_owned);
        let response = FinalResponse {
            source,
            class: MethodClass::of(f.method.as_str()),
            code: f.code,
            by_sbc: f.by_sbc,
            credentials: f.credentials,
            in_dialog: to.tagged,
            target_user: to.user.as_deref(),
            trunk: trunk.as_deref(),
        };
        // Logged whether or not the guard is enabled: an operator may ban with fail2ban.
        if let Some(kind) = response.auth_failure() {
            log_auth_failure(f, &response, kind);
        }
        let Some(state) = self.state.as_ref() else { return };
        let mut st = lock(state);
        st.policy.handle_event(now, &Event::Final(response), list.exempt());
        // A trunk's new call: followed to its dialog's end, or ended now when it failed.
        if let Some(trunk) = trunk
            && f.method == Method::Invite
            && !to.tagged
        {
            match (f.code, f.dialog) {
                (200..=299, Some(d)) if st.calls.len() < MAX_CALLS => {
                    st.calls.insert(d.to_string(), trunk);
                }
                (200..=299, _) => {}
                _ => {
                    st.policy.handle_event(now, &Event::CallEnded { trunk: &trunk }, &NoExempt);
                }
            }
        }
    }

    fn on_malformed(&mut self, now: Instant, flow: &Flow, what: &str) {
        let Some(state) = self.state.as_ref().filter(|_| flow.side == Side::External) else { return };
        let mut st = lock(state);
        let list = st.list();
        st.policy.handle_event(now, &Event::Malformed { source: flow.remote.ip().to_canonical(), what }, list.exempt());
    }

    fn poll_action(&mut self) -> Option<GuardAction> {
        poll_action(self.state.as_ref()?)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        lock(self.state.as_ref()?).policy.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(s) = self.state.as_ref() {
            lock(s).policy.handle_timeout(now);
        }
    }
}

/// The next ban or unban the policy guard decided, logged with its jail, reason and evidence:
/// what the XDP blocklist and the ban store must learn. Polled by every shard's engine (bans
/// from traffic) and by the daemon itself right after an operator's command or a message from
/// the store (shards may be idle, and a banned source's packets never wake them).
pub fn poll_action(state: &Shared) -> Option<GuardAction> {
    let action = lock(state).policy.poll_action()?;
    Some(match action {
        BanAction::Ban { prefix, until, jail, reason, evidence } => {
            let secs = until.saturating_duration_since(Instant::now()).as_secs();
            tracing::warn!(%prefix, %jail, %reason, %evidence, for_secs = secs, "ban");
            GuardAction::Ban {
                addr: prefix.addr(),
                prefix_len: prefix.prefix_len(),
                until,
                reason: format!("{jail}: {reason}"),
            }
        }
        BanAction::Unban { prefix, reason, jail, ban_reason } => {
            tracing::info!(%prefix, reason = reason.as_str(), %jail, banned_for = %ban_reason, "unban");
            GuardAction::Unban {
                addr: prefix.addr(),
                prefix_len: prefix.prefix_len(),
                reason: reason.as_str().to_string(),
            }
        }
    })
}

/// The `tracing` target of the auth failure lines (`sbc::auth`): a log reader (fail2ban's
/// `sbc-auth` filter, `config/fail2ban/`) counts them, so they are never folded into a
/// summary; [`crate::logsum::auth_line_allowed`] bounds them per source instead.
pub const AUTH_TARGET: &str = "sbc::auth";

/// One line per authentication failure the core answered (see
/// `sbc_policy::guard::FinalResponse::auth_failure`), at WARN (on at the default level):
///
/// ```text
/// 2026-12-02T16:17:51.123456Z  WARN sbc::auth: auth failure from 198.51.100.66 port=5060 transport=udp method=REGISTER code=401 event=auth-failure user="1000"
/// ```
///
/// The source address comes first after a fixed text, so the filter's `<HOST>` is anchored
/// before anything the sender chose; the user (the sender's bytes) is last, bounded and
/// escaped. Nothing of the credentials is logged.
fn log_auth_failure(f: &Final<'_>, r: &FinalResponse<'_>, kind: policy::EventKind) {
    if !crate::logsum::auth_line_allowed(r.source) {
        return;
    }
    let user = r.target_user.map(policy::key::clean).unwrap_or_default();
    tracing::warn!(
        target: AUTH_TARGET,
        "auth failure from {} port={} transport={} method={} code={} event={} user=\"{user}\"",
        r.source,
        f.requester.remote.port(),
        f.requester.transport.as_str(),
        f.method.as_str(),
        r.code,
        kind.as_str(),
    );
}

/// The Request-URI host of an out-of-dialog request for a domain the SBC does not serve
/// (`guard.domains`; see `sbc_policy::guard::Config::serves`), or None. In-dialog requests
/// (their Request-URI is a Contact), ACK (nothing answers it) and CANCEL (it follows its
/// INVITE) are not checked, nor a Request-URI that is not a SIP URI (e.g. tel:).
fn unserved_domain(config: &policy::Config, flow: &Flow, req: &Checked<'_>) -> Option<String> {
    if config.domains.is_empty() || req.to_tag.is_some() || matches!(req.method, Method::Ack | Method::Cancel) {
        return None;
    }
    let uri = uri::SipUri::parse(req.msg.request_uri()).ok()?;
    let host = match &uri.host {
        uri::Host::Ip(ip) => ip.to_string(),
        uri::Host::Name(n) => n.clone(),
    };
    (!config.serves(&host, flow.local.ip())).then_some(host)
}

/// What the guard reads of a request, as text (the sender's bytes: untrusted, and the guard
/// bounds and escapes what it keeps).
#[derive(Debug, Default, PartialEq, Eq)]
struct RequestFields {
    target_user: Option<String>,
    from_name: Option<String>,
    from_user: Option<String>,
    from_host: Option<String>,
    user_agent: Option<String>,
    credentials: bool,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl RequestFields {
    fn of(req: &Checked<'_>) -> RequestFields {
        let msg = &req.msg;
        // REGISTER names its AOR in To (RFC 3261 §10.2); others their target in the Request-URI.
        let target_user = if req.method == Method::Register {
            to_fields(msg.value(HeaderName::To).unwrap_or_default()).user
        } else {
            uri::user_part(msg.request_uri()).map(text)
        };
        let (from_name, from_user, from_host) = msg.value(HeaderName::From).map(from_parts).unwrap_or_default();
        RequestFields {
            target_user,
            from_name,
            from_user,
            from_host,
            user_agent: msg.value(HeaderName::UserAgent).map(text),
            credentials: msg.other("Authorization").is_some() || msg.other("Proxy-Authorization").is_some(),
        }
    }
}

/// A To header's user and whether it has a tag.
struct ToFields {
    user: Option<String>,
    tagged: bool,
}

fn to_fields(v: &[u8]) -> ToFields {
    match values::name_addr(v) {
        Ok(na) => ToFields {
            user: v.get(na.uri).and_then(uri::user_part).map(text),
            tagged: values::has_param(v.get(na.params).unwrap_or_default(), "tag"),
        },
        Err(_) => ToFields { user: None, tagged: false },
    }
}

/// From's display name (unquoted), user and host.
fn from_parts(v: &[u8]) -> (Option<String>, Option<String>, Option<String>) {
    let Ok(na) = values::name_addr(v) else { return (None, None, None) };
    let uri = v.get(na.uri.clone()).unwrap_or_default();
    let name = if na.bracketed {
        let before = v.get(..na.uri.start.saturating_sub(1)).unwrap_or_default();
        let t = text(before);
        let t = t.trim().trim_matches('"').trim();
        (!t.is_empty()).then(|| t.to_string())
    } else {
        None
    };
    let user = uri::user_part(uri).map(text);
    // host: after '@' (or the scheme), up to ':' ';' '?' (an IPv6 reference keeps its brackets).
    let after = match uri.iter().position(|&b| b == b'@') {
        Some(at) => uri.get(at + 1..),
        None => uri.iter().position(|&b| b == b':').and_then(|c| uri.get(c + 1..)),
    }
    .unwrap_or_default();
    let end = if after.first() == Some(&b'[') {
        after.iter().position(|&b| b == b']').map_or(after.len(), |p| p + 1)
    } else {
        after.iter().position(|&b| matches!(b, b':' | b';' | b'?')).unwrap_or(after.len())
    };
    let host = after.get(..end).filter(|h| !h.is_empty()).map(text);
    (name, user, host)
}

/// The ban table's file in the state directory, written as `sbc_policy::guard::persist`
/// describes: temp file, fsync, rename, fsync of the directory.
pub struct StateFile {
    dir: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile { dir: dir.to_path_buf() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Restores the bans at start; a stale temp file is removed, a corrupt file is renamed
    /// `bans.corrupt` and logged. Never fails the start.
    pub fn restore(&self, state: &mut GuardState, now: Instant) {
        let _ = std::fs::remove_file(self.path("bans.tmp"));
        let file = self.path("bans");
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "ban state unreadable; starting without it");
                return;
            }
        };
        let list = state.list();
        match state.policy.restore(now, SystemTime::now(), &bytes, list.exempt()) {
            Ok(n) => tracing::info!(file = %file.display(), restored = n, "bans restored"),
            Err(e) => {
                let aside = self.path("bans.corrupt");
                let moved = std::fs::rename(&file, &aside);
                tracing::error!(
                    file = %file.display(), error = %e, moved_to = %aside.display(), moved = moved.is_ok(),
                    "ban state corrupt; moved aside, starting without it"
                );
            }
        }
    }

    /// Writes the table when it changed since the last write.
    pub fn save_if_dirty(&self, state: &mut GuardState, now: Instant) {
        if !state.policy.take_dirty() {
            return;
        }
        let text = state.policy.render_bans(now, SystemTime::now());
        if let Err(e) = self.write(text.as_bytes()) {
            tracing::error!(dir = %self.dir.display(), error = %e, "ban state not written (bans stay in memory)");
        }
    }

    fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.path("bans.tmp");
        let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.path("bans"))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_parts_reads_svmap_and_phone_froms() {
        assert_eq!(
            from_parts(b"\"sipvicious\"<sip:100@1.1.1.1>;tag=6331"),
            (Some("sipvicious".into()), Some("100".into()), Some("1.1.1.1".into()))
        );
        assert_eq!(
            from_parts(b"Alice <sip:alice@[2001:db8::1]:5060>;tag=x"),
            (Some("Alice".into()), Some("alice".into()), Some("[2001:db8::1]".into()))
        );
        assert_eq!(from_parts(b"sip:example.com;tag=1"), (None, None, Some("example.com".into())));
        assert_eq!(from_parts(b"<<<"), (None, None, None));
    }

    #[test]
    fn to_fields_tell_the_user_and_the_tag() {
        let t = to_fields(b"\"1000\" <sip:1000@203.0.113.1>;tag=abc");
        assert_eq!((t.user.as_deref(), t.tagged), (Some("1000"), true));
        let t = to_fields(b"<sip:203.0.113.1>");
        assert_eq!((t.user.as_deref(), t.tagged), (None, false));
    }

    use sbc_proto::engine::{Config as EngineConfig, Engine, Output};
    use sbc_proto::sip::uri::Transport;

    fn phone() -> Flow {
        Flow {
            side: Side::External,
            transport: Transport::Udp,
            local: "203.0.113.1:5060".parse().unwrap(),
            remote: "198.51.100.66:5060".parse().unwrap(),
        }
    }

    fn register(n: u32, credentials: bool) -> String {
        let auth = if credentials { "Authorization: Digest username=\"1000\", response=\"bad\"\r\n" } else { "" };
        format!(
            "REGISTER sip:203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.66:5060;branch=z9hG4bKc{n}\r\n\
             From: <sip:1000@203.0.113.1>;tag=c\r\nTo: <sip:1000@203.0.113.1>\r\nCall-ID: crack@x\r\n\
             CSeq: {n} REGISTER\r\nContact: <sip:1000@198.51.100.66>\r\n{auth}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    }

    /// The core's 401 to what the SBC forwarded.
    fn challenge(fwd: &str) -> String {
        let h = |name: &str| fwd.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().to_string();
        format!(
            "SIP/2.0 401 Unauthorized\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=core\r\nCall-ID: {}\r\nCSeq: {}\r\n\
             WWW-Authenticate: Digest realm=\"x\", nonce=\"n\"\r\nContent-Length: 0\r\n\r\n",
            h("Via: "),
            h("From: "),
            h("To: "),
            h("Call-ID: "),
            h("CSeq: ")
        )
    }

    /// Through the engine: the core's 401s to REGISTERs with credentials ban the source on the
    /// 5th (the challenges to REGISTERs without credentials do not count), the ban comes out
    /// as a GuardAction, and the next REGISTER is dropped.
    #[test]
    fn the_cores_fifth_401_to_credentials_bans_through_the_engine() {
        let now = Instant::now();
        let mut engine = Engine::new(EngineConfig::example(), now);
        let shared = state();
        engine.set_guard(Box::new(EdgeGuard { trunk: None, state: Some(shared.clone()) }));
        let core = Flow {
            side: Side::Internal,
            transport: Transport::Udp,
            local: "10.99.0.1:5060".parse().unwrap(),
            remote: "10.99.0.10:5070".parse().unwrap(),
        };
        let mut bans = Vec::new();
        for n in 1..=10 {
            engine.handle_datagram(now, phone(), register(n, n % 2 == 0).as_bytes());
            let mut fwd = None;
            while let Some(out) = engine.poll_output() {
                match out {
                    Output::Transmit(t) if t.flow.side == Side::Internal => fwd = String::from_utf8(t.data).ok(),
                    Output::Guard(a) => bans.push((n, a)),
                    Output::Timeout(_) => break,
                    _ => {}
                }
            }
            let Some(fwd) = fwd else { continue };
            engine.handle_datagram(now, core, challenge(&fwd).as_bytes());
            while let Some(out) = engine.poll_output() {
                match out {
                    Output::Guard(a) => bans.push((n, a)),
                    Output::Timeout(_) => break,
                    _ => {}
                }
            }
        }
        assert_eq!(bans.len(), 1, "{bans:?}");
        let (n, action) = &bans[0];
        assert_eq!(*n, 10, "the 5th REGISTER with credentials");
        assert!(
            matches!(action, GuardAction::Ban { addr, prefix_len: 32, reason, .. }
                if *addr == "198.51.100.66".parse::<IpAddr>().unwrap() && reason.starts_with("sip-auth: ")),
            "{action:?}"
        );
        let (requests, dropped) = {
            let st = lock(&shared);
            let c = st.policy.counters();
            (c.requests, c.dropped_banned)
        };
        engine.handle_datagram(now, phone(), register(11, true).as_bytes());
        let c = lock(&shared).policy.counters();
        assert_eq!((c.requests, c.dropped_banned), (requests + 1, dropped + 1), "dropped as banned");
        assert!(lock(&shared).drop_if_banned("198.51.100.66".parse().unwrap()));
    }

    fn options(n: u32, host: &str) -> String {
        format!(
            "OPTIONS sip:100@{host} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.66:5060;branch=z9hG4bKd{n}\r\n\
             From: <sip:probe@198.51.100.66>;tag=p{n}\r\nTo: <sip:100@{host}>\r\nCall-ID: probe{n}@x\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    }

    /// With `guard.domains` set, a request for another domain is answered 404 (RFC 3261
    /// §21.4.5) and counted by the jail of unknown-domain events, which bans on its maxretry-th;
    /// requests for a served domain or the SBC's own address are forwarded.
    #[test]
    fn requests_for_unknown_domains_get_404_and_ban_on_maxretry() {
        let now = Instant::now();
        let raw: policy::config::Raw = toml::from_str(
            "domains = [\"voip.example.com\"]\n[[jail]]\nname = \"sip-garbage\"\nevents = [\"unknown-domain\"]\nmaxretry = 3\n",
        )
        .unwrap();
        let config = policy::config::validate(&raw, "guard").unwrap();
        let shared = GuardState::new(config, None, now);
        let mut engine = Engine::new(EngineConfig::example(), now);
        engine.set_guard(Box::new(EdgeGuard { trunk: None, state: Some(shared.clone()) }));
        // What each request led to: forwarded to the core, answered (status line), or nothing.
        let mut send = |n: u32, host: &str| {
            engine.handle_datagram(now, phone(), options(n, host).as_bytes());
            let (mut out, mut ban) = (String::from("nothing"), false);
            while let Some(o) = engine.poll_output() {
                match o {
                    Output::Transmit(t) if t.flow.side == Side::Internal => out = "forwarded".into(),
                    Output::Transmit(t) => {
                        out = String::from_utf8_lossy(&t.data).lines().next().unwrap_or_default().to_string()
                    }
                    Output::Guard(GuardAction::Ban { reason, .. }) => ban = reason.starts_with("sip-garbage: "),
                    Output::Timeout(_) => break,
                    _ => {}
                }
            }
            (out, ban)
        };
        assert_eq!(send(1, "voip.example.com"), ("forwarded".into(), false));
        assert_eq!(send(2, "203.0.113.1:5060"), ("forwarded".into(), false), "the SBC's own address");
        assert_eq!(send(3, "evil.example"), ("SIP/2.0 404 Not Found".into(), false));
        assert_eq!(send(4, "1.1.1.1"), ("SIP/2.0 404 Not Found".into(), false));
        assert_eq!(send(5, "evil.example"), ("nothing".into(), true), "the 3rd probe bans");
        assert_eq!(send(6, "voip.example.com"), ("nothing".into(), false), "banned");
        let shown = lock(&shared).policy.show(now, "198.51.100.66".parse().unwrap()).expect("banned");
        assert!(shown.evidence.contains("unknown domain \"evil.example\""), "{shown}");
        assert_eq!(lock(&shared).policy.counters().events[policy::EventKind::UnknownDomain as usize], 3);
    }

    /// An allowlist reload listing a banned source lifts its ban (lift_exempt).
    #[test]
    fn a_reload_that_lists_a_banned_source_lifts_its_ban() {
        let now = Instant::now();
        let empty = Allowlist::parse("# sbc-allowlist v1\n203.0.113.20/32 IN 2 \"Other\" 1 ip\n").unwrap();
        let slot: SharedList = Arc::new(std::sync::RwLock::new(Arc::new(empty)));
        let shared = GuardState::new(policy::Config::default(), Some(slot.clone()), now);
        lock(&shared).add(now, "198.51.100.66/32".parse().unwrap(), 600, "x").unwrap();
        assert_eq!(lock(&shared).lift_exempt(), 0);
        let listed = Allowlist::parse("# sbc-allowlist v1\n198.51.100.66/32 IN 1 \"Carrier\" 1 ip\n").unwrap();
        *slot.write().unwrap() = Arc::new(listed);
        assert_eq!(lock(&shared).lift_exempt(), 1);
        assert!(!lock(&shared).drop_if_banned("198.51.100.66".parse().unwrap()));
    }

    fn state() -> Shared {
        GuardState::new(policy::Config::default(), None, Instant::now())
    }

    #[test]
    fn the_state_file_round_trips_and_a_corrupt_one_is_moved_aside() {
        let dir = std::env::temp_dir().join(format!("sbc-guard-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = StateFile::new(&dir);
        let now = Instant::now();
        let a = state();
        let prefix: Prefix = "198.51.100.66/32".parse().unwrap();
        lock(&a).add(now, prefix, 600, "test").unwrap();
        file.save_if_dirty(&mut lock(&a), now);
        assert!(dir.join("bans").exists() && !dir.join("bans.tmp").exists());
        // A restart: the ban is back, and queued for XDP again.
        let b = state();
        file.restore(&mut lock(&b), now);
        let shown = lock(&b).policy.show(now, "198.51.100.66".parse().unwrap()).expect("restored");
        assert!(shown.remaining.as_secs() > 590, "{shown}");
        assert!(matches!(lock(&b).policy.poll_action(), Some(BanAction::Ban { .. })));
        // A corrupt file: moved aside, nothing restored, no panic.
        std::fs::write(dir.join("bans"), b"# sbc bans v1\ngarbage\n").unwrap();
        let c = state();
        file.restore(&mut lock(&c), now);
        assert!(lock(&c).policy.bans(now).is_empty());
        assert!(dir.join("bans.corrupt").exists() && !dir.join("bans").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
