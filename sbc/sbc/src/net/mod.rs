//! Every socket of the daemon lives here (with `xdp`, the only place for syscalls): UDP sockets
//! bound with socket2 and their error queues, TCP listeners and connections, and the connection
//! table. [`conn`] holds the transport seams — `StreamTransport` (TCP; TLS later) and
//! `MessageTransport` (WS, later SCTP) — and the one connection loop that drives both. Readers
//! turn what arrives into [`Input`]s for the engine task; [`Net::send`] puts the engine's
//! transmits on the wire. [`stun`] serves the dedicated STUN ports on threads of their own, [`relay`] the media relay's ports.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sbc_proto::engine::{Flow, Side, Transmit};
use sbc_proto::sip::framer::Limits;
use sbc_proto::sip::uri::Transport;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;

pub mod batch;
mod conn;
pub mod privileges;
pub mod relay;
pub mod stun;

use conn::{ByteStream, Connection, Framing, Tcp, accept_loop, connection};

/// What the socket tasks hand to the engine task.
#[derive(Debug)]
pub enum Input {
    /// One whole message as its transport delimited it, not yet framed: a UDP datagram, or one
    /// frame of a message transport. The engine frames it (size bound, Content-Length optional).
    Datagram { flow: Flow, data: Vec<u8> },
    /// One message the stream framer cut from a connection's bytes.
    Stream { flow: Flow, data: Vec<u8> },
    /// The kernel says `flow` is dead: an ICMP unreachable for a datagram we sent there, or a
    /// TCP connection refused or reset (RFC 3261 §18.4: the transaction layer must know).
    TransportError { flow: Flow, error: io::ErrorKind },
    /// A connection was accepted: what the engine sends to `key` goes to `tx`.
    Opened { key: ConnKey, id: u64, tx: mpsc::Sender<Vec<u8>> },
    /// Connection `id` ended (its table entry goes unless a newer connection replaced it).
    Closed { key: ConnKey, id: u64 },
}

/// A connection is named by its side and the peer's address.
pub type ConnKey = (Side, SocketAddr);

/// A UDP socket bound to `addr` (an IPv6 one is v6-only), `setup` applied before the bind: the
/// one place the SIP, STUN and media sockets are made.
fn bind_udp(addr: SocketAddr, setup: impl FnOnce(&Socket) -> io::Result<()>) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    setup(&s)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Receive and send queues of 4 MiB (capped by net.core.rmem_max/wmem_max): bursts are absorbed
/// instead of dropped (SIP over UDP loses calls when the receive queue overflows).
fn large_buffers(s: &Socket) {
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
}

/// The std address of a nix socket address (IPv4 or IPv6), from `recvmmsg`.
fn std_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    use std::net::{SocketAddrV4, SocketAddrV6};
    a.as_sockaddr_in()
        .map(|v4| SocketAddr::from(SocketAddrV4::from(*v4)))
        .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::from(SocketAddrV6::from(*v6))))
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = bind_udp(addr, |s| {
        s.set_reuse_address(true)?;
        large_buffers(s);
        // Linux reports ICMP errors on an unconnected UDP socket only with IP_RECVERR; they
        // are then read from the socket's error queue (see `udp_errors`).
        if addr.is_ipv6() {
            nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::Ipv6RecvErr, &true)?;
        } else {
            nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::Ipv4RecvErr, &true)?;
        }
        s.set_nonblocking(true)
    })?;
    UdpSocket::from_std(s.into())
}

/// One entry of a UDP socket's error queue: the destination of the datagram an ICMP
/// unreachable came back for, or None for an entry that is not about an unreachable peer.
/// `WouldBlock` when the queue is empty.
fn recv_udp_error(sock: &UdpSocket) -> io::Result<Option<(SocketAddr, io::ErrorKind)>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    let mut buf = [0u8; 512];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!(nix::libc::sock_extended_err, nix::libc::sockaddr_in6);
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let errno = msg.cmsgs().map_err(io::Error::from)?.find_map(|c| match c {
        ControlMessageOwned::Ipv4RecvErr(e, _) | ControlMessageOwned::Ipv6RecvErr(e, _) => Some(e.ee_errno),
        _ => None,
    });
    let remote = msg.address.and_then(|a: SockaddrStorage| {
        a.as_sockaddr_in()
            .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
            .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6))))
    });
    let kind = errno.map(|e| io::Error::from_raw_os_error(e as i32).kind());
    let unreachable = |k: &io::ErrorKind| {
        matches!(
            k,
            io::ErrorKind::ConnectionRefused | io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable
        )
    };
    Ok(remote.zip(kind.filter(unreachable)))
}

fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(tcp_std_listener(addr)?)
}

/// A bound, listening, non-blocking TCP socket, for a runtime to adopt (`from_std`).
fn tcp_std_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    pub limits: Limits,
    pub idle: Duration,
    pub max_connections: usize,
}

/// The daemon's sockets.
pub struct Net {
    udp: HashMap<SocketAddr, Arc<UdpSocket>>,
    /// Side → its TCP listen addresses; a connection we open is attributed to the engine's
    /// `flow.local` when it is one of them, else to the first of the peer's family.
    tcp_local: HashMap<Side, Vec<SocketAddr>>,
    conns: HashMap<ConnKey, (u64, mpsc::Sender<Vec<u8>>)>,
    next_id: u64,
    tx: mpsc::Sender<Input>,
    settings: StreamSettings,
    open: Arc<AtomicUsize>,
}

impl Net {
    /// Binds every listen address of both sides and starts their reader tasks.
    pub fn bind(
        sides: &[(Side, &[SocketAddr], &[SocketAddr])],
        settings: StreamSettings,
        tx: mpsc::Sender<Input>,
    ) -> io::Result<Net> {
        let mut net = Net {
            udp: HashMap::new(),
            tcp_local: HashMap::new(),
            conns: HashMap::new(),
            next_id: 1 << 32,
            tx,
            settings,
            open: Arc::new(AtomicUsize::new(0)),
        };
        for (side, udp, tcp) in sides {
            for addr in *udp {
                let sock = Arc::new(udp_socket(*addr).map_err(|e| annotate(e, "udp", *addr))?);
                let local = sock.local_addr()?;
                net.udp.insert(local, sock.clone());
                tokio::spawn(udp_errors(*side, local, sock.clone(), net.tx.clone()));
                tokio::spawn(udp_reader(*side, local, sock, net.tx.clone()));
            }
            for (i, addr) in tcp.iter().enumerate() {
                let l = tcp_listener(*addr).map_err(|e| annotate(e, "tcp", *addr))?;
                let local = l.local_addr()?;
                net.tcp_local.entry(*side).or_default().push(local);
                tokio::spawn(accept_loop(
                    ByteStream { transport: Tcp, limits: settings.limits },
                    *side,
                    local,
                    l,
                    net.tx.clone(),
                    settings,
                    net.open.clone(),
                    (i as u64 + 1) << 48,
                ));
            }
        }
        Ok(net)
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The UDP sockets for sending from another thread (an engine shard): the same sockets
    /// (duplicated descriptors), so peers see the same source address and port.
    pub fn udp_out(&self) -> io::Result<UdpOut> {
        let mut socks = Vec::new();
        for (local, s) in &self.udp {
            let dup: std::net::UdpSocket = socket2::SockRef::from(s.as_ref()).try_clone()?.into();
            socks.push((*local, dup));
        }
        Ok(UdpOut { socks, batch: batch::SendBatch::new(BATCH), by_socket: Vec::new() })
    }

    pub fn opened(&mut self, key: ConnKey, id: u64, tx: mpsc::Sender<Vec<u8>>) {
        self.conns.insert(key, (id, tx));
    }

    pub fn closed(&mut self, key: ConnKey, id: u64) {
        if self.conns.get(&key).is_some_and(|(i, _)| *i == id) {
            self.conns.remove(&key);
        }
    }

    /// Sends one transmit. UDP never blocks the engine; TCP queues on the connection's task,
    /// connecting first when no connection to that peer exists on that side.
    pub fn send(&mut self, t: Transmit) {
        match t.flow.transport {
            Transport::Udp => self.send_udp(t),
            Transport::Tcp => self.send_tcp(t),
            other => tracing::warn!(transport = other.as_str(), "no such transport; message dropped"),
        }
    }

    fn send_udp(&mut self, t: Transmit) {
        let sock = self.udp.get(&t.flow.local).or_else(|| {
            self.udp.values().find(|s| s.local_addr().is_ok_and(|a| a.is_ipv4() == t.flow.remote.is_ipv4()))
        });
        let Some(sock) = sock.cloned() else {
            tracing::warn!(local = %t.flow.local, "no UDP socket for this flow; message dropped");
            return;
        };
        match sock.try_send_to(&t.data, t.flow.remote) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::spawn(async move {
                    let _ = sock.send_to(&t.data, t.flow.remote).await;
                });
            }
            Err(e) => tracing::debug!(remote = %t.flow.remote, error = %e, "UDP send failed"),
        }
    }

    fn send_tcp(&mut self, mut t: Transmit) {
        let mut key = (t.flow.side, t.flow.remote);
        if !self.conns.contains_key(&key)
            && let Some(addr) = t.reconnect
        {
            // §18.2.2: the response's connection is gone; use (or open) one to the sent-by port.
            key = (t.flow.side, addr);
            t.flow.remote = addr;
        }
        if let Some((_, tx)) = self.conns.get(&key) {
            if tx.try_send(t.data).is_err() {
                crate::logsum::note("tcp backlogged", Some(t.flow.remote.ip()), || {
                    format!("TCP connection to {} backlogged or gone; message dropped", t.flow.remote)
                });
            }
            return;
        }
        if self.open.load(Ordering::Relaxed) >= self.settings.max_connections {
            crate::logsum::note("tcp connection limit (outgoing)", None, || {
                "TCP connection limit reached; message dropped".into()
            });
            return;
        }
        let listen = self.tcp_local.get(&t.flow.side).map(Vec::as_slice).unwrap_or_default();
        let same_family = |a: &&SocketAddr| a.is_ipv4() == t.flow.remote.is_ipv4();
        let local = listen.iter().find(|a| **a == t.flow.local).or_else(|| listen.iter().find(same_family)).copied();
        let Some(local) = local.filter(|a| same_family(&a)) else {
            crate::logsum::note("no tcp listen address", None, || {
                format!(
                    "no TCP listen address of {}'s family on the {} side; message dropped",
                    t.flow.remote,
                    t.flow.side.as_str()
                )
            });
            return;
        };
        let (tx, rx) = mpsc::channel(256);
        let _ = tx.try_send(t.data);
        self.next_id += 1;
        let id = self.next_id;
        self.conns.insert(key, (id, tx));
        let flow = Flow { local, ..t.flow };
        let main = self.tx.clone();
        let framing = ByteStream { transport: Tcp, limits: self.settings.limits };
        let task = Connection { flow, id, main: main.clone(), idle: self.settings.idle, open: self.open.clone() };
        tokio::spawn(async move {
            match connect(local, flow.remote).await {
                Ok(stream) => match framing.open(stream).await {
                    Ok((reader, writer)) => connection(reader, writer, rx, task).await,
                    Err(e) => {
                        tracing::debug!(remote = %flow.remote, error = %e, "TCP setup failed");
                        let _ = main.send(Input::Closed { key, id }).await;
                    }
                },
                Err(e) => {
                    crate::logsum::note("tcp connect failed", Some(flow.remote.ip()), || {
                        format!("TCP connect to {} failed: {e}", flow.remote)
                    });
                    let _ = main.send(Input::TransportError { flow, error: e.kind() }).await;
                    let _ = main.send(Input::Closed { key, id }).await;
                }
            }
        });
    }
}

/// Datagrams read, and sent, per system call on the SIP UDP sockets.
const BATCH: usize = 64;

/// The SIP UDP sockets as one engine shard sends on them (non-blocking, shared descriptors),
/// in batches: one `sendmmsg` per socket for what one drain of the engine produced.
#[derive(Debug)]
pub struct UdpOut {
    socks: Vec<(SocketAddr, std::net::UdpSocket)>,
    batch: batch::SendBatch,
    /// Per socket, the indexes of the transmits of the batch being sent (reused).
    by_socket: Vec<Vec<usize>>,
}

impl UdpOut {
    /// The socket of `t.flow.local`, else the first of the peer's family.
    fn socket_of(&self, t: &Transmit) -> Option<usize> {
        self.socks
            .iter()
            .position(|(a, _)| *a == t.flow.local)
            .or_else(|| self.socks.iter().position(|(a, _)| a.is_ipv4() == t.flow.remote.is_ipv4()))
    }

    /// Sends every UDP transmit of `out`, one `sendmmsg` per socket (in order per socket). What
    /// a full send queue refused is left in `out`, for the daemon's task to send when the
    /// socket drains; everything else is taken (sent, or lost as UDP loses it, and logged).
    pub fn send_all(&mut self, out: &mut Vec<Transmit>) {
        self.by_socket.resize_with(self.socks.len(), Vec::new);
        for v in &mut self.by_socket {
            v.clear();
        }
        for (i, t) in out.iter().enumerate() {
            match self.socket_of(t).and_then(|s| self.by_socket.get_mut(s)) {
                Some(v) => v.push(i),
                None => tracing::warn!(local = %t.flow.local, "no UDP socket for this flow; message dropped"),
            }
        }
        let mut refused = Vec::new();
        for ((_, sock), idx) in self.socks.iter().zip(&self.by_socket) {
            if idx.is_empty() {
                continue;
            }
            let datagrams: Vec<(&[u8], SocketAddr)> =
                idx.iter().filter_map(|&i| out.get(i)).map(|t| (t.data.as_slice(), t.flow.remote)).collect();
            if let batch::Sent::From(k) = self.batch.send(sock.as_raw_fd(), &datagrams, false) {
                refused.extend(idx.iter().skip(k).copied());
            }
        }
        if refused.is_empty() {
            out.clear();
        } else {
            refused.sort_unstable();
            let mut i = 0;
            out.retain(|_| {
                let keep = refused.binary_search(&i).is_ok();
                i += 1;
                keep
            });
        }
    }
}

fn annotate(e: io::Error, what: &str, addr: SocketAddr) -> io::Error {
    io::Error::new(e.kind(), format!("cannot bind {what} {addr}: {e}"))
}

async fn connect(local: SocketAddr, remote: SocketAddr) -> io::Result<TcpStream> {
    let sock = if remote.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // Leave from the side's own address so the peer sees the SBC's address on that side.
    if local.is_ipv4() == remote.is_ipv4() && !local.ip().is_unspecified() {
        sock.bind(SocketAddr::new(local.ip(), 0))?;
    }
    tokio::time::timeout(Duration::from_secs(5), sock.connect(remote))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Reads a UDP socket's error queue whenever the kernel flags an error (an ICMP unreachable
/// for a datagram we sent) and reports the flow it names.
async fn udp_errors(side: Side, local: SocketAddr, sock: Arc<UdpSocket>, tx: mpsc::Sender<Input>) {
    loop {
        match sock.async_io(Interest::ERROR, || recv_udp_error(&sock)).await {
            Ok(Some((remote, error))) => {
                let flow = Flow { side, transport: Transport::Udp, local, remote };
                if tx.send(Input::TransportError { flow, error }).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(%local, error = %e, "UDP error queue");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Reads a SIP UDP socket in batches: one wake-up and one `recvmmsg` for whatever is queued
/// (up to [`BATCH`] datagrams). Slots take the largest UDP datagram, so what arrives is what
/// was sent: the SIP framer refuses an oversized message by its own limit, and a large STUN
/// datagram on the port is still recognised as STUN (RFC 7983) and ignored as such.
async fn udp_reader(side: Side, local: SocketAddr, sock: Arc<UdpSocket>, tx: mpsc::Sender<Input>) {
    let mut rx = batch::RecvBatch::new(BATCH, 65536);
    let fd = sock.as_raw_fd();
    loop {
        match sock.async_io(Interest::READABLE, || rx.recv(fd, false)).await {
            Ok(_) => {
                for (data, remote) in rx.datagrams() {
                    let flow = Flow { side, transport: Transport::Udp, local, remote };
                    if tx.send(Input::Datagram { flow, data: data.to_vec() }).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::debug!(%local, error = %e, "UDP receive error"),
        }
    }
}
