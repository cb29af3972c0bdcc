//! The ADS service's gRPC framing, by hand. tonic's generated server encodes every message
//! into a per-stream buffer that keeps the capacity of the largest message it ever sent;
//! with 2000 streams and a 250 KB cluster list that alone was 500 MB. Here a response is
//! a few per-stream bytes followed by bytes shared with every other stream that sees the
//! same resources (see `snapshot::TypeSet`), so memory stays one copy of the snapshot.
//!
//! Each response stream has a queue bounded in bytes ([`FrameLimits`]): a sender waits
//! while it is full (a client reading slowly gets the newest state when it catches up),
//! and a stream whose client leaves it full past the send timeout is closed, its unsent
//! messages dropped at once: a client that never reads holds no more than the queue and
//! the message under way.
//!
//! This module only frames: what a stream is answered is up to a [`StreamHandler`] (the
//! ADS server), which gets the stream's [`Caller`] (its connection's peer and bearer
//! token); it depends on nothing else in the control plane but `conn`. [`ConnStreams`] counts
//! the streams of a connection for its idle timeout (`conn`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use http_body::Frame;
use prost::Message;
use tokio::sync::Notify;
use tonic::codec::BufferSettings;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::codegen::{Service, StdError};
use tonic::server::NamedService;
use tonic::{Status, Streaming};
use tonic_prost::ProstDecoder;

use super::conn::{ConnInfo, Peer};

/// The gRPC service name.
const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Limits on one stream's framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest request message accepted (its encoded size, before decoding).
    pub max_request_bytes: usize,
    /// Response bytes a stream may have queued that HTTP/2 has not taken yet (the client
    /// reads too slowly or not at all). One message is always accepted into an empty queue.
    pub max_queued_bytes: usize,
    /// How long a response may wait for room in that queue before the stream is closed.
    pub send_timeout: Duration,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_request_bytes: 4 * 1024 * 1024,
            max_queued_bytes: 64 * 1024,
            send_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a response could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The stream's other end went away.
    #[error("the client went away")]
    Closed,
    /// The client did not take what was queued in time.
    #[error("the client left {queued} bytes of responses unread for {}s", waited.as_secs())]
    Stalled {
        /// Bytes queued and not taken.
        queued: usize,
        /// How long the response waited.
        waited: Duration,
    },
}

/// One frame of the response, as queued.
enum Item {
    /// Part of a message; `last` ends it.
    Data { bytes: Bytes, last: bool },
    /// The status: the response ends with it.
    Trailers(HeaderMap),
}

/// What a [`Sender`] queued and its [`ResponseBody`] has not handed to HTTP/2 yet.
#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    /// Bytes of the data frames in `items`.
    bytes: usize,
    /// HTTP/2 has part of a message: its other frames must follow before anything else.
    mid_message: bool,
    /// The trailers were handed over: the body has ended.
    ended: bool,
    /// The body was dropped (the client reset the stream or the connection closed).
    gone: bool,
    /// The body's task, parked until something is queued.
    waker: Option<Waker>,
}

impl Queue {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Drops every queued message HTTP/2 has not started, so a stream being closed holds
    /// no more than the rest of the message under way.
    fn drop_unstarted(&mut self) {
        let keep = if self.mid_message {
            self.items
                .iter()
                .position(|i| matches!(i, Item::Data { last: true, .. }))
                .map_or(self.items.len(), |p| p + 1)
        } else {
            0
        };
        self.items.truncate(keep);
        self.bytes = self.items.iter().map(item_len).sum();
    }
}

fn item_len(item: &Item) -> usize {
    match item {
        Item::Data { bytes, .. } => bytes.len(),
        Item::Trailers(_) => 0,
    }
}

/// The queue between a [`Sender`] and its [`ResponseBody`].
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled whenever the body takes a frame or goes away.
    taken: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue stays consistent at every await point, so a poisoned lock is usable.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writing half of one response stream.
pub struct Sender {
    shared: Arc<Shared>,
    limits: FrameLimits,
    /// Set once a send timed out: the stream is closed without its queued messages.
    stalled: AtomicBool,
}

impl Sender {
    /// Sends one gRPC message: `head` (this stream's own fields) then `shared` (fields
    /// other streams send too). Both are encoded protobuf fields; concatenated they are
    /// one message. Waits while the stream's queue is full, at most the send timeout.
    pub async fn message(&self, mut head: Vec<u8>, shared: Option<Bytes>) -> Result<(), SendError> {
        let shared = shared.filter(|s| !s.is_empty());
        let len = head.len() + shared.as_ref().map_or(0, Bytes::len);
        let wire_len = u32::try_from(len).map_err(|_| SendError::Closed)?;
        // The 5-byte gRPC prefix: not compressed, then the length.
        let mut prefix = [0u8; 5];
        prefix[1..].copy_from_slice(&wire_len.to_be_bytes());
        head.splice(0..0, prefix);
        let mut frames = vec![Bytes::from(head)];
        frames.extend(shared);
        self.enqueue(frames, len + 5).await
    }

    /// Queues `frames` (one message of `size` bytes) once there is room for them.
    async fn enqueue(&self, frames: Vec<Bytes>, size: usize) -> Result<(), SendError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.limits.send_timeout;
        loop {
            let taken = self.shared.taken.notified();
            tokio::pin!(taken);
            // Registered before the check, so a frame taken in between still wakes us.
            taken.as_mut().enable();
            let queued = {
                let mut q = self.shared.lock();
                if q.gone {
                    return Err(SendError::Closed);
                }
                if q.bytes == 0 || q.bytes + size <= self.limits.max_queued_bytes {
                    let n = frames.len();
                    for (i, bytes) in frames.into_iter().enumerate() {
                        q.items.push_back(Item::Data {
                            bytes,
                            last: i + 1 == n,
                        });
                    }
                    q.bytes += size;
                    q.wake();
                    return Ok(());
                }
                q.bytes
            };
            if tokio::time::timeout_at(deadline, taken).await.is_err() {
                self.stalled.store(true, Ordering::Relaxed);
                return Err(SendError::Stalled {
                    queued,
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// Ends the stream: OK, or the error's status, in the trailers. After a send timed
    /// out, the messages not yet started are dropped first (the client was not reading).
    pub fn finish(&self, result: Result<(), Status>) {
        let status = result.err().unwrap_or_else(|| Status::ok(""));
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", HeaderValue::from_static("13"));
        }
        let mut q = self.shared.lock();
        if self.stalled.load(Ordering::Relaxed) {
            q.drop_unstarted();
        }
        q.items.push_back(Item::Trailers(trailers));
        q.wake();
    }
}

/// A response body fed by a [`Sender`].
struct ResponseBody {
    shared: Arc<Shared>,
    /// Ends the stream's count on its connection when the body goes.
    _open: Option<OpenStream>,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let mut q = self.shared.lock();
        if q.ended {
            return Poll::Ready(None);
        }
        let frame = match q.items.pop_front() {
            Some(Item::Data { bytes, last }) => {
                q.bytes -= bytes.len();
                q.mid_message = !last;
                Frame::data(bytes)
            }
            Some(Item::Trailers(t)) => {
                q.ended = true;
                Frame::trailers(t)
            }
            None => {
                q.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        };
        drop(q);
        self.shared.taken.notify_waiters();
        Poll::Ready(Some(Ok(frame)))
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.gone = true;
        q.items.clear();
        q.bytes = 0;
        drop(q);
        self.shared.taken.notify_waiters();
    }
}

/// The streams open on one connection, found in each request's extensions (the
/// connection's `ConnectInfo`); the connection closes itself after it had none for a while.
#[derive(Debug, Default)]
pub struct ConnStreams {
    open: AtomicUsize,
    /// When a stream last opened or closed.
    changed: Mutex<Option<Instant>>,
    /// The connection's reading task, woken when the last stream ends.
    waker: Mutex<Option<Waker>>,
}

impl ConnStreams {
    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// When the number of open streams last changed (`None`: never).
    pub fn changed(&self) -> Option<Instant> {
        *self.changed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes `waker` when the last open stream ends.
    pub fn wake_when_idle(&self, waker: &Waker) {
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker.clone());
    }

    fn touch(&self) {
        *self.changed.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }
}

/// Counts one stream on its connection until dropped.
struct OpenStream(Arc<ConnStreams>);

impl OpenStream {
    fn new(streams: Arc<ConnStreams>) -> OpenStream {
        streams.open.fetch_add(1, Ordering::AcqRel);
        streams.touch();
        OpenStream(streams)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.touch();
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            let waker = self.0.waker.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// What a stream's transport and headers say about its client: the connection's peer and
/// the bearer token it sent, if any. `Debug` never shows the token.
#[derive(Clone)]
pub struct Caller {
    /// Who the transport proved the client is.
    pub peer: Peer,
    /// `authorization: Bearer …`, if sent.
    pub token: Option<String>,
}

impl Caller {
    /// A plaintext client that sent no token.
    pub const PLAINTEXT: Caller = Caller {
        peer: Peer::Plaintext,
        token: None,
    };
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("peer", &self.peer)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What answers the streams an [`AdsService`] accepts: one call per stream, which reads
/// the requests and writes responses until the stream ends. The service then ends the
/// response with the returned status.
pub trait StreamHandler: Clone + Send + Sync + 'static {
    /// Serves one state-of-the-world stream (`StreamAggregatedResources`).
    fn sotw<'a>(
        &'a self,
        caller: Caller,
        incoming: Streaming<DiscoveryRequest>,
        out: &'a Sender,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a;

    /// Serves one delta stream (`DeltaAggregatedResources`).
    fn delta<'a>(
        &'a self,
        caller: Caller,
        incoming: Streaming<DeltaDiscoveryRequest>,
        out: &'a Sender,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a;
}

/// The ADS service, mounted on a tonic server with `add_service`.
#[derive(Clone)]
pub struct AdsService<H> {
    handler: H,
    limits: FrameLimits,
}

impl<H: StreamHandler> AdsService<H> {
    /// Serves `handler`'s streams within `limits`.
    pub fn new(handler: H, limits: FrameLimits) -> AdsService<H> {
        AdsService { handler, limits }
    }
}

impl<H> NamedService for AdsService<H> {
    const NAME: &'static str = SERVICE;
}

type HttpResponse = http::Response<tonic::body::Body>;

fn requests<M, B>(body: B, max: usize) -> Streaming<M>
where
    M: Message + Default + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError>,
{
    // Requests are small (an ACK names at most what the stream holds); tonic's default
    // 8 KiB read buffer per stream would be most of a stream's memory at thousands of
    // streams. The buffer grows for a larger request.
    let decoder = ProstDecoder::<M>::new(BufferSettings::new(REQUEST_BUFFER_BYTES, 32 * 1024));
    Streaming::new_request(decoder, body, None, Some(max))
}

/// The token of an `authorization: Bearer …` header.
fn bearer(headers: &HeaderMap) -> Option<String> {
    crate::identity::tokens::bearer(headers.get(http::header::AUTHORIZATION)?.to_str().ok()?)
}

/// The initial read buffer of a stream's requests.
const REQUEST_BUFFER_BYTES: usize = 1024;

impl<H, B> Service<http::Request<B>> for AdsService<H>
where
    H: StreamHandler,
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError>,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = Ready<Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let compressed = req
            .headers()
            .get("grpc-encoding")
            .is_some_and(|e| e.as_bytes() != b"identity");
        if compressed {
            return ready(Ok(
                Status::unimplemented("compressed requests are not supported").into_http()
            ));
        }
        let shared = Arc::new(Shared::default());
        let out = Sender {
            shared: shared.clone(),
            limits: self.limits,
            stalled: AtomicBool::new(false),
        };
        let info = req.extensions().get::<ConnInfo>().cloned();
        let caller = Caller {
            peer: info.as_ref().map_or(Peer::Plaintext, |i| i.peer.clone()),
            token: bearer(req.headers()),
        };
        let open = info.map(|i| OpenStream::new(i.streams));
        let handler = self.handler.clone();
        let max = self.limits.max_request_bytes;
        match req.uri().path() {
            SOTW_PATH => {
                let incoming = requests::<DiscoveryRequest, B>(req.into_body(), max);
                tokio::spawn(async move {
                    let result = handler.sotw(caller, incoming, &out).await;
                    out.finish(result);
                });
            }
            DELTA_PATH => {
                let incoming = requests::<DeltaDiscoveryRequest, B>(req.into_body(), max);
                tokio::spawn(async move {
                    let result = handler.delta(caller, incoming, &out).await;
                    out.finish(result);
                });
            }
            other => {
                let status = Status::unimplemented(format!("no method {other}"));
                return ready(Ok(status.into_http()));
            }
        }
        let mut response = http::Response::new(tonic::body::Body::new(ResponseBody { shared, _open: open }));
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &'static str, last: bool) -> Item {
        Item::Data {
            bytes: Bytes::from_static(text.as_bytes()),
            last,
        }
    }

    fn texts(q: &Queue) -> Vec<&[u8]> {
        q.items
            .iter()
            .map(|i| match i {
                Item::Data { bytes, .. } => bytes.as_ref(),
                Item::Trailers(_) => b"trailers".as_slice(),
            })
            .collect()
    }

    #[test]
    fn closing_a_stalled_stream_keeps_only_the_rest_of_the_message_under_way() {
        let mut q = Queue::default();
        q.items
            .extend([data("rest", true), data("next-head", false), data("next-tail", true)]);
        q.mid_message = true;
        q.drop_unstarted();
        assert_eq!(texts(&q), [b"rest".as_slice()], "the client gets a whole message");
        assert_eq!(q.bytes, 4);

        let mut q = Queue::default();
        q.items.extend([data("head", false), data("tail", true)]);
        q.drop_unstarted();
        assert!(q.items.is_empty() && q.bytes == 0, "nothing started: all dropped");
    }
}
