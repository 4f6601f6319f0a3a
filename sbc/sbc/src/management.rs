//! The management listener (`[management] listen`): HTTP/1.1 `GET /health` and `GET /metrics`
//! on an address of its own, off the SIP sides, served by a thread of its own with its own
//! tokio runtime, so a SIP flood on the engine's thread does not starve it.
//!
//! * `/health`: 200 `ok …` while the engine loop beats ([`crate::notify::Beat`], every second
//!   from the loop itself; stale after [`STALE`]), else 503 saying how long ago it last beat.
//!   The listener only exists once every SIP, STUN and admin socket is bound (it is started at
//!   the end of `Daemon::start`), so "up" also means "bound".
//! * `/metrics`: the `sbc stats` snapshot, asked of the engine through the admin channel
//!   (the one source of truth; [`crate::metrics`] renders it), and the process's CPU and
//!   memory from `sysinfo`. An engine that does not answer within [`STATS_TIMEOUT`] gives
//!   `sbc_engine_up 0` and the process figures, still 200 (so the alert can see it).
//!
//! Bounded: [`MAX_CONNECTIONS`] at once (the next is answered 503 and closed), a request head of
//! at most [`MAX_REQUEST`] bytes (431 beyond) read within [`REQUEST_TIME`] (408 after), one
//! request per connection (`Connection: close`). A small responder rather than hyper: two fixed
//! GET routes need no router, chunking or keep-alive, and every limit is visible here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::admin::{self, AdminCommand};
use crate::metrics::{self, Engine, Process};
use crate::notify::Beat;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// The most bytes of a request head (request line and headers).
pub const MAX_REQUEST: usize = 8192;
/// The time a client has to send its request head, and then to take the answer.
pub const REQUEST_TIME: Duration = Duration::from_secs(5);
/// How long `/metrics` waits for the engine's stats.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(2);
/// A beat older than this makes `/health` 503.
pub const STALE: Duration = Duration::from_secs(5);

/// What the handlers read.
struct Ctx {
    admin: mpsc::Sender<admin::Request>,
    beat: Beat,
    process: std::sync::Mutex<ProcessSampler>,
}

/// Binds `addr` now (a failure stops the daemon's start: the operator asked for it), then
/// serves it on a thread of its own until the process ends.
pub fn start(addr: SocketAddr, admin: mpsc::Sender<admin::Request>, beat: Beat) -> anyhow::Result<()> {
    let std_listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("binding management.listen {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let ctx = Arc::new(Ctx { admin, beat, process: std::sync::Mutex::new(ProcessSampler::new()) });
    std::thread::Builder::new()
        .name("sbc-management".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "management listener: no runtime; /health and /metrics are down");
                    return;
                }
            };
            rt.block_on(async move {
                match TcpListener::from_std(std_listener) {
                    Ok(l) => serve(l, ctx).await,
                    Err(e) => tracing::error!(error = %e, "management listener: /health and /metrics are down"),
                }
            });
        })
        .context("management thread")?;
    tracing::info!(%addr, "management listener: GET /health, GET /metrics");
    Ok(())
}

async fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let _ = stream.try_write(&response(503, "text/plain", b"busy: too many management connections\n", false));
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            handle(stream, &ctx).await;
            drop(permit);
        });
    }
}

/// One connection: one request, one answer, closed.
async fn handle(mut stream: TcpStream, ctx: &Ctx) {
    let answer = match tokio::time::timeout(REQUEST_TIME, read_head(&mut stream)).await {
        Err(_) => response(408, "text/plain", b"request head not received in time\n", false),
        Ok(Err(Refused::TooLarge)) => response(431, "text/plain", b"request head too large\n", false),
        Ok(Err(Refused::Closed)) => return,
        Ok(Ok(head)) => match parse(&head) {
            Ok(req) => route(req, ctx).await,
            Err(code) => response(code, "text/plain", b"bad request\n", false),
        },
    };
    let _ = tokio::time::timeout(REQUEST_TIME, async {
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[derive(Debug)]
enum Refused {
    TooLarge,
    Closed,
}

/// Reads until the blank line ending the head, at most [`MAX_REQUEST`] bytes.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, Refused> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| Refused::Closed)?;
        if n == 0 {
            return Err(Refused::Closed);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(end) = find_head_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() >= MAX_REQUEST {
            return Err(Refused::TooLarge);
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    if buf.len() > MAX_REQUEST {
        return buf.get(..MAX_REQUEST).and_then(find_head_end);
    }
    buf.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

/// A request this listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    path: Path,
    head_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Health,
    Metrics,
    Other,
}

/// The request line (RFC 9112 §3): `METHOD SP target SP HTTP/1.x`; an error is the status.
fn parse(head: &[u8]) -> Result<Request, u16> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| 400u16)?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(505);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(405),
    };
    let path = match target.split('?').next().unwrap_or_default() {
        "/health" => Path::Health,
        "/metrics" => Path::Metrics,
        _ => Path::Other,
    };
    Ok(Request { path, head_only })
}

async fn route(req: Request, ctx: &Ctx) -> Vec<u8> {
    match req.path {
        Path::Health => {
            let (code, body) = health(ctx.beat.age(Instant::now()));
            response(code, "text/plain; charset=utf-8", body.as_bytes(), req.head_only)
        }
        Path::Metrics => {
            let stats = engine_stats(&ctx.admin).await;
            let engine = match &stats {
                Some(text) => Engine::Stats(text),
                None => Engine::NoAnswer,
            };
            let process = ctx.process.lock().ok().and_then(|mut p| p.sample());
            let page = metrics::render(&engine, process.as_ref(), ctx.beat.age(Instant::now()).as_secs_f64());
            response(200, "text/plain; version=0.0.4; charset=utf-8", page.as_bytes(), req.head_only)
        }
        Path::Other => response(404, "text/plain", b"not found: GET /health or /metrics\n", req.head_only),
    }
}

/// The `/health` answer for a loop that last beat `age` ago.
fn health(age: Duration) -> (u16, String) {
    if age <= STALE {
        (200, format!("ok: engine loop beat {:.1} s ago; SIP, STUN and admin sockets bound\n", age.as_secs_f64()))
    } else {
        (503, format!("engine loop stalled: last beat {:.1} s ago (limit {} s)\n", age.as_secs_f64(), STALE.as_secs()))
    }
}

/// The `sbc stats` text from the engine, or `None` when it does not answer in time.
async fn engine_stats(admin: &mpsc::Sender<admin::Request>) -> Option<String> {
    let (reply, answer) = oneshot::channel();
    let asked = tokio::time::timeout(STATS_TIMEOUT, async {
        admin.send(admin::Request { command: AdminCommand::Stats, reply }).await.ok()?;
        answer.await.ok()?.ok()
    });
    asked.await.ok().flatten()
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

fn response(code: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let allow = if code == 405 { "Allow: GET, HEAD\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(code),
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// This process's CPU and memory through `sysinfo` (CPU percent: since the previous sample).
struct ProcessSampler {
    /// None when sysinfo could not start (no /proc): no process figures.
    system: Option<sysinfo::System>,
    pid: Option<sysinfo::Pid>,
}

impl ProcessSampler {
    fn new() -> ProcessSampler {
        ProcessSampler { system: sysinfo::System::new().ok(), pid: sysinfo::get_current_pid().ok() }
    }

    fn sample(&mut self) -> Option<Process> {
        use sysinfo::{ProcessRefreshKind, ProcessesToUpdate};
        let pid = self.pid?;
        let system = self.system.as_mut()?;
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let p = system.process(pid)?;
        Some(Process {
            cpu_seconds: p.accumulated_cpu_time() as f64 / 1000.0,
            cpu_percent: f64::from(p.cpu_usage()),
            resident_bytes: p.memory(),
            virtual_bytes: p.virtual_memory(),
            start_time: p.start_time(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_line_decides_the_route_or_the_error() {
        let get = |p| Ok(Request { path: p, head_only: false });
        assert_eq!(parse(b"GET /health HTTP/1.1\r\nHost: x\r\n"), get(Path::Health));
        assert_eq!(parse(b"GET /metrics?x=1 HTTP/1.0\r\n"), get(Path::Metrics));
        assert_eq!(parse(b"GET /other HTTP/1.1\r\n"), get(Path::Other));
        assert_eq!(parse(b"HEAD /metrics HTTP/1.1\r\n"), Ok(Request { path: Path::Metrics, head_only: true }));
        assert_eq!(parse(b"POST /metrics HTTP/1.1\r\n"), Err(405));
        assert_eq!(parse(b"GET /metrics HTTP/2\r\n"), Err(505));
        assert_eq!(parse(b"GET /metrics\r\n"), Err(400));
        assert_eq!(parse(b"GET  /metrics HTTP/1.1\r\n"), Err(400));
        assert_eq!(parse(b"\xff\xfe\r\n"), Err(400));
    }

    #[test]
    fn health_is_503_once_the_beat_is_stale() {
        assert_eq!(health(Duration::from_millis(300)).0, 200);
        let (code, body) = health(Duration::from_secs(9));
        assert_eq!(code, 503);
        assert_eq!(body, "engine loop stalled: last beat 9.0 s ago (limit 5 s)\n");
    }

    #[test]
    fn a_response_carries_its_length_and_closes() {
        let r = String::from_utf8(response(405, "text/plain", b"no\n", false)).unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nAllow: GET, HEAD\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\nno\n"
        );
        let head = String::from_utf8(response(200, "text/plain", b"body", true)).unwrap();
        assert!(head.ends_with("Content-Length: 4\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"), "{head}");
    }

    #[test]
    fn this_process_is_sampled() {
        let p = ProcessSampler::new().sample().expect("sysinfo reads /proc/self");
        assert!(p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes, "{p:?}");
        assert!(p.start_time > 1_600_000_000, "{p:?}");
    }

    fn get(addr: SocketAddr, raw: &[u8]) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// The whole listener over a real socket, with a fake engine answering `stats` behind the
    /// admin channel: routes, limits (head size, connection cap), and a hung engine.
    #[test]
    fn the_listener_serves_health_and_metrics_and_enforces_its_limits() {
        let (tx, mut rx) = mpsc::channel::<admin::Request>(4);
        let engine_alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let alive = engine_alive.clone();
        std::thread::spawn(move || {
            while let Some(req) = rx.blocking_recv() {
                if alive.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = req.reply.send(Ok("sip.requests_in 5\nstate.dialogs 2\n".into()));
                } else {
                    std::mem::forget(req); // hung: never answers
                }
            }
        });
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let beat = Beat::new(Instant::now());
        start(addr, tx, beat).unwrap();

        let h = get(addr, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n") && h.contains("\r\n\r\nok: engine loop beat"), "{h}");
        let m = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(m.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4"), "{m}");
        assert!(m.contains("\nsbc_sip_requests_in_total 5\n") && m.contains("\nsbc_engine_up 1\n"), "{m}");
        assert!(m.contains("\nprocess_resident_memory_bytes "), "{m}");
        assert!(get(addr, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(get(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_REQUEST));
        assert!(get(addr, huge.as_bytes()).starts_with("HTTP/1.1 431 "));

        // MAX_CONNECTIONS idle clients hold every slot: the next is refused at once with 503.
        let idle: Vec<_> = (0..MAX_CONNECTIONS).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        assert!(get(addr, b"GET /health HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 503 "));
        drop(idle);
        std::thread::sleep(Duration::from_millis(300));
        assert!(get(addr, b"GET /health HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));

        // An engine that stops answering: /metrics still answers, within the stats timeout.
        engine_alive.store(false, std::sync::atomic::Ordering::Relaxed);
        let t = Instant::now();
        let m = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(m.contains("\nsbc_engine_up 0\n") && !m.contains("sbc_sip_"), "{m}");
        assert!(t.elapsed() < STATS_TIMEOUT + Duration::from_secs(2));
    }
}
