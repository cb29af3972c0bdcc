//! One accepted xDS connection (plaintext, or TLS once its handshake is done), before
//! HTTP/2 sees it: a connection whose first bytes are
//! not the HTTP/2 preface (an HTTP/1 request, or garbage) is counted and closed, with a
//! one-line answer to HTTP/1; a connection without streams for the idle timeout is closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tracing::debug;

use super::grpc::ConnStreams;
use crate::identity::spiffe::WorkloadId;
use crate::xds::metrics::{Refusal, XdsMetrics};

/// What every HTTP/2 connection starts with (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Sent to an HTTP/1 client before its connection is closed.
const HTTP1_ANSWER: &[u8] = b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 60\r\n\r\nthis port serves xDS over gRPC (HTTP/2 with prior knowledge)";

/// Who is at the other end of a connection, as far as the transport proved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// The plaintext port: nothing is proven.
    Plaintext,
    /// The TLS port, with the identity of the client's workload certificate if it sent one.
    Tls(Option<WorkloadId>),
}

/// What each request of a connection finds in its extensions.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The connection's open streams.
    pub streams: Arc<ConnStreams>,
    /// Who the client is.
    pub peer: Peer,
}

/// The socket under a connection.
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection.
pub struct Conn {
    io: Io,
    peer: Peer,
    metrics: XdsMetrics,
    /// Bytes of the preface checked so far.
    checked: usize,
    streams: Arc<ConnStreams>,
    idle: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    accepted: tokio::time::Instant,
    /// Closed for idleness: reads end, and it is counted once.
    expired: bool,
}

impl Conn {
    /// Wraps an accepted socket; `idle`: close it after that long without a stream.
    pub fn new(io: TcpStream, metrics: XdsMetrics, idle: Option<Duration>) -> Conn {
        // Small responses (an ACK'd change to one resource) go out at once, as tonic's own
        // listener does; failing to set it only costs latency.
        let _ = io.set_nodelay(true);
        Conn::with(Io::Plain(io), Peer::Plaintext, metrics, idle)
    }

    /// Wraps a connection whose TLS handshake is done.
    pub fn tls(io: TlsStream<TcpStream>, peer: Peer, metrics: XdsMetrics, idle: Option<Duration>) -> Conn {
        Conn::with(Io::Tls(Box::new(io)), peer, metrics, idle)
    }

    fn with(io: Io, peer: Peer, metrics: XdsMetrics, idle: Option<Duration>) -> Conn {
        Conn {
            io,
            peer,
            metrics,
            checked: 0,
            streams: Arc::new(ConnStreams::default()),
            idle,
            timer: None,
            accepted: tokio::time::Instant::now(),
            expired: false,
        }
    }

    /// Checks newly read bytes against the preface; `Err` closes the connection.
    fn check_preface(&mut self, read: &[u8]) -> io::Result<()> {
        let want = &PREFACE[self.checked.min(PREFACE.len())..];
        let n = want.len().min(read.len());
        if read[..n] == want[..n] {
            self.checked += n;
            return Ok(());
        }
        self.metrics.refused(Refusal::NotHttp2);
        let http1 = self.checked == 0 && looks_like_http1(read);
        if http1 && let Io::Plain(tcp) = &self.io {
            // Best effort and never blocking: the answer is far smaller than a socket buffer.
            let _ = tcp.try_write(HTTP1_ANSWER);
        }
        debug!(http1, "closing a connection that does not speak HTTP/2");
        Err(io::Error::new(io::ErrorKind::InvalidData, "not HTTP/2"))
    }

    /// Whether the connection has had no stream for the idle timeout; if not, arms a timer
    /// for when it would have.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = self.idle else { return false };
        if self.streams.open() > 0 {
            self.timer = None;
            return false;
        }
        self.streams.wake_when_idle(cx.waker());
        let since = self
            .streams
            .changed()
            .map_or(self.accepted, tokio::time::Instant::from_std);
        let deadline = since + idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        // A stream may have opened after the check above: look again once it fires.
        timer.as_mut().poll(cx).is_ready() && self.streams.open() == 0
    }
}

/// An HTTP/1 request line starts with a method: capital letters, then a space.
fn looks_like_http1(read: &[u8]) -> bool {
    let method = read.iter().take_while(|b| b.is_ascii_uppercase()).count();
    method > 0 && read.get(method) == Some(&b' ')
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnInfo {
            streams: self.streams.clone(),
            peer: self.peer.clone(),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_write(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_flush(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(t) => t.is_write_vectored(),
            Io::Tls(t) => t.is_write_vectored(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.expired || self.idle_expired(cx) {
            if !self.expired {
                self.expired = true;
                self.metrics.refused(Refusal::Idle);
            }
            // End of stream: HTTP/2 closes the connection, which had no stream to lose.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result
            && this.checked < PREFACE.len()
        {
            let read = buf.filled()[before..].to_vec();
            this.check_preface(&read)?;
        }
        result
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
