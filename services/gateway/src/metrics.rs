//! [`ApiMetricsLayer`]: counts every API call by method and gRPC status, and times it. The
//! status comes from the response headers (a trailers-only error) or, for a reply with a body,
//! from its trailers when the body ends (a stream: when it ends).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use chamberlain_telemetry::instruments;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::KeyValue;

/// A gRPC status number as its canonical name (`0` → `OK`, `5` → `NOT_FOUND`).
/// The gRPC status of a call as a response header (Envoy's access log reads it).
pub const STATUS_HEADER: &str = "x-chamberlain-grpc-status";

pub fn status_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "3" => "INVALID_ARGUMENT",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "6" => "ALREADY_EXISTS",
        "7" => "PERMISSION_DENIED",
        "8" => "RESOURCE_EXHAUSTED",
        "9" => "FAILED_PRECONDITION",
        "10" => "ABORTED",
        "11" => "OUT_OF_RANGE",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        "15" => "DATA_LOSS",
        "16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

struct Call {
    method: Arc<str>,
    started: Instant,
}

impl Call {
    fn finish(&self, status: &'static str) {
        let m = instruments();
        let attributes = [
            KeyValue::new("method", self.method.to_string()),
            KeyValue::new("status", status),
        ];
        m.api_requests.add(1, &attributes);
        m.api_duration
            .record(self.started.elapsed().as_secs_f64(), &attributes);
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(status_name)
}

/// A response body that records the call when its trailers arrive (or it ends without).
pub struct CountedBody<B> {
    inner: Pin<Box<B>>,
    call: Option<Call>,
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away.
        if let Some(call) = self.call.take() {
            call.finish("CANCELLED");
        }
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    call.finish(grpc_status(trailers).unwrap_or("UNKNOWN"));
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = this.call.take() {
                    call.finish("INTERNAL");
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.take() {
                    call.finish("UNKNOWN");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The tower layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiMetricsLayer;

impl<S> tower_layer::Layer<S> for ApiMetricsLayer {
    type Service = ApiMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ApiMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ApiMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for ApiMetrics<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let call = Call {
            method: Arc::from(request.uri().path()),
            started: Instant::now(),
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let (mut parts, body) = response.into_parts();
            // The status as a response header Envoy's access log can read: its JSON transcoder
            // drops `grpc-status`. Trailers-only (every refusal): the status; otherwise the
            // call has started well ("0"), and a stream's final status is in its trailers.
            let code = parts
                .headers
                .get("grpc-status")
                .cloned()
                .unwrap_or_else(|| http::HeaderValue::from_static("0"));
            parts.headers.insert(STATUS_HEADER, code);
            let call = match grpc_status(&parts.headers) {
                // Trailers-only: the status is already known.
                Some(status) => {
                    call.finish(status);
                    None
                }
                None => Some(call),
            };
            Ok(Response::from_parts(
                parts,
                CountedBody {
                    inner: Box::pin(body),
                    call,
                },
            ))
        })
    }
}
