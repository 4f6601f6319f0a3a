//! Batched UDP: many datagrams per system call, `recvmmsg` in and `sendmmsg` out (nix's safe
//! wrappers keep `unsafe` out of the daemon). The one place for these syscalls: the SIP UDP
//! readers and shards ([`super`]) and the STUN workers ([`super::stun`]) use it.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};

/// Buffers for reading up to `n` datagrams with one `recvmmsg`, reused from call to call.
/// (nix's message headers hold raw pointers and are not `Send`: they are made per call, so
/// the batch can live in a spawned task or move to a thread.)
#[derive(Debug)]
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    /// (length, source) of each datagram of the last batch.
    got: Vec<(usize, SocketAddr)>,
}

impl RecvBatch {
    /// `n` slots of `size` bytes: a longer datagram is cut to `size` (make it one more than the
    /// largest message taken, so a cut one is refused as too long, never read as shorter).
    pub fn new(n: usize, size: usize) -> RecvBatch {
        // Each slot allocated on its own (zeroed pages the kernel maps on first write), so
        // large slots cost memory only where datagrams that large arrive.
        RecvBatch { bufs: (0..n.max(1)).map(|_| vec![0u8; size]).collect(), got: Vec::with_capacity(n.max(1)) }
    }

    /// Reads what is queued on `fd`, up to the batch size. `wait`: block until one datagram
    /// (`MSG_WAITFORONE`, the socket's read timeout applies); else `WouldBlock` when nothing is
    /// queued. Returns how many datagrams were read.
    pub fn recv(&mut self, fd: RawFd, wait: bool) -> io::Result<usize> {
        self.got.clear();
        let flags = if wait { MsgFlags::MSG_WAITFORONE } else { MsgFlags::MSG_DONTWAIT };
        let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(self.bufs.len(), None);
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
            self.bufs.iter_mut().map(|b| [IoSliceMut::new(b.as_mut_slice())]).collect();
        let msgs = recvmmsg(fd, &mut hdrs, iovs.iter_mut(), flags, None).map_err(io::Error::from)?;
        for m in msgs {
            // A datagram whose source is not IP (cannot happen on our sockets) keeps its slot
            // with no source, so lengths and buffers stay aligned.
            let src = m.address.as_ref().and_then(super::std_addr);
            self.got.push((m.bytes, src.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))));
        }
        Ok(self.got.len())
    }

    /// The datagrams of the last [`RecvBatch::recv`]: (bytes, source).
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.got
            .iter()
            .zip(self.bufs.iter())
            .filter(|((_, src), _)| src.port() != 0)
            .map(|(&(len, src), buf)| (buf.get(..len).unwrap_or_default(), src))
    }
}

/// Sending up to `n` datagrams with one `sendmmsg`.
pub struct SendBatch {
    n: usize,
}

/// How a batch send ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Every datagram was handed to the kernel (or refused with an error other than a full
    /// queue, which UDP loses as it would lose it on the wire).
    All,
    /// The socket's send queue is full: datagrams from this index on were not sent.
    From(usize),
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SendBatch({})", self.n)
    }
}

impl SendBatch {
    pub fn new(n: usize) -> SendBatch {
        SendBatch { n: n.max(1) }
    }

    /// Sends each `(bytes, destination)` on `fd`, in calls of up to the batch size, going on
    /// after a datagram the kernel refuses. `wait`: block while the send queue is full; else
    /// stop there ([`Sent::From`]).
    pub fn send<B: AsRef<[u8]>>(&mut self, fd: RawFd, datagrams: &[(B, SocketAddr)], wait: bool) -> Sent {
        let flags = if wait { MsgFlags::empty() } else { MsgFlags::MSG_DONTWAIT };
        let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(self.n.min(datagrams.len()).max(1), None);
        let mut from = 0;
        while from < datagrams.len() {
            let Some(rest) = datagrams.get(from..from + self.n.min(datagrams.len() - from)) else { return Sent::All };
            let iovs: Vec<[IoSlice<'_>; 1]> = rest.iter().map(|(b, _)| [IoSlice::new(b.as_ref())]).collect();
            let to: Vec<Option<SockaddrStorage>> = rest.iter().map(|(_, a)| Some(SockaddrStorage::from(*a))).collect();
            match sendmmsg(fd, &mut hdrs, iovs.iter(), &to, [], flags) {
                // Zero sent: the first one failed without an error; skip it.
                Ok(sent) => from += sent.count().max(1),
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) if !wait => return Sent::From(from),
                Err(e) => {
                    tracing::debug!(error = %e, to = ?rest.first().map(|(_, a)| a), "sendmmsg");
                    from += 1;
                }
            }
        }
        Sent::All
    }
}
