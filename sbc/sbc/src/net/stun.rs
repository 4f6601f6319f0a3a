//! The dedicated STUN ports, served off the SIP engine's thread:
//! - UDP (`[stun] udp`): `workers` threads, each with its own socket per address bound with
//!   `SO_REUSEPORT` (the kernel spreads sources over them by a hash of the 4-tuple), each reading
//!   a batch with one `recvmmsg` (blocking until one datagram, then whatever else is queued),
//!   answering the batch with the rate limiter locked once, and sending every answer with one
//!   `sendmmsg` ([`super::batch`], shared with the SIP UDP sockets).
//! - TCP (`[stun] tcp`): one thread with its own single-threaded runtime; RFC 8489 §6.2.2
//!   framing (`sbc_media::stun::frame_stream`): messages bounded in size, connections in number,
//!   a message must complete within the idle time, and a stream that is not STUN is closed.
//!
//! Both hand every message to the shared [`StunService`] (rate limit, Binding server, counters).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sbc_media::stun::{self, StreamFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::batch::{RecvBatch, SendBatch};
use crate::logsum;
use crate::stun::{Outcome, StunService};

/// Datagrams read (and answers sent) per system call.
const BATCH: usize = 64;

/// A receive buffer one octet longer than the largest STUN message taken: a longer datagram is
/// cut to this and then refused as too long, never mistaken for a shorter one.
const RX_BYTES: usize = 1281;

/// How long a blocked worker waits before it looks at the stop flag.
const RX_TIMEOUT: Duration = Duration::from_millis(500);

/// The TCP side's bounds.
#[derive(Debug, Clone, Copy)]
pub struct TcpBounds {
    pub max_connections: u64,
    /// A message must arrive whole within this long of the previous one (or the connection's
    /// start), else the connection is closed.
    pub idle: Duration,
}

/// The running STUN workers; dropping this asks them to stop (they notice within
/// [`RX_TIMEOUT`]; the TCP thread at once).
pub struct StunWorkers {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tcp_stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl Drop for StunWorkers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(tx) = &self.tcp_stop {
            let _ = tx.send(true);
        }
    }
}

/// Binds every dedicated STUN address (`workers` UDP sockets per UDP address) and starts the
/// threads. Errors (an address in use, no `SO_REUSEPORT`) come back before any thread starts.
pub fn start(
    service: Arc<StunService>,
    udp: &[SocketAddr],
    tcp: &[SocketAddr],
    workers: usize,
    bounds: TcpBounds,
) -> io::Result<StunWorkers> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut sockets = Vec::new();
    for addr in udp {
        for _ in 0..workers.max(1) {
            sockets.push(reuseport_udp(*addr).map_err(|e| super::annotate(e, "stun udp", *addr))?);
        }
    }
    let mut listeners = Vec::new();
    for addr in tcp {
        listeners.push(super::tcp_std_listener(*addr).map_err(|e| super::annotate(e, "stun tcp", *addr))?);
    }
    for (i, sock) in sockets.into_iter().enumerate() {
        let (service, stop) = (service.clone(), stop.clone());
        std::thread::Builder::new().name(format!("stun-udp-{i}")).spawn(move || udp_worker(&sock, &service, &stop))?;
    }
    let mut tcp_stop = None;
    if !listeners.is_empty() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tcp_stop = Some(tx);
        std::thread::Builder::new()
            .name("stun-tcp".into())
            .spawn(move || tcp_thread(listeners, service, bounds, rx))?;
    }
    Ok(StunWorkers { stop, tcp_stop })
}

fn reuseport_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = super::bind_udp(addr, |s| {
        s.set_reuse_port(true)?;
        super::large_buffers(s);
        s.set_read_timeout(Some(RX_TIMEOUT))
    })?;
    Ok(s.into())
}

/// One worker: read a batch, answer it, send the answers; until asked to stop.
fn udp_worker(sock: &UdpSocket, service: &StunService, stop: &std::sync::atomic::AtomicBool) {
    let fd = sock.as_raw_fd();
    let mut rx = RecvBatch::new(BATCH, RX_BYTES);
    let mut tx = SendBatch::new(BATCH);
    let mut replies: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        match rx.recv(fd, true) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "STUN recvmmsg");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        }
        let now = Instant::now();
        replies.clear();
        let mut limited_from = None;
        {
            let mut limiter = service.lock();
            for (data, src) in rx.datagrams() {
                if !stun::is_stun(data) {
                    service.not_stun();
                    continue;
                }
                match service.handle(&mut limiter, now, data, src) {
                    Outcome::Reply(bytes) => replies.push((bytes, src)),
                    Outcome::Limited => limited_from = Some(src),
                    Outcome::Ignored(_) => {}
                }
            }
        }
        if let Some(src) = limited_from {
            logsum::note_info("stun rate limited", Some(src.ip()), || {
                format!("STUN requests from {src} over the per-source rate: dropped")
            });
        }
        tx.send(fd, &replies, true);
    }
}

/// The TCP thread: its own runtime, one accept loop per address, one task per connection.
fn tcp_thread(
    listeners: Vec<std::net::TcpListener>,
    service: Arc<StunService>,
    bounds: TcpBounds,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "STUN TCP runtime; STUN over TCP is off");
            return;
        }
    };
    rt.block_on(async move {
        for l in listeners {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::spawn(accept_loop(l, service.clone(), bounds));
                }
                Err(e) => tracing::error!(error = %e, "STUN TCP listener"),
            }
        }
        let _ = stop.wait_for(|s| *s).await;
    });
}

async fn accept_loop(listener: TcpListener, service: Arc<StunService>, bounds: TcpBounds) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: wait rather than spin.
                tracing::debug!(error = %e, "STUN TCP accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let open = &service.counters.tcp_connections;
        if open.fetch_add(1, Ordering::Relaxed) >= bounds.max_connections {
            open.fetch_sub(1, Ordering::Relaxed);
            service.counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
            logsum::note("stun tcp connection limit", Some(peer.ip()), || {
                format!("STUN TCP connection from {peer} refused: connection limit reached")
            });
            continue;
        }
        let service = service.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            stun_connection(stream, peer, &service, bounds).await;
            service.counters.tcp_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// One connection (RFC 8489 §6.2.2): frame, answer each request on the same connection, close
/// on garbage, on a message over the size limit, or when a message does not complete in time.
async fn stun_connection(mut stream: TcpStream, peer: SocketAddr, service: &StunService, bounds: TcpBounds) {
    let limits = stun::Limits::default();
    let mut buf: Vec<u8> = Vec::with_capacity(RX_BYTES);
    let mut chunk = [0u8; 2048];
    let mut deadline = tokio::time::Instant::now() + bounds.idle;
    loop {
        match stun::frame_stream(&buf, &limits) {
            StreamFrame::Message(n) => {
                let outcome = {
                    let mut limiter = service.lock();
                    service.handle(&mut limiter, Instant::now(), buf.get(..n).unwrap_or_default(), peer)
                };
                match outcome {
                    Outcome::Reply(bytes) => match tokio::time::timeout_at(deadline, stream.write_all(&bytes)).await {
                        Ok(Ok(())) => {}
                        _ => return,
                    },
                    Outcome::Limited => {}
                    Outcome::Ignored(why) => {
                        if matches!(why, stun::IgnoreReason::Malformed(_)) {
                            return close_invalid(service, peer, &why.to_string());
                        }
                    }
                }
                buf.drain(..n);
                deadline = tokio::time::Instant::now() + bounds.idle;
            }
            StreamFrame::Invalid(e) => return close_invalid(service, peer, &e.to_string()),
            StreamFrame::Incomplete => match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(n)) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            },
        }
    }
}

fn close_invalid(service: &StunService, peer: SocketAddr, why: &str) {
    service.counters.tcp_closed_invalid.fetch_add(1, Ordering::Relaxed);
    logsum::note_info("stun tcp: not STUN", Some(peer.ip()), || {
        format!("STUN TCP connection from {peer} closed: {why}")
    });
}
