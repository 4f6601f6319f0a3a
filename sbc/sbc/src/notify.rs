//! The service manager's side channel (systemd's `sd_notify(3)` protocol, spoken directly: one
//! datagram per message on the unix socket named by `NOTIFY_SOCKET`, a path or, with a leading
//! `@`, an abstract name), and the engine loop's heartbeat.
//!
//! [`Heartbeat`] is ticked from the engine loop itself (`run.rs`), so a hung engine stops both
//! signs of life: `WATCHDOG=1` to systemd (which then kills and restarts the daemon,
//! `WatchdogSec=` in sbc.service) and the [`Beat`] the management listener's `/health` reads.
//! Nothing is sent when `NOTIFY_SOCKET` is absent (a daemon started by hand, or by a test).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the engine loop beats (and the most the watchdog's ping period can be).
pub const BEAT: Duration = Duration::from_secs(1);

/// Where the notifications go.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; `None` when it is unset or unusable (logged).
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let name = name.to_string_lossy().into_owned();
        match Notifier::connect(&name) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(socket = %name, error = %e, "NOTIFY_SOCKET unusable: systemd will not hear READY or WATCHDOG");
                None
            }
        }
    }

    /// `name`: a filesystem path, or `@name` for the abstract namespace (Linux).
    pub fn connect(name: &str) -> std::io::Result<Notifier> {
        use std::os::linux::net::SocketAddrExt;
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
            None if name.starts_with('/') => SocketAddr::from_pathname(name)?,
            None => {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "neither a path nor @abstract"));
            }
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier { socket, addr })
    }

    /// Sends one message (newline-separated `KEY=value` assignments). A full or missing
    /// socket is not the daemon's problem: logged at debug, never blocking the engine.
    pub fn send(&self, msg: &str) {
        if let Err(e) = self.socket.send_to_addr(msg.as_bytes(), &self.addr) {
            tracing::debug!(error = %e, msg, "sd_notify not delivered");
        }
    }
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`, for this process when
/// `WATCHDOG_PID` is set); `None` when there is no watchdog.
pub fn watchdog_from_env() -> Option<Duration> {
    watchdog(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    let usec: u64 = usec?.parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec))
}

/// The time of the engine loop's last beat, shared with whoever judges liveness.
#[derive(Clone)]
pub struct Beat {
    epoch: Instant,
    /// Milliseconds after `epoch`.
    last_ms: Arc<AtomicU64>,
}

impl Beat {
    pub fn new(now: Instant) -> Beat {
        Beat { epoch: now, last_ms: Arc::new(AtomicU64::new(0)) }
    }

    fn store(&self, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the loop last beat.
    pub fn age(&self, now: Instant) -> Duration {
        let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }
}

/// The engine loop's sign of life: ticked by the loop, it stores the [`Beat`] and sends
/// `WATCHDOG=1` once half the watchdog period has passed since the last one.
pub struct Heartbeat {
    notifier: Option<Notifier>,
    /// Half of `WATCHDOG_USEC`: the most time between two pings.
    ping_every: Option<Duration>,
    last_ping: Instant,
    beat: Beat,
    tick: tokio::time::Interval,
}

impl Heartbeat {
    /// From the environment systemd gives the service (nothing is sent without it). Must be
    /// called inside the tokio runtime (the tick is a tokio interval).
    pub fn from_env(now: Instant) -> Heartbeat {
        Heartbeat::new(Notifier::from_env(), watchdog_from_env(), now)
    }

    pub fn new(notifier: Option<Notifier>, watchdog: Option<Duration>, now: Instant) -> Heartbeat {
        let ping_every = watchdog.filter(|_| notifier.is_some()).map(|w| w / 2);
        let period = ping_every.map_or(BEAT, |p| p.min(BEAT)).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let beat = Beat::new(now);
        beat.store(now);
        Heartbeat { notifier, ping_every, last_ping: now, beat, tick }
    }

    /// The shared beat, for `/health`.
    pub fn beat(&self) -> Beat {
        self.beat.clone()
    }

    /// The watchdog period's half, when systemd watches.
    pub fn ping_every(&self) -> Option<Duration> {
        self.ping_every
    }

    /// Resolves when the loop should call [`Heartbeat::on_tick`].
    pub async fn tick(&mut self) {
        self.tick.tick().await;
    }

    /// The loop is alive at `now`.
    pub fn on_tick(&mut self, now: Instant) {
        self.beat.store(now);
        if let (Some(n), Some(every)) = (&self.notifier, self.ping_every)
            && now.saturating_duration_since(self.last_ping) + self.tick.period() >= every
        {
            n.send("WATCHDOG=1");
            self.last_ping = now;
        }
    }

    /// Every socket is bound and the loop is about to serve: `READY=1` with a status line.
    pub fn ready(&mut self, status: &str) {
        if let Some(n) = &self.notifier {
            n.send(&format!("READY=1\nSTATUS={status}"));
        }
    }

    /// A `STATUS=` line (shown by `systemctl status sbc`).
    pub fn status(&self, status: &str) {
        if let Some(n) = &self.notifier {
            n.send(&format!("STATUS={status}"));
        }
    }

    pub fn stopping(&self) {
        if let Some(n) = &self.notifier {
            n.send("STOPPING=1\nSTATUS=stopping");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_period_is_for_this_pid_only_and_must_be_positive() {
        assert_eq!(watchdog(Some("10000000"), None, 7), Some(Duration::from_secs(10)));
        assert_eq!(watchdog(Some("10000000"), Some("7"), 7), Some(Duration::from_secs(10)));
        assert_eq!(watchdog(Some("10000000"), Some("8"), 7), None, "another process's watchdog");
        assert_eq!(watchdog(Some("0"), None, 7), None);
        assert_eq!(watchdog(Some("soon"), None, 7), None);
        assert_eq!(watchdog(None, None, 7), None);
    }

    #[test]
    fn a_notify_name_is_a_path_or_an_abstract_name() {
        assert!(Notifier::connect("relative/path").is_err());
        assert!(Notifier::connect("@sbc-test-abstract").is_ok());
    }

    fn recv_all(sock: &UnixDatagram) -> Vec<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        got
    }

    /// A fake NOTIFY_SOCKET on an abstract name: READY=1 with its status, then WATCHDOG=1 at
    /// half the period (2 s of real ticks), and nothing while the loop does not tick.
    #[tokio::test]
    async fn ready_then_a_watchdog_ping_every_half_period_while_the_loop_ticks() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sbc-notify-test-{}", std::process::id());
        let server = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        server.set_nonblocking(true).unwrap();
        let start = Instant::now();
        let notifier = Notifier::connect(&format!("@{name}")).unwrap();
        let mut hb = Heartbeat::new(Some(notifier), Some(Duration::from_millis(400)), start);
        assert_eq!(hb.ping_every(), Some(Duration::from_millis(200)));
        hb.ready("serving");
        assert_eq!(recv_all(&server), ["READY=1\nSTATUS=serving"]);
        // 2 s of loop: ticks every 200 ms (half of 400 ms, below BEAT), a ping on each.
        let mut now = start;
        for _ in 0..10 {
            hb.tick().await;
            now = Instant::now();
            hb.on_tick(now);
        }
        let pings = recv_all(&server);
        assert!(pings.len() >= 9 && pings.iter().all(|p| p == "WATCHDOG=1"), "{pings:?}");
        assert!(hb.beat().age(now) < Duration::from_millis(2), "the beat is stored in milliseconds");
        // A hung loop does not tick: no pings, and the beat grows old.
        assert!(recv_all(&server).is_empty());
        assert!(hb.beat().age(now + Duration::from_secs(3)) >= Duration::from_millis(2999));
        hb.stopping();
        assert_eq!(recv_all(&server), ["STOPPING=1\nSTATUS=stopping"]);
    }

    #[test]
    fn without_a_notify_socket_there_is_no_watchdog_period() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _g = rt.enter();
        let hb = Heartbeat::new(None, Some(Duration::from_secs(10)), Instant::now());
        assert_eq!(hb.ping_every(), None);
    }
}
