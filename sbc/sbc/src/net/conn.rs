//! Connection-oriented transports and the one connection loop that drives them all.
//!
//! Two seams, by how a transport delimits SIP messages:
//! * [`StreamTransport`]: a byte stream (TCP; TLS later) whose messages the [`StreamFramer`]
//!   cuts by Content-Length (RFC 3261 §18.3), CRLFCRLF pings answered (RFC 5626 §4.4.1).
//! * [`MessageTransport`]: every frame carries exactly one whole SIP message, so the frame,
//!   not Content-Length, delimits it: WebSocket (RFC 7118 §5) and, later, SCTP. Nothing is
//!   cut; the engine frames each message like a datagram (size bound, Content-Length optional).
//!
//! Either becomes the same two halves ([`Framing::open`]): a [`Reader`] yielding whole
//! messages and a [`Writer`] taking them. [`accept_loop`] and [`connection`] — the connection
//! limit, the connection table's bookkeeping, the idle timeout, transport errors — exist once,
//! for every kind. No message transport is implemented yet: [`MessageTransport`] is the seam
//! WS will implement, and only this module's tests drive it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sbc_proto::engine::{Flow, Side};
use sbc_proto::sip::framer::{Limits, StreamFramer, StreamItem};
use sbc_proto::sip::uri::Transport;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{Input, StreamSettings};

/// A stream transport: a byte stream over an accepted or connected TCP connection. TCP now;
/// TLS (rustls) will wrap the TCP stream here. Framing stays the [`StreamFramer`]'s.
pub trait StreamTransport: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn kind(&self) -> Transport;
    fn wrap(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Plain TCP (RFC 3261 §18.3).
#[derive(Debug, Clone, Copy)]
pub struct Tcp;
impl StreamTransport for Tcp {
    type Stream = TcpStream;
    fn kind(&self) -> Transport {
        Transport::Tcp
    }
    async fn wrap(&self, tcp: TcpStream) -> io::Result<TcpStream> {
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }
}

/// A message transport: each of its frames carries exactly one SIP message, whole.
///
/// Where WS plugs in (RFC 7118): `accept` runs the WebSocket server handshake with the `sip`
/// subprotocol (RFC 6455 §4, RFC 7118 §4.1) on an accepted TCP connection — WSS after the TLS
/// handshake — and returns its read and write halves; `Net::bind` starts [`accept_loop`] with
/// [`Messages`] of it on the WS listen addresses; `Net::send` routes `Transport::Ws` transmits
/// to the connection table like TCP's, without ever connecting (the SBC is the WebSocket
/// server: a phone connects to it, never the reverse). The transport refuses frames over the
/// message size limit itself (memory stays bounded); the engine checks each message again.
///
/// SCTP (RFC 4168), later, keeps message boundaries too: it brings its own listener instead of
/// `accept`, and reuses [`Messages`]'s halves and [`connection`].
#[cfg_attr(not(test), expect(dead_code, reason = "the WS seam: no message transport exists yet"))]
pub trait MessageTransport: Send + Sync + 'static {
    type Source: MessageSource;
    type Sink: MessageSink;
    fn kind(&self) -> Transport;
    fn accept(&self, tcp: TcpStream) -> impl Future<Output = io::Result<(Self::Source, Self::Sink)>> + Send;
}

/// The read half of a message transport connection.
#[cfg_attr(not(test), expect(dead_code, reason = "the WS seam: no message transport exists yet"))]
pub trait MessageSource: Send + 'static {
    /// The next whole message; `Ok(None)` when the peer closed. Cancel-safe: the connection
    /// loop drops this future whenever something else is ready, and nothing may be lost then.
    fn recv(&mut self) -> impl Future<Output = io::Result<Option<Vec<u8>>>> + Send;
}

/// The write half of a message transport connection: one SIP message per frame.
#[cfg_attr(not(test), expect(dead_code, reason = "the WS seam: no message transport exists yet"))]
pub trait MessageSink: Send + 'static {
    fn send(&mut self, msg: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
}

/// What a connection's [`Reader`] yields.
#[derive(Debug)]
pub(super) enum Incoming {
    /// Cut from a byte stream by the [`StreamFramer`]: size and Content-Length checked.
    Framed(Vec<u8>),
    /// One message transport frame: one whole SIP message as the peer sent it.
    #[cfg_attr(not(test), expect(dead_code, reason = "the WS seam: no message transport exists yet"))]
    Whole(Vec<u8>),
    /// A CRLFCRLF ping (streams): the [`Writer`] answers with a pong.
    Ping,
    /// Bytes arrived but complete no message yet: activity all the same (the idle timer).
    Partial,
}

/// Why a [`Reader`] stopped.
#[derive(Debug)]
pub(super) enum ReadEnd {
    /// The peer closed.
    Closed,
    /// The transport failed (a reset): the engine hears of it, since whatever waits on this
    /// connection will get nothing (RFC 3261 §18.4).
    Failed(io::Error),
    /// The peer broke the framing, which a stream cannot recover from (RFC 4475 §3.1.2.3).
    Unframeable { what: &'static str, error: String },
}

/// The read half as the connection loop sees it.
pub(super) trait Reader: Send + 'static {
    /// The next item. Cancel-safe, like [`MessageSource::recv`].
    fn next(&mut self) -> impl Future<Output = Result<Incoming, ReadEnd>> + Send;
}

/// The write half as the connection loop sees it.
pub(super) trait Writer: Send + 'static {
    /// One whole message from the engine.
    fn send(&mut self, msg: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// The answer to an [`Incoming::Ping`].
    fn pong(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// How a TCP connection becomes the connection loop's two halves, for either kind of
/// transport.
pub(super) trait Framing: Send + Sync + 'static {
    type Reader: Reader;
    type Writer: Writer;
    fn kind(&self) -> Transport;
    fn open(&self, tcp: TcpStream) -> impl Future<Output = io::Result<(Self::Reader, Self::Writer)>> + Send;
}

/// A [`StreamTransport`] framed by the [`StreamFramer`].
#[derive(Debug, Clone, Copy)]
pub(super) struct ByteStream<T> {
    pub transport: T,
    pub limits: Limits,
}

impl<T: StreamTransport> Framing for ByteStream<T> {
    type Reader = FramedReader<ReadHalf<T::Stream>>;
    type Writer = StreamWriter<WriteHalf<T::Stream>>;
    fn kind(&self) -> Transport {
        self.transport.kind()
    }
    async fn open(&self, tcp: TcpStream) -> io::Result<(Self::Reader, Self::Writer)> {
        let (r, w) = tokio::io::split(self.transport.wrap(tcp).await?);
        Ok((FramedReader { r, framer: StreamFramer::new(self.limits), buf: vec![0u8; 16384] }, StreamWriter(w)))
    }
}

pub(super) struct FramedReader<R> {
    r: R,
    framer: StreamFramer,
    buf: Vec<u8>,
}

impl<R> FramedReader<R> {
    /// The next item the framer already holds.
    fn take(&mut self) -> Result<Option<Incoming>, ReadEnd> {
        match self.framer.next_item() {
            Ok(Some(StreamItem::Message(data))) => Ok(Some(Incoming::Framed(data))),
            Ok(Some(StreamItem::Ping)) => Ok(Some(Incoming::Ping)),
            Ok(None) => Ok(None),
            Err(e) => Err(ReadEnd::Unframeable { what: "unframeable input", error: e.to_string() }),
        }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> Reader for FramedReader<R> {
    // Cancel-safe: the read is the only await, and nothing is consumed before it completes.
    async fn next(&mut self) -> Result<Incoming, ReadEnd> {
        if let Some(item) = self.take()? {
            return Ok(item);
        }
        let n = match self.r.read(&mut self.buf).await {
            Ok(0) => return Err(ReadEnd::Closed),
            Ok(n) => n,
            Err(e) => return Err(ReadEnd::Failed(e)),
        };
        self.framer
            .push(self.buf.get(..n).unwrap_or_default())
            .map_err(|e| ReadEnd::Unframeable { what: "framing limit", error: e.to_string() })?;
        Ok(self.take()?.unwrap_or(Incoming::Partial))
    }
}

pub(super) struct StreamWriter<W>(W);

impl<W: AsyncWrite + Unpin + Send + 'static> Writer for StreamWriter<W> {
    async fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.0.write_all(msg).await
    }
    async fn pong(&mut self) -> io::Result<()> {
        self.0.write_all(b"\r\n").await
    }
}

/// A [`MessageTransport`]: one frame, one message.
#[cfg_attr(not(test), expect(dead_code, reason = "the WS seam: no message transport exists yet"))]
pub(super) struct Messages<T>(pub T);

impl<T: MessageTransport> Framing for Messages<T> {
    type Reader = MessageReader<T::Source>;
    type Writer = MessageWriter<T::Sink>;
    fn kind(&self) -> Transport {
        self.0.kind()
    }
    async fn open(&self, tcp: TcpStream) -> io::Result<(Self::Reader, Self::Writer)> {
        let (source, sink) = self.0.accept(tcp).await?;
        Ok((MessageReader(source), MessageWriter(sink)))
    }
}

#[cfg_attr(not(test), expect(dead_code, reason = "the WS seam: no message transport exists yet"))]
pub(super) struct MessageReader<S>(S);

impl<S: MessageSource> Reader for MessageReader<S> {
    async fn next(&mut self) -> Result<Incoming, ReadEnd> {
        match self.0.recv().await {
            Ok(Some(msg)) => Ok(Incoming::Whole(msg)),
            Ok(None) => Err(ReadEnd::Closed),
            Err(e) => Err(ReadEnd::Failed(e)),
        }
    }
}

#[cfg_attr(not(test), expect(dead_code, reason = "the WS seam: no message transport exists yet"))]
pub(super) struct MessageWriter<S>(S);

impl<S: MessageSink> Writer for MessageWriter<S> {
    async fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.0.send(msg).await
    }
    async fn pong(&mut self) -> io::Result<()> {
        // Never asked: a message source yields no CRLF pings (WS has its own ping frames,
        // answered by the WS layer).
        Ok(())
    }
}

/// Accepts connections on `listener` until the engine task is gone, each one run by
/// [`connection`] with the halves `framing` makes of it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn accept_loop<F: Framing>(
    framing: F,
    side: Side,
    local: SocketAddr,
    listener: TcpListener,
    tx: mpsc::Sender<Input>,
    settings: StreamSettings,
    open: Arc<AtomicUsize>,
    id_base: u64,
) {
    let framing = Arc::new(framing);
    let mut id = id_base;
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%local, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= settings.max_connections {
            crate::logsum::note("tcp connection limit (incoming)", Some(remote.ip()), || {
                format!("TCP connection limit reached; connection from {remote} refused")
            });
            drop(stream);
            continue;
        }
        id += 1;
        let (ctx, crx) = mpsc::channel(256);
        let key = (side, remote);
        if tx.send(Input::Opened { key, id, tx: ctx }).await.is_err() {
            return;
        }
        let flow = Flow { side, transport: framing.kind(), local, remote };
        let task = Connection { flow, id, main: tx.clone(), idle: settings.idle, open: open.clone() };
        let framing = framing.clone();
        tokio::spawn(async move {
            match framing.open(stream).await {
                Ok((reader, writer)) => connection(reader, writer, crx, task).await,
                Err(_) => {
                    let _ = task.main.send(Input::Closed { key, id: task.id }).await;
                }
            }
        });
    }
}

/// One connection as the engine task knows it.
pub(super) struct Connection {
    pub flow: Flow,
    /// Its entry in the connection table (a newer connection to the same peer replaces it).
    pub id: u64,
    /// The engine task.
    pub main: mpsc::Sender<Input>,
    pub idle: Duration,
    /// Open connections, for the limit.
    pub open: Arc<AtomicUsize>,
}

/// Runs one connection of any kind: hands what `reader` yields to the engine task, writes
/// what the engine sends (`rx`), answers pings, closes when idle; then reports it closed.
pub(super) async fn connection<R: Reader, W: Writer>(
    mut reader: R,
    mut writer: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    task: Connection,
) {
    let Connection { flow, id, main, idle, open } = task;
    open.fetch_add(1, Ordering::Relaxed);
    let key = (flow.side, flow.remote);
    loop {
        tokio::select! {
            item = reader.next() => {
                let input = match item {
                    Ok(Incoming::Framed(data)) => Input::Stream { flow, data },
                    // The engine frames a whole message as it frames a datagram.
                    Ok(Incoming::Whole(data)) => Input::Datagram { flow, data },
                    Ok(Incoming::Ping) => {
                        if writer.pong().await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Ok(Incoming::Partial) => continue,
                    Err(ReadEnd::Closed) => break,
                    Err(ReadEnd::Failed(e)) => {
                        let _ = main.send(Input::TransportError { flow, error: e.kind() }).await;
                        break;
                    }
                    Err(ReadEnd::Unframeable { what, error }) => {
                        tracing::info!(remote = %flow.remote, error, "closing stream: {what}");
                        break;
                    }
                };
                if main.send(input).await.is_err() {
                    break;
                }
            }
            out = rx.recv() => match out {
                Some(d) => if writer.send(&d).await.is_err() { break },
                None => break,
            },
            _ = tokio::time::sleep(idle) => break,
        }
    }
    open.fetch_sub(1, Ordering::Relaxed);
    let _ = main.send(Input::Closed { key, id }).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    const OPTIONS: &[u8] = b"OPTIONS sip:sbc SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK1\r\n\
                             Content-Length: 0\r\n\r\n";

    fn settings() -> StreamSettings {
        StreamSettings { limits: Limits::default(), idle: Duration::from_secs(30), max_connections: 10 }
    }

    /// Listens on loopback with `framing`; returns the listen address and the engine task's end.
    async fn listen<F: Framing>(framing: F) -> (SocketAddr, mpsc::Receiver<Input>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(16);
        let open = Arc::new(AtomicUsize::new(0));
        tokio::spawn(accept_loop(framing, Side::External, local, listener, tx, settings(), open, 0));
        (local, rx)
    }

    async fn next(rx: &mut mpsc::Receiver<Input>) -> Input {
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_tcp_stream_is_framed_answered_and_written_through_the_shared_loop() {
        let (local, mut rx) = listen(ByteStream { transport: Tcp, limits: Limits::default() }).await;
        let mut peer = TcpStream::connect(local).await.unwrap();
        let Input::Opened { key, tx: to_peer, .. } = next(&mut rx).await else { panic!("not opened") };
        assert_eq!(key, (Side::External, peer.local_addr().unwrap()));
        // Two messages and a ping in one write, then a message in two pieces.
        let mut burst = [OPTIONS, OPTIONS, b"\r\n\r\n"].concat();
        let (a, b) = OPTIONS.split_at(20);
        burst.extend_from_slice(a);
        peer.write_all(&burst).await.unwrap();
        for _ in 0..2 {
            let Input::Stream { flow, data } = next(&mut rx).await else { panic!("not a stream message") };
            assert_eq!((flow.transport, flow.local, data.as_slice()), (Transport::Tcp, local, OPTIONS));
        }
        let mut pong = [0u8; 2];
        peer.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"\r\n");
        peer.write_all(b).await.unwrap();
        let Input::Stream { data, .. } = next(&mut rx).await else { panic!("not a stream message") };
        assert_eq!(data, OPTIONS);
        // What the engine sends goes out as is.
        to_peer.send(b"SIP/2.0 200 OK\r\n\r\n".to_vec()).await.unwrap();
        let mut answer = [0u8; 18];
        peer.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"SIP/2.0 200 OK\r\n\r\n");
        drop(peer);
        assert!(matches!(next(&mut rx).await, Input::Closed { key: k, .. } if k == key));
    }

    #[tokio::test]
    async fn a_stream_that_breaks_framing_is_closed() {
        let (local, mut rx) = listen(ByteStream { transport: Tcp, limits: Limits::default() }).await;
        let mut peer = TcpStream::connect(local).await.unwrap();
        let Input::Opened { key, .. } = next(&mut rx).await else { panic!("not opened") };
        // A header section longer than a message may be, with no end in sight.
        peer.write_all(&vec![b'a'; Limits::default().max_message_bytes + 1]).await.unwrap();
        assert!(matches!(next(&mut rx).await, Input::Closed { key: k, .. } if k == key));
    }

    /// A toy message transport for these tests only, one message per line: the smallest thing
    /// with message boundaries of its own that exercises the seam. Not WS.
    struct Lines;
    struct LineSource(BufReader<OwnedReadHalf>, Vec<u8>);
    struct LineSink(OwnedWriteHalf);

    impl MessageTransport for Lines {
        type Source = LineSource;
        type Sink = LineSink;
        fn kind(&self) -> Transport {
            Transport::Other
        }
        async fn accept(&self, tcp: TcpStream) -> io::Result<(LineSource, LineSink)> {
            let (r, w) = tcp.into_split();
            Ok((LineSource(BufReader::new(r), Vec::new()), LineSink(w)))
        }
    }
    impl MessageSource for LineSource {
        // Cancel-safe: a partial line stays in the buffer for the next call.
        async fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
            if self.0.read_until(b'\n', &mut self.1).await? == 0 {
                return Ok(None);
            }
            let mut line = std::mem::take(&mut self.1);
            line.pop();
            Ok(Some(line))
        }
    }
    impl MessageSink for LineSink {
        async fn send(&mut self, msg: &[u8]) -> io::Result<()> {
            self.0.write_all(&[msg, b"\n"].concat()).await
        }
    }

    #[tokio::test]
    async fn a_message_transport_delivers_whole_messages_through_the_same_loop() {
        let (local, mut rx) = listen(Messages(Lines)).await;
        let mut peer = TcpStream::connect(local).await.unwrap();
        let Input::Opened { key, tx: to_peer, .. } = next(&mut rx).await else { panic!("not opened") };
        peer.write_all(b"first message\nsecond").await.unwrap();
        // Each frame is one message, handed on whole and unframed: the engine frames it like
        // a datagram. (No Content-Length here: the frame delimits the message.)
        let Input::Datagram { flow, data } = next(&mut rx).await else { panic!("not a whole message") };
        assert_eq!((flow.transport, data.as_slice()), (Transport::Other, &b"first message"[..]));
        peer.write_all(b" message\n").await.unwrap();
        let Input::Datagram { data, .. } = next(&mut rx).await else { panic!("not a whole message") };
        assert_eq!(data, b"second message");
        to_peer.send(b"answer".to_vec()).await.unwrap();
        let mut line = String::new();
        BufReader::new(&mut peer).read_line(&mut line).await.unwrap();
        assert_eq!(line, "answer\n");
        drop(peer);
        assert!(matches!(next(&mut rx).await, Input::Closed { key: k, .. } if k == key));
    }
}
