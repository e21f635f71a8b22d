//! The Open Inference Protocol's HTTP/REST mirror on `--http-listen`: health, metadata,
//! readiness and inference under `/v2`, plus Triton's extensions that `tritonclient.http` and
//! `perf_analyzer -i http` call (binary tensor data, model configuration, statistics,
//! repository index). Errors are `{"error": "<message>"}` with the HTTP code of the gRPC
//! status (400 invalid argument, 401/403 auth, 404 not found, 429 busy, 503 unavailable).
//!
//! Binary tensor data (Triton's extension): a request whose `Inference-Header-Content-Length`
//! header is `L` has `L` bytes of JSON, then each input with `parameters.binary_data_size`
//! in order, in the raw layout of [`TensorData::to_raw`]; outputs asked with
//! `parameters.binary_data` (or request parameter `binary_data_output`) come back the same way.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tonic::{Code, Status};

use super::{InputTensor, OutputTensor, Param, TensorData, TensorSpec};
use crate::{
    api::AppState,
    auth::{layer::bearer, tokens::Tokens},
    infer::Infer,
    metrics::{Metrics, Tally},
    projects::Project,
};

/// The header giving the JSON part's length in a binary-data body.
const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Clone, Debug)]
struct Rest {
    infer: Infer,
    metrics: Arc<Metrics>,
    serving: Arc<std::sync::atomic::AtomicBool>,
}

/// The `/v2` router over the shared state; `tokens` as for gRPC (`None`: no auth), bodies up
/// to `max_body_bytes` (`--max-message-mib`).
pub fn router(state: &AppState, tokens: Option<Arc<Tokens>>, max_body_bytes: usize) -> Router {
    let rest = Rest { infer: state.infer.clone(), metrics: state.metrics.clone(), serving: state.serving.clone() };
    let protected = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/stats", get(all_statistics))
        .route("/v2/models/{model}", get(metadata))
        .route("/v2/models/{model}/versions/{version}", get(metadata_at))
        .route("/v2/models/{model}/ready", get(ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(ready_at))
        .route("/v2/models/{model}/config", get(config))
        .route("/v2/models/{model}/versions/{version}/config", get(config_at))
        .route("/v2/models/{model}/stats", get(statistics))
        .route("/v2/models/{model}/versions/{version}/stats", get(statistics_at))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_at))
        .route("/v2/repository/index", post(repository_index))
        .route_layer(middleware::from_fn_with_state(tokens, authorize));
    Router::new()
        .route("/v2/health/live", get(|| async { Json(json!({ "live": true })) }))
        .route("/v2/health/ready", get(server_ready))
        .merge(protected)
        .route_layer(middleware::from_fn_with_state(state.metrics.clone(), observe))
        .fallback(|| async {
            error(&Status::not_found("no such endpoint; the Open Inference Protocol lives under /v2"))
        })
        .layer(middleware::map_response(json_rejections))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(rest)
}

/// Every route, as registered: the `method` label of `alps_requests_total` for REST calls.
const ROUTES: [&str; 15] = [
    "/v2/health/live",
    "/v2/health/ready",
    "/v2",
    "/v2/models/stats",
    "/v2/models/{model}",
    "/v2/models/{model}/versions/{version}",
    "/v2/models/{model}/ready",
    "/v2/models/{model}/versions/{version}/ready",
    "/v2/models/{model}/config",
    "/v2/models/{model}/versions/{version}/config",
    "/v2/models/{model}/stats",
    "/v2/models/{model}/versions/{version}/stats",
    "/v2/models/{model}/infer",
    "/v2/models/{model}/versions/{version}/infer",
    "/v2/repository/index",
];

/// Counts each REST call in `alps_requests_total` and `alps_request_seconds` (service
/// `inference.REST`, the route as method, the HTTP answer as the gRPC code it stands for) and,
/// once attributed, in `alps_project_requests_total`, like the gRPC layer does for gRPC calls.
async fn observe(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned());
    let route = ROUTES.iter().copied().find(|r| Some(*r) == matched.as_deref()).unwrap_or("other");
    let started = std::time::Instant::now();
    let (project, answered) = crate::observe::with_project_slot(next.run(request));
    let response = answered.await;
    metrics.record_request("inference.REST", route, code_name(response.status()), started.elapsed());
    if let Some(project) = project.get() {
        metrics.record_project_request(project, response.status().is_success());
    }
    response
}

/// The gRPC code name an HTTP answer stands for (the inverse of [`error`]'s mapping).
fn code_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "OK",
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        405 | 501 => "UNIMPLEMENTED",
        413 | 429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        500 => "INTERNAL",
        _ => "UNKNOWN",
    }
}

/// `{"ready": true}`, or 503 `{"ready": false}` once the server is shutting down.
async fn server_ready(State(rest): State<Rest>) -> Response {
    if rest.serving.load(std::sync::atomic::Ordering::Relaxed) {
        Json(json!({ "ready": true })).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false }))).into_response()
    }
}

/// Turns axum's own plain-text rejections (a body over the limit, a malformed path, a wrong
/// method) into this API's `{"error": ...}`, keeping their HTTP codes.
async fn json_rejections(response: Response) -> Response {
    let content_type = response.headers().get(header::CONTENT_TYPE);
    let ours = content_type.is_some_and(|v| !v.as_bytes().starts_with(b"text/plain"));
    let status = response.status();
    if status.is_success() || ours {
        return response;
    }
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request body larger than --max-message-mib allows".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed: infer is POST, the other endpoints GET".to_owned(),
        _ => {
            let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&body).into_owned();
            if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text }
        }
    };
    (status, Json(json!({ "error": message }))).into_response()
}

/// Serves `router` on `listener` (plain or TLS) until `shutdown` resolves.
///
/// # Errors
/// The I/O error that stops the server.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => {
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                // Small JSON answers: never hold them back for Nagle's algorithm.
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, router).with_graceful_shutdown(shutdown).await
        }
        Some(tls) => {
            let local = listener.local_addr()?;
            let listener = TlsListener { incoming: tls.incoming_http1(listener), local };
            axum::serve(listener, router).with_graceful_shutdown(shutdown).await
        }
    }
}

/// TLS connections as an axum listener; failed handshakes are logged by [`crate::tls`] and
/// skipped.
struct TlsListener {
    incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<crate::tls::TlsConnection>>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = crate::tls::TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt;
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let peer = stream.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (stream, peer);
                }
                // Failed handshakes are logged where they happen and never sent.
                Some(Err(_)) => continue,
                None => {
                    tracing::error!("the TLS accept task ended; the REST port accepts no more connections");
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Bearer-token check, as for gRPC: every role includes `predict`, which is all the protocol
/// needs, so any known token passes.
async fn authorize(State(tokens): State<Option<Arc<Tokens>>>, request: Request, next: Next) -> Response {
    if let Some(tokens) = tokens {
        let Some(token) = bearer(request.headers()) else {
            return error(&Status::unauthenticated("missing bearer token: send `Authorization: Bearer <token>`"));
        };
        if tokens.authenticate(token).is_none() {
            return error(&Status::unauthenticated("unknown or revoked token"));
        }
    }
    next.run(request).await
}

/// The HTTP answer to a failed call: the status's code mapped to HTTP, its message in JSON.
fn error(status: &Status) -> Response {
    let code = match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, Json(json!({ "error": status.message() }))).into_response()
}

/// A failed call, answered by [`error`].
struct Failure(Box<Status>);

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Self(Box::new(status))
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        error(&self.0)
    }
}

type Answer = Result<Response, Failure>;

fn project(rest: &Rest, model: &str, version: &str) -> Result<Arc<Project>, Failure> {
    Ok(super::project(&rest.infer, model, version)?)
}

async fn server_metadata() -> Json<Value> {
    Json(json!({ "name": "alps", "version": env!("CARGO_PKG_VERSION"), "extensions": super::EXTENSIONS }))
}

fn tensor_json(specs: Vec<TensorSpec>) -> Vec<Value> {
    specs.into_iter().map(|s| json!({ "name": s.name, "datatype": s.datatype, "shape": s.shape })).collect()
}

fn metadata_of(rest: &Rest, model: &str, version: &str) -> Answer {
    let project = project(rest, model, version)?;
    let versions = super::versions(&rest.infer, &project)?;
    Ok(Json(json!({
        "name": project.spec.id,
        "versions": versions,
        "platform": super::PLATFORM,
        "inputs": tensor_json(super::inputs(&project)),
        "outputs": tensor_json(super::outputs(&project)),
    }))
    .into_response())
}

async fn metadata(State(rest): State<Rest>, Path(model): Path<String>) -> Answer {
    metadata_of(&rest, &model, "")
}

async fn metadata_at(State(rest): State<Rest>, Path((model, version)): Path<(String, String)>) -> Answer {
    metadata_of(&rest, &model, &version)
}

/// `{"ready": true}`, or `false` with 400 for a version that cannot serve the project now
/// (unknown projects and versions are 404).
fn ready_of(rest: &Rest, model: &str, version: &str) -> Answer {
    match super::project(&rest.infer, model, version) {
        Ok(_) => Ok(Json(json!({ "name": model, "ready": true })).into_response()),
        Err(status) if status.code() == Code::FailedPrecondition => {
            let body = json!({ "name": model, "ready": false, "error": status.message() });
            Ok((StatusCode::BAD_REQUEST, Json(body)).into_response())
        }
        Err(status) => Err(status.into()),
    }
}

async fn ready(State(rest): State<Rest>, Path(model): Path<String>) -> Answer {
    ready_of(&rest, &model, "")
}

async fn ready_at(State(rest): State<Rest>, Path((model, version)): Path<(String, String)>) -> Answer {
    ready_of(&rest, &model, &version)
}

fn config_of(rest: &Rest, model: &str, version: &str) -> Answer {
    let project = project(rest, model, version)?;
    let config = super::model_config(&project, &rest.infer);
    let tensors = |specs: Vec<TensorSpec>, optional: bool| -> Vec<Value> {
        specs
            .into_iter()
            .map(|s| {
                let data_type = s.config_type().as_str_name();
                let mut tensor = json!({ "name": s.name, "data_type": data_type, "dims": s.shape });
                if optional {
                    tensor["optional"] = json!(true);
                }
                tensor
            })
            .collect()
    };
    let mut body = json!({
        "name": project.spec.id,
        "platform": super::PLATFORM,
        "backend": "alps",
        "max_batch_size": config.max_batch_size,
        "input": tensors(config.inputs, true),
        "output": tensors(config.outputs, false),
    });
    if let Some(us) = config.max_queue_delay_us {
        body["dynamic_batching"] = json!({ "max_queue_delay_microseconds": us });
    }
    Ok(Json(body).into_response())
}

async fn config(State(rest): State<Rest>, Path(model): Path<String>) -> Answer {
    config_of(&rest, &model, "")
}

async fn config_at(State(rest): State<Rest>, Path((model, version)): Path<(String, String)>) -> Answer {
    config_of(&rest, &model, &version)
}

fn tally(t: Tally) -> Value {
    json!({ "count": t.count, "ns": t.ns })
}

fn statistics_of(rest: &Rest, projects: &[Arc<Project>], version: &str) -> Response {
    let stats: Vec<Value> = super::statistics(&rest.metrics, projects, version)
        .into_iter()
        .map(|(name, version, s)| {
            json!({
                "name": name, "version": version,
                "last_inference": s.last_inference_unix_ms,
                "inference_count": s.inference_count, "execution_count": s.execution_count,
                "inference_stats": {
                    "success": tally(s.success), "fail": tally(s.fail), "queue": tally(s.queue),
                    "compute_input": tally(s.compute_input), "compute_infer": tally(s.compute_infer),
                    "compute_output": tally(s.compute_output),
                },
                "batch_stats": [],
            })
        })
        .collect();
    Json(json!({ "model_stats": stats })).into_response()
}

async fn all_statistics(State(rest): State<Rest>) -> Response {
    statistics_of(&rest, &rest.infer.projects(), "")
}

async fn statistics(State(rest): State<Rest>, Path(model): Path<String>) -> Answer {
    let project = project(&rest, &model, "")?;
    Ok(statistics_of(&rest, &[project], ""))
}

async fn statistics_at(State(rest): State<Rest>, Path((model, version)): Path<(String, String)>) -> Answer {
    let project = project(&rest, &model, &version)?;
    Ok(statistics_of(&rest, &[project], &version))
}

async fn repository_index(State(rest): State<Rest>) -> Json<Value> {
    let models: Vec<Value> = rest
        .infer
        .projects()
        .iter()
        .map(|p| json!({ "name": p.spec.id, "version": super::protocol_version(&p.active_version), "state": "READY" }))
        .collect();
    Json(Value::Array(models))
}

#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<FlatData>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

async fn infer(State(rest): State<Rest>, Path(model): Path<String>, headers: HeaderMap, body: Bytes) -> Answer {
    Ok(infer_request(&rest, &model, "", &headers, &body).await?)
}

async fn infer_at(
    State(rest): State<Rest>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    Ok(infer_request(&rest, &model, &version, &headers, &body).await?)
}

async fn infer_request(
    rest: &Rest,
    model: &str,
    version: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Status> {
    let project = super::project(&rest.infer, model, version)?;
    let (json_part, mut binary) = split_body(headers, body)?;
    let request: InferRequest = serde_json::from_slice(json_part).map_err(|e| {
        // With binary data, a wrong header length shows up as JSON that ends early or late.
        let hint = if headers.contains_key(HEADER_LENGTH) {
            format!(" (the JSON part is the first {} bytes, per Inference-Header-Content-Length)", json_part.len())
        } else {
            String::new()
        };
        Status::invalid_argument(format!("request body: not an inference request: {e}{hint}"))
    })?;
    let params: Vec<(&str, Param)> =
        request.parameters.iter().map(|(n, v)| Ok((n.as_str(), param(n, v)?))).collect::<Result<_, Status>>()?;
    let params = super::predict_params(params.iter().map(|(n, p)| (*n, p)))?;
    let outputs = super::requested_outputs(request.outputs.iter().map(|o| o.name.as_str()))?;
    let all_binary = request.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let binary_outputs: Vec<&str> = outputs
        .iter()
        .copied()
        .filter(|name| {
            let asked = request.outputs.iter().find(|o| o.name == *name);
            asked.and_then(|o| o.parameters.get("binary_data")).and_then(Value::as_bool).unwrap_or(all_binary)
        })
        .collect();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        inputs.push(decode_input(input, &mut binary, rest.infer.batching().0)?);
    }
    if !binary.is_empty() {
        return Err(Status::invalid_argument(format!(
            "request body: {} bytes after the inputs' binary data",
            binary.len()
        )));
    }
    let (project, tensors) = super::infer(&rest.infer, project, inputs, params, &outputs).await?;
    Ok(encode_response(&project, request.id, tensors, &binary_outputs))
}

/// The JSON part and the binary part of a body (see the module docs).
fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), Status> {
    let Some(length) = headers.get(HEADER_LENGTH) else { return Ok((body, &[])) };
    let length: usize = length
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Status::invalid_argument("Inference-Header-Content-Length: not a byte count"))?;
    if length > body.len() {
        return Err(Status::invalid_argument(format!(
            "Inference-Header-Content-Length: {length} bytes of JSON, the body has {}",
            body.len()
        )));
    }
    Ok(body.split_at(length))
}

fn param(name: &str, value: &Value) -> Result<Param, Status> {
    Ok(match value {
        Value::Bool(b) => Param::Bool(*b),
        Value::String(s) => Param::String(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Param::Int(i),
            (_, Some(u), _) => Param::Uint(u),
            (_, _, Some(f)) => Param::Double(f),
            _ => return Err(Status::invalid_argument(format!("parameters.{name}: not a number"))),
        },
        _ => {
            return Err(Status::invalid_argument(format!(
                "parameters.{}: a bool, number or string is required",
                name.chars().take(64).collect::<String>()
            )));
        }
    })
}

fn decode_input(input: InputJson, binary: &mut &[u8], max_samples: usize) -> Result<InputTensor, Status> {
    let field = format!("inputs[{}]", input.name.chars().take(64).collect::<String>());
    let data = match input.parameters.get("binary_data_size") {
        Some(size) => {
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| Status::invalid_argument(format!("{field}.parameters.binary_data_size: not a size")))?;
            if size > binary.len() {
                return Err(Status::invalid_argument(format!(
                    "{field}: binary_data_size {size} but {} binary bytes remain",
                    binary.len()
                )));
            }
            let (mine, rest) = binary.split_at(size);
            *binary = rest;
            TensorData::from_raw(&field, &input.datatype, mine, max_samples)?
        }
        None => json_data(&field, &input.datatype, input.data)?,
    };
    Ok(InputTensor { name: input.name, shape: input.shape, data })
}

/// Values of `data`: numbers for FP32, strings (their UTF-8 bytes) for BYTES.
fn json_data(field: &str, datatype: &str, data: Option<FlatData>) -> Result<TensorData, Status> {
    let data = data.ok_or_else(|| Status::invalid_argument(format!("{field}: no data and no binary_data_size")))?;
    match (datatype, data) {
        ("FP32", FlatData { numbers, strings, .. }) if strings.is_empty() => Ok(TensorData::Fp32(numbers)),
        ("BYTES", FlatData { numbers, strings, .. }) if numbers.is_empty() => Ok(TensorData::Bytes(strings)),
        ("FP32", _) => Err(Status::invalid_argument(format!("{field}: FP32 data holds a string, not a number"))),
        ("BYTES", _) => Err(Status::invalid_argument(format!("{field}: BYTES data holds a number, not a string"))),
        (other, _) => Err(super::unsupported_datatype(field, other)),
    }
}

/// Most strings one input's JSON `data` may hold: each is a sample (an encoded image), and an
/// empty one costs 3 bytes of JSON but 24 of memory.
const MAX_JSON_STRINGS: usize = 65_536;

/// An input's JSON `data`, flattened while it is parsed: flat or nested row-major arrays of
/// numbers or strings. Parsing straight into vectors keeps memory near the body's size (a
/// parsed JSON tree costs about 16 times that).
#[derive(Debug, Default)]
struct FlatData {
    numbers: Vec<f32>,
    strings: Vec<Vec<u8>>,
}

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut flat = Self::default();
        deserializer.deserialize_any(Flatten(&mut flat))?;
        Ok(flat)
    }
}

/// Appends one JSON value (recursing into arrays) to a [`FlatData`].
struct Flatten<'a>(&'a mut FlatData);

impl<'de> serde::de::DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("numbers or strings, in flat or nested arrays")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.0.numbers.push(v as f32);
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        if self.0.strings.len() == MAX_JSON_STRINGS {
            return Err(E::custom(format!("more than {MAX_JSON_STRINGS} strings in one input")));
        }
        self.0.strings.push(v.as_bytes().to_vec());
        Ok(())
    }
}

fn encode_response(project: &Project, id: Option<String>, tensors: Vec<OutputTensor>, binary: &[&str]) -> Response {
    let mut raw = Vec::new();
    let outputs: Vec<Value> = tensors
        .into_iter()
        .map(|t| {
            let mut output = json!({ "name": t.name, "datatype": t.data.datatype(), "shape": t.shape });
            if binary.contains(&t.name) {
                let bytes = t.data.to_raw();
                output["parameters"] = json!({ "binary_data_size": bytes.len() });
                raw.extend_from_slice(&bytes);
            } else {
                output["data"] = match t.data {
                    TensorData::Fp32(values) => json!(values),
                    TensorData::Bytes(values) => {
                        json!(values.iter().map(|v| String::from_utf8_lossy(v)).collect::<Vec<_>>())
                    }
                };
            }
            output
        })
        .collect();
    let version = super::protocol_version(&project.active_version);
    let mut body = json!({ "model_name": project.spec.id, "model_version": version, "outputs": outputs });
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    let json_bytes = serde_json::to_vec(&body).unwrap_or_default();
    if raw.is_empty() {
        return ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json_bytes).into_response();
    }
    let length = HeaderValue::from(json_bytes.len());
    let mut all = json_bytes;
    all.extend_from_slice(&raw);
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (header::HeaderName::from_static(HEADER_LENGTH), length),
        ],
        all,
    )
        .into_response()
}
