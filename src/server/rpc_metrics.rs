//! The tower layer that counts gRPC calls: by method and final status code, the
//! latency of unary calls by method, and the Watch streams open. A call is counted
//! when its reply body ends (the status in its trailers), or when it is dropped
//! before (CANCELLED: the client went away); a refusal before any handler (a
//! trailers-only reply) is counted with its status too. A Watch whose stream
//! started is the exception: its reply passes through unwrapped, and the stream
//! tells [`RpcMetrics`] (as `api::WatchCalls`) when it starts and how it ends.
//!
//! Labels are bounded: the method is one of the API's RPCs, `Health`, or `other`;
//! the code one of gRPC's 17. Knows the gRPC wire (paths, `grpc-status`), not what
//! a call does; registering the metrics is the exporter's business.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tower::{Layer, Service};

/// The ConfigService's methods, as labels; any other path is `Health` or `other`.
const METHODS: [&str; 5] = ["Get", "Watch", "Put", "Delete", "History"];
const SERVICE: &str = "/configwatch.v1.ConfigService/";
const HEALTH: &str = "/grpc.health.v1.Health/";

/// gRPC's status codes by number, as labels.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

type Latency = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// The calls' metrics; the exporter registers them.
#[derive(Debug)]
pub struct RpcMetrics {
    /// Calls ended, by method and status code.
    pub calls: Family<CallLabels, Counter>,
    /// Seconds from request to the end of the reply, unary calls only.
    pub latency: Latency,
    /// Watch streams open now.
    pub watch_streams_open: Gauge,
}

fn latency_histogram() -> Histogram {
    // 250 us to about 4 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

impl Default for RpcMetrics {
    fn default() -> Self {
        RpcMetrics {
            calls: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            watch_streams_open: Gauge::default(),
        }
    }
}

/// The method label of a request path.
fn method_of(path: &str) -> &'static str {
    if let Some(name) = path.strip_prefix(SERVICE) {
        METHODS.into_iter().find(|m| *m == name).unwrap_or("other")
    } else if path.starts_with(HEALTH) {
        "Health"
    } else {
        "other"
    }
}

/// The code label of a `grpc-status` value.
fn code_of(value: Option<&http::HeaderValue>) -> Option<&'static str> {
    let n: usize = value?.to_str().ok()?.parse().ok()?;
    Some(CODES.get(n).copied().unwrap_or("UNKNOWN"))
}

/// Counts every call through it.
#[derive(Clone, Default)]
pub(super) struct RpcMetricsLayer {
    pub metrics: Arc<RpcMetrics>,
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub(super) struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for RpcMetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_of(request.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            let header_code = code_of(response.headers().get("grpc-status"));
            if method == "Watch" && header_code.is_none() {
                // A Watch stream that started counts itself when it ends (see
                // `WatchCalls`): its messages pass unwrapped.
                return Ok(response);
            }
            let record = CallRecord {
                metrics,
                method,
                started,
                header_code,
                trailer_code: None,
                finished: false,
            };
            Ok(response.map(|body| {
                tonic::body::Body::new(Counted {
                    inner: body,
                    record,
                })
            }))
        })
    }
}

/// The Watch streams that started are counted by the streams themselves.
impl crate::api::WatchCalls for RpcMetrics {
    fn opened(&self) {
        self.watch_streams_open.inc();
    }

    fn ended(&self, code: tonic::Code) {
        let code = CODES.get(code as usize).copied().unwrap_or("UNKNOWN");
        self.calls
            .get_or_create(&CallLabels {
                method: "Watch",
                code,
            })
            .inc();
        self.watch_streams_open.dec();
    }
}

/// What is known of a call until its reply ends; counted once, when dropped.
struct CallRecord {
    metrics: Arc<RpcMetrics>,
    method: &'static str,
    started: Instant,
    header_code: Option<&'static str>,
    trailer_code: Option<&'static str>,
    finished: bool,
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        let code = self
            .trailer_code
            .or(self.header_code)
            .unwrap_or(if self.finished {
                "UNKNOWN"
            } else {
                "CANCELLED"
            });
        let method = self.method;
        self.metrics
            .calls
            .get_or_create(&CallLabels { method, code })
            .inc();
        if method != "Watch" {
            self.metrics
                .latency
                .get_or_create(&MethodLabels { method })
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

/// A reply body that notes the status in its trailers and counts the call when
/// dropped.
struct Counted {
    inner: tonic::body::Body,
    record: CallRecord,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.record.trailer_code = code_of(trailers.get("grpc-status"));
                    self.record.finished = true;
                }
            }
            Poll::Ready(Some(Err(status))) => {
                self.record.trailer_code = code_of(Some(&http::HeaderValue::from(i32::from(
                    status.code(),
                )
                    as u16)));
                self.record.finished = true;
            }
            Poll::Ready(None) => self.record.finished = true,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(method_of("/configwatch.v1.ConfigService/Put"), "Put");
        assert_eq!(
            method_of("/configwatch.v1.ConfigService/History"),
            "History"
        );
        assert_eq!(method_of("/configwatch.v1.ConfigService/Nope"), "other");
        assert_eq!(method_of("/grpc.health.v1.Health/Check"), "Health");
        assert_eq!(method_of("/anything"), "other");
        let code = |s: &'static str| code_of(Some(&http::HeaderValue::from_static(s)));
        assert_eq!(code("0"), Some("OK"));
        assert_eq!(code("16"), Some("UNAUTHENTICATED"));
        assert_eq!(code("99"), Some("UNKNOWN"));
        assert_eq!(code("x"), None);
    }
}
