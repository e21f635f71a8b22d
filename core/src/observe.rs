//! The observing layer: a tower [`Layer`] around every gRPC service that counts each request
//! by service, method and final status code (`alps_requests_total`), records its duration
//! (`alps_request_seconds`), and words tonic's message-size error for people.
//!
//! The status of a gRPC call is in the response headers for an error answered at once
//! ("trailers-only"), else in the trailers at the end of the body, so the body is wrapped and
//! the call is recorded when its trailers pass (or `CANCELLED` if the body is dropped first,
//! i.e. the client went away).
//!
//! A call is also counted per project (`alps_project_requests_total`) once the API has found
//! the project it is about and said so with [`attribute_to_project`]: a task-local slot that
//! the layer reads when it records the call.
//!
//! tonic refuses a request message over the decoding limit with `OUT_OF_RANGE` and a message
//! about "decoded message length"; gRPC's own servers use `RESOURCE_EXHAUSTED` for that (gRPC
//! status code documentation, "RESOURCE_EXHAUSTED ... message size"), and a user needs to know
//! which flag to raise, so such a status is rewritten here, headers and trailers alike.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use http::HeaderMap;
use http_body::{Body, Frame};
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::{auth, metrics::Metrics};

tokio::task_local! {
    /// The project the current call is about, once the API has found it.
    static PROJECT: Arc<OnceLock<String>>;
}

/// Attributes the current call to `project`, the id of a project that exists, for
/// `alps_project_requests_total`; the first attribution of a call wins. Call it only after
/// finding the project, so that made-up ids never become series. Outside a call (a background
/// job, a blocking-pool thread) it does nothing.
pub fn attribute_to_project(project: &str) {
    let _ = PROJECT.try_with(|slot| {
        slot.get_or_init(|| project.to_owned());
    });
}

/// `task`, to be spawned by a call's handler (a streaming RPC's reader), with that call's
/// project slot: a spawned task does not inherit task-locals, and without it the call would
/// never be attributed.
pub fn in_this_call<F: Future>(task: F) -> impl Future<Output = F::Output> {
    let slot = PROJECT.try_with(Arc::clone).unwrap_or_default();
    PROJECT.scope(slot, task)
}

/// Runs `call` with an empty project slot, which is returned for reading when the call ends.
pub(crate) fn with_project_slot<F: Future>(call: F) -> (Arc<OnceLock<String>>, impl Future<Output = F::Output>) {
    let slot = Arc::new(OnceLock::new());
    (slot.clone(), PROJECT.scope(slot, call))
}

/// Adds [`Observe`] around a service.
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    max_message_mib: u32,
}

impl ObserveLayer {
    /// Records into `metrics`; `max_message_mib` is `--max-message-mib`, named in the rewritten
    /// message-size status.
    pub fn new(metrics: Arc<Metrics>, max_message_mib: u32) -> Self {
        Self { metrics, max_message_mib }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner, layer: self.clone() }
    }
}

/// The service [`ObserveLayer`] makes.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let called = auth::method(request.uri().path());
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (project, answered) = with_project_slot(async move { inner.call(request).await });
        let mut call = Call {
            metrics: self.layer.metrics.clone(),
            max_message_mib: self.layer.max_message_mib,
            service: called.service,
            method: called.method,
            started: Instant::now(),
            project,
            recorded: false,
        };
        Box::pin(async move {
            let response = answered.await?;
            let (mut parts, body) = response.into_parts();
            // A trailers-only response carries its status in the headers.
            if let Some(code) = call.normalise(&mut parts.headers) {
                call.record(code);
            }
            Ok(http::Response::from_parts(parts, tonic::body::Body::new(ObservedBody { inner: body, call })))
        })
    }
}

/// One call being observed; recorded exactly once.
struct Call {
    metrics: Arc<Metrics>,
    max_message_mib: u32,
    service: &'static str,
    method: &'static str,
    started: Instant,
    /// The project the call was attributed to, if any.
    project: Arc<OnceLock<String>>,
    recorded: bool,
}

impl Call {
    /// The status code in `headers` (after rewriting a message-size status), if there is one.
    fn normalise(&self, headers: &mut HeaderMap) -> Option<Code> {
        let status = Status::from_header_map(headers)?;
        if status.code() == Code::OutOfRange && status.message().contains("decoded message length too large") {
            let size = status.message().split("found ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap_or("?");
            let rewritten = Status::resource_exhausted(format!(
                "request message of {size} bytes is over the limit of {} MiB (--max-message-mib); \
                 split the request or raise the limit",
                self.max_message_mib
            ));
            if rewritten.add_header(headers).is_ok() {
                return Some(Code::ResourceExhausted);
            }
        }
        Some(status.code())
    }

    fn record(&mut self, code: Code) {
        if !self.recorded {
            self.recorded = true;
            let took: Duration = self.started.elapsed();
            self.metrics.record_request(self.service, self.method, code_name(code), took);
            if let Some(project) = self.project.get() {
                self.metrics.record_project_request(project, code == Code::Ok);
            }
            if matches!(code, Code::Unauthenticated | Code::PermissionDenied) {
                self.metrics.record_auth_failure(code_name(code));
            }
        }
    }
}

/// A response body that records its call when the trailers pass.
struct ObservedBody<R> {
    inner: R,
    call: Call,
}

impl<R> Body for ObservedBody<R>
where
    R: Body<Data = bytes::Bytes> + Unpin,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        let code = this.call.normalise(&mut trailers).unwrap_or(Code::Unknown);
                        this.call.record(code);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                this.call.record(Code::Internal);
                Poll::Ready(Some(Err(Status::from_error(error.into()))))
            }
            None => {
                this.call.record(Code::Ok);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<R> Drop for ObservedBody<R> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away.
        self.call.record(Code::Cancelled);
    }
}

/// The gRPC name of a status code (gRPC status code documentation).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Call {
        Call {
            metrics: Arc::new(Metrics::default()),
            max_message_mib: 7,
            service: "alps.v1.InferenceService",
            method: "Predict",
            started: Instant::now(),
            project: Arc::default(),
            recorded: false,
        }
    }

    #[tokio::test]
    async fn a_call_is_counted_for_the_first_project_it_is_attributed_to() {
        let (slot, answered) = with_project_slot(async {
            attribute_to_project("cars");
            attribute_to_project("boats");
        });
        answered.await;
        assert_eq!(slot.get().map(String::as_str), Some("cars"));
        let mut call = Call { project: slot, ..call() };
        call.record(Code::NotFound);
        call.record(Code::Ok); // recorded once only
        let text = call.metrics.encode().unwrap();
        assert!(text.contains("alps_project_requests_total{project=\"cars\",outcome=\"error\"} 1"), "{text}");
        assert!(!text.contains("outcome=\"ok\""), "{text}");
        // Outside a call there is no slot: nothing happens.
        attribute_to_project("cars");
    }

    #[tokio::test]
    async fn a_task_spawned_by_a_call_attributes_that_call() {
        let (slot, answered) = with_project_slot(async {
            tokio::spawn(in_this_call(async { attribute_to_project("boats") })).await.unwrap();
        });
        answered.await;
        assert_eq!(slot.get().map(String::as_str), Some("boats"));
    }

    #[test]
    fn tonic_s_size_error_becomes_resource_exhausted_naming_the_flag() {
        let mut headers = HeaderMap::new();
        Status::out_of_range(
            "Error, decoded message length too large: found 9000000 bytes, the limit is: 7340032 bytes",
        )
        .add_header(&mut headers)
        .unwrap();
        assert_eq!(call().normalise(&mut headers), Some(Code::ResourceExhausted));
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("9000000 bytes") && status.message().contains("7 MiB (--max-message-mib)"));
    }

    #[test]
    fn a_call_is_counted_once_with_its_code() {
        let mut call = call();
        let metrics = call.metrics.clone();
        call.record(Code::NotFound);
        call.record(Code::Ok);
        drop(call);
        let text = metrics.encode().unwrap();
        let line = r#"alps_requests_total{service="alps.v1.InferenceService",method="Predict",code="NOT_FOUND"} 1"#;
        assert!(text.contains(line), "{text}");
        assert!(!text.contains(r#"code="OK""#), "{text}");
    }
}
