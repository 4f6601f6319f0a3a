//! Bans shared by every appliance through Redis (or Valkey, same protocol): `[guard.store]`.
//! Owns the store task (the only code that talks to Redis) and [`Link`], the daemon's side of
//! it. The engine never waits on the store: the daemon pushes what it publishes into a bounded
//! [`Outbox`] (full: the oldest is dropped, and counted) and takes what the store announces
//! from a bounded channel, in its own `select!` branch.
//!
//! Layout in Redis, under the configured key prefix `P`:
//! - `P:ban:<prefix>` (e.g. `sbc:ban:198.51.100.66/32`): the ban as a one-ban state file
//!   (`sbc_policy::guard::persist`, strict parser, escaped text), with a TTL of its remaining
//!   time, so Redis forgets it when it ends;
//! - `P:unban:<prefix>`: a tombstone left by `sbc bans del` (its value: the Unix time of the
//!   deletion; TTL [`TOMBSTONE`]), removed by the next ban of the prefix;
//! - channel `P:bans`: `ban <node>\n<record>` and `unban <node> <prefix>`, for low latency.
//!
//! On every (re)connection the task subscribes first, then SCANs `P:*ban:*` and hands every
//! record and tombstone to the daemon (a tombstone lifts a ban older than it: a deletion
//! missed while away, or while this appliance was stopped), then tells the daemon, which
//! republishes its own bans (those made while the store was away): nothing published meanwhile
//! is missed. A shared ban is applied locally
//! (userspace and XDP) through the policy's exemption check and is not published again;
//! expiries are left to the TTL; `sbc bans del` publishes its unban.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use sbc_policy::Prefix;
use sbc_proto::engine::GuardAction;
use tokio::sync::{Notify, mpsc};

use crate::guard::{self, GuardState};

/// Most operations waiting for the store (a dead store must not grow memory).
const OUTBOX: usize = 4096;
/// Most announcements from the store waiting for the daemon.
const INBOX: usize = 1024;
/// Longest wait for one Redis operation or connection.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Wait between reconnection attempts.
const RETRY: Duration = Duration::from_secs(1);
/// How often the connection is checked when nothing else happens (a store silently gone
/// is noticed within this plus [`IO_TIMEOUT`], then resynchronised on reconnection).
const PING: Duration = Duration::from_secs(5);
/// How long a deletion's tombstone is kept.
const TOMBSTONE: Duration = Duration::from_secs(7 * 86_400);
/// Longest record accepted from the store (one ban: a few hundred bytes).
const MAX_RECORD: usize = 8192;

/// `[guard.store]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `redis://host:port/db` (or `unix:///path`).
    pub url: String,
    pub prefix: String,
    /// This appliance's name in announcements (its own are ignored).
    pub node: String,
}

/// What the daemon asks of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Ban { prefix: Prefix, record: String, ttl: Duration },
    Unban { prefix: Prefix },
}

/// The bounded queue toward the store task.
#[derive(Default)]
struct Outbox {
    ops: Mutex<VecDeque<Op>>,
    notify: Notify,
    dropped: AtomicU64,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Op>> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, op: Op) {
        let mut q = self.lock();
        if q.len() >= OUTBOX {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(op);
        drop(q);
        self.notify.notify_one();
    }
}

/// What the store announces to the daemon.
#[derive(Debug)]
pub enum Incoming {
    /// (Re)connected and resynchronised: time to republish this appliance's own bans.
    Resynced,
    /// A deletion's tombstone: the prefix, the Unix time of the deletion.
    Deleted(Prefix, u64),
    Ban(Vec<u8>),
    Unban(Prefix),
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    connects: AtomicU64,
    published: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
}

/// The daemon's side of the store.
pub struct Link {
    outbox: Arc<Outbox>,
    counters: Arc<Counters>,
    pub incoming: mpsc::Receiver<Incoming>,
    /// Prefixes whose next ban action comes from the store (not published again).
    echo_ban: HashSet<Prefix>,
    /// Prefixes whose next `deleted` unban comes from the store.
    echo_unban: HashSet<Prefix>,
    /// Bans that came from the store (not republished on reconnection).
    shared: HashSet<Prefix>,
    applied: u64,
    refused: u64,
}

/// Bound of the echo sets (each entry is consumed by the action it announces).
const MAX_ECHO: usize = 65_536;

impl Link {
    /// Spawns the store task on the running tokio runtime.
    pub fn start(cfg: &Config) -> anyhow::Result<Link> {
        let client = redis::Client::open(cfg.url.as_str())?;
        let (link, tx) = Link::new();
        tokio::spawn(task(client, cfg.clone(), link.outbox.clone(), link.counters.clone(), tx));
        tracing::info!(store = %redacted(&cfg.url), prefix = %cfg.prefix, node = %cfg.node, "ban store configured");
        Ok(link)
    }

    /// The daemon's side, and the sender the store task feeds it through.
    fn new() -> (Link, mpsc::Sender<Incoming>) {
        let (tx, incoming) = mpsc::channel(INBOX);
        let link = Link {
            outbox: Arc::new(Outbox::default()),
            counters: Arc::new(Counters::default()),
            incoming,
            echo_ban: HashSet::new(),
            echo_unban: HashSet::new(),
            shared: HashSet::new(),
            applied: 0,
            refused: 0,
        };
        (link, tx)
    }

    /// An announcement from the store, applied to the guard.
    pub fn on_incoming(&mut self, g: &guard::Shared, msg: Incoming) {
        let now = Instant::now();
        let mut st = guard::lock(g);
        match msg {
            Incoming::Deleted(prefix, at) => {
                if st.policy.lift_deleted(now, SystemTime::now(), prefix, at).is_some() {
                    remember(&mut self.echo_unban, prefix);
                    tracing::info!(%prefix, deleted_at = at, "ban lifted by another appliance while away");
                }
            }
            Incoming::Resynced => {
                let own: Vec<Prefix> =
                    st.policy.bans(now).iter().map(|b| b.prefix).filter(|p| !self.shared.contains(p)).collect();
                for p in own {
                    self.publish_ban(&st, p, now);
                }
            }
            Incoming::Ban(record) => match st.insert_shared(now, &record) {
                Ok(Some(prefix)) => {
                    self.applied += 1;
                    remember(&mut self.echo_ban, prefix);
                    remember(&mut self.shared, prefix);
                    tracing::info!(%prefix, "ban shared by another appliance applied");
                }
                Ok(None) => {}
                Err(e) => {
                    self.refused += 1;
                    tracing::warn!(error = %e, "ban record from the store refused");
                }
            },
            Incoming::Unban(prefix) => {
                if st.policy.delete(now, prefix).is_some() {
                    remember(&mut self.echo_unban, prefix);
                    tracing::info!(%prefix, "ban lifted by another appliance");
                }
            }
        }
    }

    /// A guard action the daemon applies: a ban made here is published; an operator's unban
    /// (`sbc bans del`) too. Expiries are the store's TTL; what came from the store is not
    /// published again.
    pub fn on_action(&mut self, g: &guard::Shared, action: &GuardAction) {
        let now = Instant::now();
        match action {
            GuardAction::Ban { addr, prefix_len, .. } => {
                let Some(prefix) = Prefix::new(*addr, *prefix_len) else { return };
                if self.echo_ban.remove(&prefix) {
                    return;
                }
                self.shared.remove(&prefix);
                self.publish_ban(&guard::lock(g), prefix, now);
            }
            GuardAction::Unban { addr, prefix_len, reason } => {
                let Some(prefix) = Prefix::new(*addr, *prefix_len) else { return };
                let from_store = self.echo_unban.remove(&prefix);
                self.shared.remove(&prefix);
                if reason == "deleted" && !from_store {
                    self.outbox.push(Op::Unban { prefix });
                }
            }
        }
    }

    fn publish_ban(&self, st: &GuardState, prefix: Prefix, now: Instant) {
        let Some(record) = st.policy.render_ban(&prefix, now, SystemTime::now()) else { return };
        let ttl = st.policy.show(now, prefix.addr()).map_or(Duration::ZERO, |b| b.remaining);
        if !ttl.is_zero() {
            self.outbox.push(Op::Ban { prefix, record, ttl });
        }
    }

    /// `sbc stats` lines.
    pub fn stats_text(&self) -> String {
        let c = &self.counters;
        let queued = self.outbox.lock().len();
        format!(
            "store.connected {}\nstore.connects {}\nstore.published {}\nstore.received {}\nstore.applied {}\n\
             store.refused {}\nstore.errors {}\nstore.queued {queued}\nstore.dropped {}\n",
            c.connected.load(Ordering::Relaxed),
            c.connects.load(Ordering::Relaxed),
            c.published.load(Ordering::Relaxed),
            c.received.load(Ordering::Relaxed),
            self.applied,
            self.refused,
            c.errors.load(Ordering::Relaxed),
            self.outbox.dropped.load(Ordering::Relaxed),
        )
    }
}

fn remember(set: &mut HashSet<Prefix>, p: Prefix) {
    if set.len() >= MAX_ECHO {
        set.clear();
    }
    set.insert(p);
}

/// The URL without its password, for the log.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            format!("{}***{}", url.get(..s + 3).unwrap_or_default(), url.get(at..).unwrap_or_default())
        }
        _ => url.to_string(),
    }
}

fn key(cfg: &Config, prefix: &Prefix) -> String {
    format!("{}:ban:{prefix}", cfg.prefix)
}

fn tombstone_key(cfg: &Config, prefix: &Prefix) -> String {
    format!("{}:unban:{prefix}", cfg.prefix)
}

fn channel(cfg: &Config) -> String {
    format!("{}:bans", cfg.prefix)
}

/// A channel message, or None when it is not one of ours.
fn parse_message(payload: &[u8], own_node: &str) -> Option<Incoming> {
    if payload.len() > MAX_RECORD {
        return None;
    }
    let text = std::str::from_utf8(payload).ok()?;
    let (head, rest) = text.split_once('\n').unwrap_or((text, ""));
    let mut words = head.split(' ');
    let (verb, node) = (words.next()?, words.next()?);
    if node == own_node {
        return None;
    }
    match verb {
        "ban" => Some(Incoming::Ban(rest.as_bytes().to_vec())),
        "unban" => words.next()?.parse().ok().map(Incoming::Unban),
        _ => None,
    }
}

async fn io<T>(f: impl std::future::Future<Output = redis::RedisResult<T>>) -> anyhow::Result<T> {
    Ok(tokio::time::timeout(IO_TIMEOUT, f).await??)
}

/// Connects, serves, and reconnects after [`RETRY`], for the daemon's life.
async fn task(
    client: redis::Client,
    cfg: Config,
    outbox: Arc<Outbox>,
    counters: Arc<Counters>,
    tx: mpsc::Sender<Incoming>,
) {
    let mut down_logged = false;
    loop {
        let e = session(&client, &cfg, &outbox, &counters, &tx, &mut down_logged).await;
        counters.connected.store(0, Ordering::Relaxed);
        if tx.is_closed() {
            return;
        }
        if !down_logged {
            tracing::warn!(error = %e, "ban store unavailable; bans stay local until it is back");
            down_logged = true;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One connection's life; returns why it ended.
async fn session(
    client: &redis::Client,
    cfg: &Config,
    outbox: &Outbox,
    counters: &Counters,
    tx: &mpsc::Sender<Incoming>,
    down_logged: &mut bool,
) -> anyhow::Error {
    let mut pubsub = match io(client.get_async_pubsub()).await {
        Ok(p) => p,
        Err(e) => return e,
    };
    if let Err(e) = io(pubsub.subscribe(channel(cfg))).await {
        return e;
    }
    let mut conn = match io(client.get_multiplexed_async_connection()).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    counters.connected.store(1, Ordering::Relaxed);
    counters.connects.fetch_add(1, Ordering::Relaxed);
    tracing::info!("ban store connected; resynchronising");
    *down_logged = false;
    match resync(&mut conn, cfg, counters, tx).await {
        Ok(n) => tracing::info!(records = n, "ban store resynchronised"),
        Err(e) => return e,
    }
    if tx.send(Incoming::Resynced).await.is_err() {
        return anyhow::anyhow!("daemon stopped");
    }
    let mut messages = pubsub.on_message();
    let mut ping = tokio::time::interval(PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else { return anyhow::anyhow!("subscription closed") };
                if let Some(incoming) = parse_message(msg.get_payload_bytes(), &cfg.node) {
                    counters.received.fetch_add(1, Ordering::Relaxed);
                    if tx.send(incoming).await.is_err() {
                        return anyhow::anyhow!("daemon stopped");
                    }
                }
            }
            _ = ping.tick() => {
                if let Err(e) = io(redis::cmd("PING").query_async::<()>(&mut conn)).await {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    return e;
                }
            }
            _ = outbox.notify.notified() => {
                if let Err(e) = drain(&mut conn, cfg, outbox, counters).await {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    return e;
                }
            }
        }
    }
}

/// Every `P:ban:*` record and `P:unban:*` tombstone to the daemon; returns how many.
async fn resync(
    conn: &mut redis::aio::MultiplexedConnection,
    cfg: &Config,
    counters: &Counters,
    tx: &mpsc::Sender<Incoming>,
) -> anyhow::Result<usize> {
    let pattern = format!("{}:*ban:*", cfg.prefix);
    let tombstone = format!("{}:unban:", cfg.prefix);
    let mut cursor: u64 = 0;
    let mut n = 0;
    // Bounded: at most this many SCAN rounds (each ~1000 keys).
    for _ in 0..1024 {
        let (next, keys): (u64, Vec<String>) =
            io(redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query_async(conn))
                .await?;
        if !keys.is_empty() {
            let values: Vec<Option<Vec<u8>>> = io(redis::cmd("MGET").arg(&keys).query_async(conn)).await?;
            for (k, v) in keys.iter().zip(values) {
                let Some(v) = v.filter(|v| v.len() <= MAX_RECORD) else { continue };
                let incoming = match k.strip_prefix(&tombstone) {
                    Some(p) => {
                        let at = std::str::from_utf8(&v).ok().and_then(|t| t.parse().ok());
                        match (p.parse(), at) {
                            (Ok(p), Some(at)) => Incoming::Deleted(p, at),
                            _ => continue,
                        }
                    }
                    None => Incoming::Ban(v),
                };
                counters.received.fetch_add(1, Ordering::Relaxed);
                n += 1;
                if tx.send(incoming).await.is_err() {
                    anyhow::bail!("daemon stopped");
                }
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(n)
}

/// Sends what the outbox holds; an operation that fails goes back to the front.
async fn drain(
    conn: &mut redis::aio::MultiplexedConnection,
    cfg: &Config,
    outbox: &Outbox,
    counters: &Counters,
) -> anyhow::Result<()> {
    loop {
        let Some(op) = outbox.lock().pop_front() else { return Ok(()) };
        let mut pipe = redis::pipe();
        match &op {
            Op::Ban { prefix, record, ttl } => {
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                pipe.cmd("DEL").arg(tombstone_key(cfg, prefix)).ignore();
                pipe.cmd("SET").arg(key(cfg, prefix)).arg(record).arg("PX").arg(ms).ignore();
                pipe.cmd("PUBLISH").arg(channel(cfg)).arg(format!("ban {}\n{record}", cfg.node)).ignore();
            }
            Op::Unban { prefix } => {
                let at = std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_secs());
                let ms = u64::try_from(TOMBSTONE.as_millis()).unwrap_or(u64::MAX);
                pipe.cmd("DEL").arg(key(cfg, prefix)).ignore();
                pipe.cmd("SET").arg(tombstone_key(cfg, prefix)).arg(at).arg("PX").arg(ms).ignore();
                pipe.cmd("PUBLISH").arg(channel(cfg)).arg(format!("unban {} {prefix}", cfg.node)).ignore();
            }
        }
        if let Err(e) = io(pipe.query_async::<()>(conn)).await {
            let mut q = outbox.lock();
            if q.len() < OUTBOX {
                q.push_front(op);
            }
            return Err(e);
        }
        counters.published.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_messages_parse_and_our_own_are_ignored() {
        let Some(Incoming::Ban(r)) = parse_message(b"ban a\n# sbc bans v1\nend 0\n", "b") else { panic!() };
        assert_eq!(r, b"# sbc bans v1\nend 0\n");
        assert!(parse_message(b"ban b\nx", "b").is_none());
        let Some(Incoming::Unban(p)) = parse_message(b"unban a 198.51.100.0/24", "b") else { panic!() };
        assert_eq!(p.to_string(), "198.51.100.0/24");
        assert!(parse_message(b"unban a nonsense", "b").is_none());
        assert!(parse_message(b"hello", "b").is_none());
        assert!(parse_message(&vec![b'x'; MAX_RECORD + 1], "b").is_none());
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_it() {
        let o = Outbox::default();
        let p: Prefix = "198.51.100.1/32".parse().unwrap();
        for _ in 0..OUTBOX + 3 {
            o.push(Op::Unban { prefix: p });
        }
        assert_eq!(o.lock().len(), OUTBOX);
        assert_eq!(o.dropped.load(Ordering::Relaxed), 3);
    }

    /// The guard's actions, applied as the daemon does (`Daemon::apply` → `Link::on_action`).
    fn pump(link: &mut Link, g: &guard::Shared) {
        loop {
            let action = guard::lock(g).policy.poll_action();
            let action = match action {
                Some(sbc_policy::guard::BanAction::Ban { prefix, until, .. }) => GuardAction::Ban {
                    addr: prefix.addr(),
                    prefix_len: prefix.prefix_len(),
                    until,
                    reason: String::new(),
                },
                Some(sbc_policy::guard::BanAction::Unban { prefix, reason, .. }) => GuardAction::Unban {
                    addr: prefix.addr(),
                    prefix_len: prefix.prefix_len(),
                    reason: reason.as_str().into(),
                },
                None => return,
            };
            link.on_action(g, &action);
        }
    }

    fn queued(link: &Link) -> Vec<String> {
        link.outbox
            .lock()
            .drain(..)
            .map(|op| match op {
                Op::Ban { prefix, .. } => format!("ban {prefix}"),
                Op::Unban { prefix } => format!("unban {prefix}"),
            })
            .collect()
    }

    #[test]
    fn own_bans_and_deletions_are_published_and_the_stores_are_not_echoed() {
        let now = Instant::now();
        let (mut link, _tx) = Link::new();
        let g = GuardState::new(sbc_policy::guard::Config::default(), None, now);
        let other = GuardState::new(sbc_policy::guard::Config::default(), None, now);
        let p = |s: &str| -> Prefix { s.parse().unwrap() };

        // Our own ban and our operator's deletion: published.
        guard::lock(&g).add(now, p("198.51.100.1/32"), 600, "here").unwrap();
        pump(&mut link, &g);
        assert_eq!(queued(&link), ["ban 198.51.100.1/32"]);
        guard::lock(&g).policy.delete(now, p("198.51.100.1/32"));
        pump(&mut link, &g);
        assert_eq!(queued(&link), ["unban 198.51.100.1/32"]);

        // Another appliance's ban, and its deletion: applied, not published again.
        guard::lock(&other).add(now, p("198.51.100.2/32"), 600, "there").unwrap();
        let record = guard::lock(&other).policy.render_ban(&p("198.51.100.2/32"), now, SystemTime::now()).unwrap();
        link.on_incoming(&g, Incoming::Ban(record.into_bytes()));
        pump(&mut link, &g);
        assert!(guard::lock(&g).policy.show(now, "198.51.100.2".parse().unwrap()).is_some());
        assert_eq!(queued(&link), Vec::<String>::new());
        assert_eq!(link.applied, 1);
        link.on_incoming(&g, Incoming::Ban(b"# sbc bans v1\nnonsense\n".to_vec()));
        assert_eq!(link.refused, 1);

        // Reconnected: our own bans are republished, the shared one is not.
        guard::lock(&g).add(now, p("198.51.100.3/32"), 600, "here").unwrap();
        pump(&mut link, &g);
        let _ = queued(&link);
        link.on_incoming(&g, Incoming::Resynced);
        assert_eq!(queued(&link), ["ban 198.51.100.3/32"]);

        link.on_incoming(&g, Incoming::Unban(p("198.51.100.2/32")));
        pump(&mut link, &g);
        assert!(guard::lock(&g).policy.show(now, "198.51.100.2".parse().unwrap()).is_none());
        assert_eq!(queued(&link), Vec::<String>::new());
    }

    #[test]
    fn the_logged_url_hides_the_password() {
        assert_eq!(redacted("redis://:secret@10.0.0.1:6379/0"), "redis://***@10.0.0.1:6379/0");
        assert_eq!(redacted("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
    }
}
