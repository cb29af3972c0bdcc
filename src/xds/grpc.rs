//! The ADS service's gRPC framing, by hand. tonic's generated server encodes every message
//! into a per-stream buffer that keeps the capacity of the largest message it ever sent;
//! with 2000 streams and a 250 KB cluster list that alone was 500 MB. Here a response is
//! a few per-stream bytes followed by bytes shared with every other stream that sees the
//! same resources (see `snapshot::TypeSet`), so memory stays one copy of the snapshot.
//!
//! This module only frames: what a stream is answered is up to a [`StreamHandler`] (the
//! ADS server), so it depends on nothing else in the control plane.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use http_body::Frame;
use prost::Message;
use tokio::sync::mpsc;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::codegen::{Service, StdError};
use tonic::server::NamedService;
use tonic::{Status, Streaming};
use tonic_prost::ProstDecoder;

/// The gRPC service name.
const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// Largest request accepted (gRPC's usual default).
const MAX_REQUEST: usize = 4 * 1024 * 1024;
/// Frames queued per stream before the sender waits (backpressure from HTTP/2 flow control).
const QUEUE: usize = 16;

/// The stream's other end went away.
#[derive(Debug)]
pub struct Closed;

/// The writing half of one response stream.
pub struct Sender {
    tx: mpsc::Sender<Frame<Bytes>>,
}

impl Sender {
    /// Sends one gRPC message: `head` (this stream's own fields) then `shared` (fields
    /// other streams send too). Both are encoded protobuf fields; concatenated they are
    /// one message.
    pub async fn message(&self, mut head: Vec<u8>, shared: Option<Bytes>) -> Result<(), Closed> {
        let shared = shared.filter(|s| !s.is_empty());
        let len = head.len() + shared.as_ref().map_or(0, Bytes::len);
        let len = u32::try_from(len).map_err(|_| Closed)?;
        // The 5-byte gRPC prefix: not compressed, then the length.
        let mut prefix = [0u8; 5];
        prefix[1..].copy_from_slice(&len.to_be_bytes());
        head.splice(0..0, prefix);
        self.send(Frame::data(head.into())).await?;
        if let Some(shared) = shared {
            self.send(Frame::data(shared)).await?;
        }
        Ok(())
    }

    /// Ends the stream: OK, or the error's status, in the trailers.
    pub async fn finish(&self, result: Result<(), Status>) {
        let status = result.err().unwrap_or_else(|| Status::ok(""));
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", HeaderValue::from_static("13"));
        }
        let _ = self.send(Frame::trailers(trailers)).await;
    }

    async fn send(&self, frame: Frame<Bytes>) -> Result<(), Closed> {
        self.tx.send(frame).await.map_err(|_| Closed)
    }
}

/// A response body fed by a [`Sender`].
struct ResponseBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// What answers the streams an [`AdsService`] accepts: one call per stream, which reads
/// the requests and writes responses until the stream ends. The service then ends the
/// response with the returned status.
pub trait StreamHandler: Clone + Send + Sync + 'static {
    /// Serves one state-of-the-world stream (`StreamAggregatedResources`).
    fn sotw<'a>(
        &'a self,
        incoming: Streaming<DiscoveryRequest>,
        out: &'a Sender,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a;

    /// Serves one delta stream (`DeltaAggregatedResources`).
    fn delta<'a>(
        &'a self,
        incoming: Streaming<DeltaDiscoveryRequest>,
        out: &'a Sender,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a;
}

/// The ADS service, mounted on a tonic server with `add_service`.
#[derive(Clone)]
pub struct AdsService<H> {
    handler: H,
}

impl<H: StreamHandler> AdsService<H> {
    /// Serves `handler`'s streams.
    pub fn new(handler: H) -> AdsService<H> {
        AdsService { handler }
    }
}

impl<H> NamedService for AdsService<H> {
    const NAME: &'static str = SERVICE;
}

type HttpResponse = http::Response<tonic::body::Body>;

fn requests<M, B>(body: B) -> Streaming<M>
where
    M: Message + Default + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError>,
{
    Streaming::new_request(ProstDecoder::<M>::default(), body, None, Some(MAX_REQUEST))
}

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
        let (tx, rx) = mpsc::channel(QUEUE);
        let out = Sender { tx };
        let handler = self.handler.clone();
        match req.uri().path() {
            SOTW_PATH => {
                let incoming = requests::<DiscoveryRequest, B>(req.into_body());
                tokio::spawn(async move {
                    let result = handler.sotw(incoming, &out).await;
                    out.finish(result).await;
                });
            }
            DELTA_PATH => {
                let incoming = requests::<DeltaDiscoveryRequest, B>(req.into_body());
                tokio::spawn(async move {
                    let result = handler.delta(incoming, &out).await;
                    out.finish(result).await;
                });
            }
            other => {
                let status = Status::unimplemented(format!("no method {other}"));
                return ready(Ok(status.into_http()));
            }
        }
        let mut response = http::Response::new(tonic::body::Body::new(ResponseBody { rx }));
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        ready(Ok(response))
    }
}
