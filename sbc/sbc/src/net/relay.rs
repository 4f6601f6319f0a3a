//! The media relay's data plane, off the SIP engine's thread: one UDP socket per port of
//! `[media] ports`, bound once at start on the address of the side its pair faces
//! (`PortPool::pairs`: pairs alternate sides), and `workers` threads that each own an epoll set
//! over a share of the sockets (by pair). A worker's round: wait for readable sockets, read up to
//! [`PER_SOCKET`] datagrams from each with one `recvmmsg` (at most [`SLOTS`] a round, so every
//! call gets its turn under overload and the kernel sheds the excess from the socket queues),
//! take the sessions' lock once for the whole round (`Sessions::on_packet` per datagram: latching,
//! the verdict, counters), release it, and send the forwards with one `sendmmsg` per sending
//! socket, never blocking (a full send queue drops, counted). Worker 0 also sweeps idle sessions
//! (`Sessions::handle_timeout`) about once a second.
//!
//! Why bind the whole range up front: the socket table never changes, so workers read it without
//! a lock, the SIP engine never makes a syscall when it allocates ports, and no packet can arrive
//! before its socket exists. The cost is one descriptor per port (RLIMIT_NOFILE is raised to
//! fit, or the start fails naming `media.ports`) and a socket per idle port.
//!
//! A later XDP fast path for latched plain-RTP flows plugs in at the verdict: a `Forward` whose
//! endpoints are both latched is what it would install.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use sbc_media::session::{PerSide, PortPool, Sessions, Verdict};

/// Datagrams read from one socket per round (one `recvmmsg`).
const PER_SOCKET: usize = 16;
/// Datagrams handled per round, under one lock of the sessions.
const SLOTS: usize = 256;
/// Readable sockets taken per `epoll_wait`.
const EVENTS: usize = 64;
/// Receive buffer per datagram: RTP over UDP stays under an Ethernet MTU; a longer datagram is
/// truncated by the kernel, and dropped (counted) rather than forwarded cut.
const RX_BYTES: usize = 2048;
/// How long a worker waits for packets before it looks at the stop flag and the sweep.
const WAIT_MS: u16 = 200;
/// How often idle sessions are swept.
const SWEEP: Duration = Duration::from_secs(1);
/// Descriptors kept free for everything else of the daemon (SIP, TCP, admin).
const FD_HEADROOM: u64 = 1024;

/// The relay's own counters (the sessions count verdicts; these count the sockets' side).
#[derive(Debug, Default)]
pub struct RelayCounters {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    /// Forwards the kernel refused or could not queue (send buffer full): shed, never waited for.
    pub send_dropped: AtomicU64,
    /// Datagrams longer than [`RX_BYTES`].
    pub truncated: AtomicU64,
    /// Rounds that filled every slot (the relay is behind; the socket queues absorb or shed).
    pub full_rounds: AtomicU64,
}

/// The running relay; dropping it stops the workers (within [`WAIT_MS`]).
pub struct RelayWorkers {
    stop: Arc<AtomicBool>,
    pub counters: Arc<RelayCounters>,
    sockets: usize,
    workers: usize,
}

impl Drop for RelayWorkers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl RelayWorkers {
    /// The `media.relay_*` lines of `sbc stats`.
    pub fn stats_text(&self) -> String {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "media.relay_sockets {}\nmedia.relay_workers {}\nmedia.relay_received {}\nmedia.relay_sent {}\n\
             media.relay_send_dropped {}\nmedia.relay_truncated {}\nmedia.relay_full_rounds {}\n",
            self.sockets,
            self.workers,
            get(&c.received),
            get(&c.sent),
            get(&c.send_dropped),
            get(&c.truncated),
            get(&c.full_rounds),
        )
    }
}

/// Every relay socket, by port − `low`: immutable once bound, shared by all workers.
struct Table {
    low: u16,
    sockets: Vec<Option<UdpSocket>>,
    /// Per port as `sockets`: bound on an IPv6 address.
    v6: Vec<bool>,
}

impl Table {
    fn get(&self, port: u16) -> Option<&UdpSocket> {
        self.sockets.get(usize::from(port.checked_sub(self.low)?))?.as_ref()
    }

    fn is_v6(&self, port: u16) -> bool {
        port.checked_sub(self.low).and_then(|i| self.v6.get(usize::from(i))).copied().unwrap_or(false)
    }
}

/// Binds every port of `ports` on its side's address (raising RLIMIT_NOFILE to fit) and starts
/// `workers` threads. Errors (a port in use, an address not on this host, too few descriptors)
/// come back before any thread starts.
pub fn start(
    sessions: Arc<Mutex<Sessions>>,
    address: PerSide<IpAddr>,
    ports: (u16, u16),
    workers: usize,
) -> io::Result<RelayWorkers> {
    let pool = PortPool::new(ports.0, ports.1);
    let count = pool.capacity() * 2;
    raise_fd_limit(count as u64)?;
    let low = ports.0;
    let mut sockets: Vec<Option<UdpSocket>> = Vec::new();
    sockets.resize_with(usize::from(ports.1 - low) + 1, || None);
    let mut v6 = vec![false; sockets.len()];
    for (rtp, side) in pool.pairs() {
        for port in [rtp, rtp + 1] {
            let addr = SocketAddr::new(*address.get(side), port);
            let sock = relay_socket(addr).map_err(|e| super::annotate(e, "media relay", addr))?;
            if let Some(slot) = sockets.get_mut(usize::from(port - low)) {
                *slot = Some(sock);
            }
            if let Some(slot) = v6.get_mut(usize::from(port - low)) {
                *slot = addr.is_ipv6();
            }
        }
    }
    let table = Arc::new(Table { low, sockets, v6 });
    let workers = workers.max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(RelayCounters::default());
    for w in 0..workers {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        // A worker takes every `workers`-th pair (both its ports), so one call's two directions
        // usually run on two workers.
        for (rtp, _) in pool.pairs().filter(|(rtp, _)| usize::from((rtp - low) / 2) % workers == w) {
            for port in [rtp, rtp + 1] {
                if let Some(s) = table.get(port) {
                    epoll.add(s, EpollEvent::new(EpollFlags::EPOLLIN, u64::from(port)))?;
                }
            }
        }
        let (table, sessions, stop, counters) = (table.clone(), sessions.clone(), stop.clone(), counters.clone());
        std::thread::Builder::new()
            .name(format!("media-{w}"))
            .spawn(move || worker(&epoll, &table, &sessions, &stop, &counters, w == 0))?;
    }
    Ok(RelayWorkers { stop, counters, sockets: count, workers })
}

/// Makes room for `sockets` more descriptors: the soft limit is raised (up to the hard one).
fn raise_fd_limit(sockets: u64) -> io::Result<()> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let need = sockets.saturating_add(FD_HEADROOM);
    if soft >= need {
        return Ok(());
    }
    if hard < need {
        return Err(io::Error::other(format!(
            "media.ports: {sockets} relay sockets need RLIMIT_NOFILE >= {need}, the hard limit is {hard} \
             (narrow the range or raise the limit, e.g. LimitNOFILE= in the unit)"
        )));
    }
    setrlimit(Resource::RLIMIT_NOFILE, need.max(soft), hard)?;
    Ok(())
}

fn relay_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    Ok(super::bind_udp(addr, |s| s.set_nonblocking(true))?.into())
}

/// One datagram of a round: where it arrived, from whom, its length and buffer slot.
#[derive(Clone, Copy)]
struct Rx {
    port: u16,
    src: SocketAddr,
    len: usize,
    slot: usize,
}

/// One forward: the sending port, the destination, the buffer slot and length.
#[derive(Clone, Copy)]
struct Tx {
    from_port: u16,
    to: SocketAddr,
    slot: usize,
    len: usize,
}

fn worker(
    epoll: &Epoll,
    table: &Table,
    sessions: &Mutex<Sessions>,
    stop: &AtomicBool,
    counters: &RelayCounters,
    sweeps: bool,
) {
    let mut events = [EpollEvent::empty(); EVENTS];
    let mut bufs = vec![[0u8; RX_BYTES]; SLOTS];
    // One set of receive headers per address family. The kernel writes each header's
    // msg_namelen back with the length of the name it returned, and nix does not reset it
    // between calls: a header that last held an IPv4 source (16 bytes) would cut the next IPv6
    // source to its first 8 address bytes (2001:db8:1::10 read as 2001:db8:1::), and the latch
    // would learn that. A socket's family never changes, so each set only ever sees one length.
    let mut rx_hdrs_v4 = MultiHeaders::<SockaddrStorage>::preallocate(PER_SOCKET, None);
    let mut rx_hdrs_v6 = MultiHeaders::<SockaddrStorage>::preallocate(PER_SOCKET, None);
    let mut tx_hdrs = MultiHeaders::<SockaddrStorage>::preallocate(SLOTS, None);
    let mut rx: Vec<Rx> = Vec::with_capacity(SLOTS);
    let mut tx: Vec<Tx> = Vec::with_capacity(SLOTS);
    let mut next_sweep = Instant::now() + SWEEP;
    while !stop.load(Ordering::Relaxed) {
        let ready = match epoll.wait(&mut events, WAIT_MS) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => {
                tracing::error!(error = %e, "media relay epoll_wait");
                std::thread::sleep(Duration::from_millis(10));
                0
            }
        };
        rx.clear();
        let mut used = 0;
        for ev in events.get(..ready).unwrap_or_default() {
            let Ok(port) = u16::try_from(ev.data()) else { continue };
            let Some(sock) = table.get(port) else { continue };
            let Some(free) = bufs.get_mut(used..) else { break };
            let take = free.len().min(PER_SOCKET);
            if take == 0 {
                counters.full_rounds.fetch_add(1, Ordering::Relaxed);
                break;
            }
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                free.iter_mut().take(take).map(|b| [IoSliceMut::new(b.as_mut_slice())]).collect();
            let rx_hdrs = if table.is_v6(port) { &mut rx_hdrs_v6 } else { &mut rx_hdrs_v4 };
            let msgs = match recvmmsg(sock.as_raw_fd(), rx_hdrs, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None) {
                Ok(msgs) => msgs,
                Err(_) => continue,
            };
            let first = used;
            for (i, m) in msgs.enumerate() {
                let slot = first + i;
                used = slot + 1;
                if m.flags.contains(MsgFlags::MSG_TRUNC) {
                    counters.truncated.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if let Some(src) = m.address.as_ref().and_then(super::std_addr) {
                    rx.push(Rx { port, src, len: m.bytes, slot });
                }
            }
        }
        let now = Instant::now();
        tx.clear();
        if !rx.is_empty() {
            counters.received.fetch_add(rx.len() as u64, Ordering::Relaxed);
            let Ok(mut s) = sessions.lock() else { return };
            for r in &rx {
                let data = bufs.get(r.slot).and_then(|b| b.get(..r.len)).unwrap_or_default();
                if let Verdict::Forward { from_port, to } = s.on_packet(now, r.port, r.src, data) {
                    tx.push(Tx { from_port, to, slot: r.slot, len: r.len });
                }
            }
        }
        if sweeps && now >= next_sweep {
            if let Ok(mut s) = sessions.lock() {
                s.handle_timeout(now);
            }
            next_sweep = now + SWEEP;
        }
        if !tx.is_empty() {
            // One sendmmsg per sending socket: a round's forwards grouped by port.
            tx.sort_by_key(|t| t.from_port);
            send_all(table, &mut tx_hdrs, &tx, &bufs, counters);
        }
    }
}

/// Sends every forward, one `sendmmsg` per run of one sending port, never waiting.
fn send_all(
    table: &Table,
    hdrs: &mut MultiHeaders<SockaddrStorage>,
    tx: &[Tx],
    bufs: &[[u8; RX_BYTES]],
    counters: &RelayCounters,
) {
    for run in tx.chunk_by(|a, b| a.from_port == b.from_port) {
        let Some(first) = run.first() else { continue };
        let Some(sock) = table.get(first.from_port) else {
            counters.send_dropped.fetch_add(run.len() as u64, Ordering::Relaxed);
            continue;
        };
        let mut from = 0;
        while from < run.len() {
            let Some(rest) = run.get(from..) else { break };
            let iovs: Vec<[IoSlice<'_>; 1]> = rest
                .iter()
                .map(|t| [IoSlice::new(bufs.get(t.slot).and_then(|b| b.get(..t.len)).unwrap_or_default())])
                .collect();
            let dests: Vec<Option<SockaddrStorage>> = rest.iter().map(|t| Some(SockaddrStorage::from(t.to))).collect();
            match sendmmsg(sock.as_raw_fd(), hdrs, iovs.iter(), &dests, [], MsgFlags::MSG_DONTWAIT) {
                Ok(sent) => {
                    let n = sent.count();
                    counters.sent.fetch_add(n as u64, Ordering::Relaxed);
                    if n == 0 {
                        counters.send_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    from += n.max(1);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => {
                    // The send queue is full: shed the rest of this run rather than wait.
                    counters.send_dropped.fetch_add((run.len() - from) as u64, Ordering::Relaxed);
                    break;
                }
                Err(_) => {
                    // This destination refused (e.g. an ICMP error reported on the socket): skip it.
                    counters.send_dropped.fetch_add(1, Ordering::Relaxed);
                    from += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sbc_media::session::{Config, LatchConfig, Side};

    fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 0];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 160]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xd5; 160]);
        p
    }

    fn sdp(at: SocketAddr) -> String {
        let (ip, port) = (at.ip(), at.port());
        format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\n")
    }

    /// The relay on loopback (outside 127.0.0.1, core 127.0.0.2), on the first free range of a few.
    fn relay(sessions: &Arc<Mutex<Sessions>>) -> (RelayWorkers, (u16, u16)) {
        let address = PerSide { external: "127.0.0.1".parse().unwrap(), internal: "127.0.0.2".parse().unwrap() };
        for base in (0..40).map(|i| 20000 + 16 * i + (std::process::id() % 64) as u16 * 400) {
            let ports = (base, base + 7);
            *sessions.lock().unwrap() = Sessions::new(cfg(ports));
            if let Ok(r) = start(sessions.clone(), address, ports, 2) {
                return (r, ports);
            }
        }
        panic!("no free port range for the relay");
    }

    fn cfg(ports: (u16, u16)) -> Config {
        Config {
            address: PerSide { external: "127.0.0.1".parse().unwrap(), internal: "127.0.0.2".parse().unwrap() },
            ports,
            max_sessions: 4,
            max_streams: 2,
            trust_private: PerSide { external: true, internal: true },
            is_private: |_| false,
            latch: LatchConfig::default(),
            idle: Duration::from_secs(60),
            sdp_limits: sbc_media::sdp::Limits::default(),
            origin_seed: 1,
        }
    }

    #[test]
    fn rtp_crosses_both_ways_from_the_anchored_ports_and_unknown_ports_are_dropped() {
        let sessions = Arc::new(Mutex::new(Sessions::new(cfg((1024, 1031)))));
        let (relay, _) = relay(&sessions);
        let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
        let core = UdpSocket::bind("127.0.0.2:0").unwrap();
        for s in [&phone, &core] {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let (ext, int) = {
            let mut s = sessions.lock().unwrap();
            let now = Instant::now();
            s.offer(now, "d", Side::External, sdp(phone.local_addr().unwrap()).as_bytes()).unwrap();
            s.answer(now, "d", Side::Internal, sdp(core.local_addr().unwrap()).as_bytes()).unwrap();
            (s.ports("d", Side::External)[0].unwrap(), s.ports("d", Side::Internal)[0].unwrap())
        };
        let mut buf = [0u8; 2048];
        for seq in 0..20u16 {
            phone.send_to(&rtp(seq, 7), ("127.0.0.1", ext)).unwrap();
            let (n, from) = core.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&rtp(seq, 7)[..], SocketAddr::from(([127, 0, 0, 2], int))));
            core.send_to(&rtp(seq, 9), ("127.0.0.2", int)).unwrap();
            let (n, from) = phone.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&rtp(seq, 9)[..], SocketAddr::from(([127, 0, 0, 1], ext))));
        }
        let c = sessions.lock().unwrap().counters("d").unwrap();
        assert_eq!((c.packets.external, c.packets.internal), (20, 20));
        // A port of the range no session holds: read and dropped, nothing sent.
        sessions.lock().unwrap().end("d");
        phone.send_to(&rtp(99, 7), ("127.0.0.1", ext)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while sessions.lock().unwrap().stats().dropped_unknown_port == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(sessions.lock().unwrap().stats().dropped_unknown_port, 1);
        assert_eq!(relay.counters.sent.load(Ordering::Relaxed), 40);
        assert!(relay.stats_text().contains("media.relay_sockets 8\n"), "{}", relay.stats_text());
    }

    #[test]
    fn descriptor_limit_is_raised_to_fit_or_refused_naming_the_range() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        raise_fd_limit(64).unwrap();
        assert!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0 >= 64 + FD_HEADROOM);
        if hard < u64::MAX - FD_HEADROOM {
            let e = raise_fd_limit(hard).unwrap_err().to_string();
            assert!(e.contains("media.ports") && e.contains("RLIMIT_NOFILE"), "{e}");
        }
    }
}
