//! The Open Inference Protocol (KServe "v2", with Triton's extensions) over gRPC
//! ([`grpc`], `inference.GRPCInferenceService` on the `alps.v1` port) and HTTP/REST ([`rest`],
//! `/v2/...` on `--http-listen`), so `tritonclient`, `perf_analyzer` and KServe's SDK work
//! with ALPS unchanged.
//!
//! Mapping (the same on both transports, decoded here once, then handed to [`Infer`]):
//! * a model is an ALPS project; a model version an ALPS model version (the active one when
//!   none is named; a named inactive version is served read-only). Versions are numbers on
//!   this protocol, as its clients expect (perf_analyzer parses them): ALPS `v3` is `3`, the
//!   initial weights (`untrained`) are `0`; requests may name `v3` too;
//! * inputs, exactly one per request: `image`, BYTES `[N, 1]` (or `[N]`), encoded images; or
//!   `tensor`, FP32 `[N, C, H, W]` (or `[N, C·H·W]`), preprocessed samples;
//! * outputs, each only when requested (all by default): `probabilities` FP32 `[N, C]` (the
//!   mean over the K MC iterations), `class` BYTES `[N]` (class names), `score` FP32 `[N]` (the
//!   acquisition function's score), `mc_samples` FP32 `[N, C, K]` (every MC iteration);
//! * request parameters `mc_iterations` (int), `heuristic` (`name` or `name@version`) and
//!   `seed` (int). The protocol has no per-sample error: a sample that fails fails the request
//!   (INVALID_ARGUMENT / HTTP 400) with a message naming its index.
//!
//! Sources: KServe's "Open Inference Protocol" specification (REST and gRPC) and Triton
//! Inference Server's protocol extensions (binary tensor data, model configuration,
//! statistics, repository index).

pub mod grpc;
pub mod rest;

use std::sync::Arc;

use tonic::Status;

use crate::{
    engine::SampleInput,
    infer::{Infer, PredictParams},
    metrics::{Metrics, ModelStats},
    projects::{HeuristicChoice, Project, UNTRAINED_VERSION, check_mc_iterations},
};

/// The input of encoded images.
pub const IMAGE_INPUT: &str = "image";
/// The input of preprocessed tensors.
pub const TENSOR_INPUT: &str = "tensor";
/// Every output, in the order they are returned by default.
pub const OUTPUTS: [&str; 4] = ["probabilities", "class", "score", "mc_samples"];
/// The `platform` reported in metadata.
pub const PLATFORM: &str = "alps_mc_dropout";
/// Protocol extensions served (ServerMetadata `extensions`). Not `model_repository`: of it only
/// RepositoryIndex is served (projects are created over `alps.v1`, not loaded).
pub const EXTENSIONS: [&str; 3] = ["binary_tensor_data", "model_configuration", "statistics"];

/// Values of a tensor, by datatype.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// `BYTES`: one byte string per element.
    Bytes(Vec<Vec<u8>>),
    /// `FP32`.
    Fp32(Vec<f32>),
}

impl TensorData {
    /// The protocol's datatype name.
    pub fn datatype(&self) -> &'static str {
        match self {
            Self::Bytes(_) => "BYTES",
            Self::Fp32(_) => "FP32",
        }
    }

    /// The raw little-endian encoding: FP32 values back to back; BYTES elements each as a
    /// 4-byte little-endian length followed by the bytes (the protocol's raw layout).
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            Self::Fp32(values) => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Self::Bytes(values) => {
                let mut raw = Vec::with_capacity(values.iter().map(|v| v.len() + 4).sum());
                for value in values {
                    raw.extend_from_slice(&(value.len() as u32).to_le_bytes());
                    raw.extend_from_slice(value);
                }
                raw
            }
        }
    }

    /// Decodes `raw` bytes of `datatype` (see [`TensorData::to_raw`]); a BYTES tensor may
    /// hold at most `max_elements` elements (one per sample: the admission bound), so that
    /// empty elements (4 bytes each on the wire) cannot multiply memory.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming `field` for an unsupported datatype, malformed bytes or too many
    /// elements.
    pub fn from_raw(field: &str, datatype: &str, raw: &[u8], max_elements: usize) -> Result<Self, Status> {
        match datatype {
            "FP32" => {
                if !raw.len().is_multiple_of(4) {
                    return Err(invalid(format!("{field}: {} bytes is not a whole number of FP32 values", raw.len())));
                }
                Ok(Self::Fp32(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
            }
            "BYTES" => {
                let (mut values, mut rest) = (Vec::new(), raw);
                while !rest.is_empty() {
                    if values.len() == max_elements {
                        return Err(invalid(format!("{field}: more than {max_elements} BYTES elements")));
                    }
                    let (length, tail) = rest.split_first_chunk::<4>().ok_or_else(|| {
                        invalid(format!("{field}: truncated BYTES element length at element {}", values.len()))
                    })?;
                    let length = u32::from_le_bytes(*length) as usize;
                    if tail.len() < length {
                        return Err(invalid(format!(
                            "{field}: BYTES element {} declares {length} bytes, {} remain",
                            values.len(),
                            tail.len()
                        )));
                    }
                    let (value, tail) = tail.split_at(length);
                    values.push(value.to_vec());
                    rest = tail;
                }
                Ok(Self::Bytes(values))
            }
            other => Err(unsupported_datatype(field, other)),
        }
    }
}

/// One input tensor as decoded from either transport.
#[derive(Clone, Debug, PartialEq)]
pub struct InputTensor {
    /// `image` or `tensor`.
    pub name: String,
    /// Shape, batch first.
    pub shape: Vec<i64>,
    /// Values, row-major.
    pub data: TensorData,
}

/// One output tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputTensor {
    /// One of [`OUTPUTS`].
    pub name: &'static str,
    /// Shape, batch first.
    pub shape: Vec<i64>,
    /// Values, row-major.
    pub data: TensorData,
}

/// A request parameter value.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    /// Boolean.
    Bool(bool),
    /// Signed integer.
    Int(i64),
    /// Unsigned integer (Triton's `uint64_param`).
    Uint(u64),
    /// Floating point (Triton's `double_param`).
    Double(f64),
    /// String.
    String(String),
}

/// Request parameters of other clients' that ALPS accepts and ignores, besides any named
/// `triton_*`: tritonclient and perf_analyzer send them for features (priorities, timeouts,
/// sequences, binary outputs on HTTP, empty final stream responses) that do not change an
/// ALPS prediction.
const IGNORED_PARAMS: [&str; 6] =
    ["priority", "timeout", "sequence_id", "sequence_start", "sequence_end", "binary_data_output"];

/// The ALPS request parameters, checked.
///
/// # Errors
/// INVALID_ARGUMENT for a parameter of the wrong type or value, or an unknown one (a typo
/// must not silently fall back to a default).
pub fn predict_params<'a>(params: impl IntoIterator<Item = (&'a str, &'a Param)>) -> Result<PredictParams, Status> {
    let mut predict = PredictParams::default();
    for (name, value) in params {
        match (name, value) {
            ("mc_iterations", value) => {
                predict.mc_iterations = mc_iterations(value)?;
            }
            ("seed", value) => predict.seed = Some(integer("parameters.seed", value)?),
            ("heuristic", Param::String(reference)) => {
                let (name, version) = reference.split_once('@').unwrap_or((reference, ""));
                if name.is_empty() {
                    return Err(invalid("parameters.heuristic: a name is required, `name` or `name@version`"));
                }
                predict.heuristic = Some(HeuristicChoice { name: name.to_owned(), version: version.to_owned() });
            }
            ("heuristic", _) => return Err(invalid("parameters.heuristic: a string, `name` or `name@version`")),
            (name, _) if IGNORED_PARAMS.contains(&name) || name.starts_with("triton_") => {}
            (name, _) => {
                return Err(invalid(format!(
                    "parameters.{}: unknown parameter; ALPS takes mc_iterations, heuristic and seed",
                    name.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    Ok(predict)
}

/// The `mc_iterations` parameter: a whole number in the server's one range for K, worded as
/// everywhere else whatever the number (negative, or past u32).
fn mc_iterations(value: &Param) -> Result<u32, Status> {
    let field = "parameters.mc_iterations";
    let whole = match value {
        Param::Int(v) => Some(i128::from(*v)),
        Param::Uint(v) => Some(i128::from(*v)),
        Param::Double(v) if v.fract() == 0.0 && v.abs() <= 1e30 => Some(*v as i128),
        _ => None,
    };
    let whole = whole.ok_or_else(|| invalid(format!("{field}: a whole number from 1 to 1000 is required")))?;
    check_mc_iterations(field, whole).map_err(|e| invalid(format!("{}: {}", e.field, e.message)))?;
    // Within 1..=1000 now.
    Ok(whole as u32)
}

fn integer(field: &str, value: &Param) -> Result<u64, Status> {
    match value {
        Param::Int(v) => u64::try_from(*v).map_err(|_| invalid(format!("{field}: {v} is negative"))),
        Param::Uint(v) => Ok(*v),
        Param::Double(v) if v.fract() == 0.0 && *v >= 0.0 && *v <= u64::MAX as f64 => Ok(*v as u64),
        _ => Err(invalid(format!("{field}: a non-negative integer is required"))),
    }
}

/// The outputs to return: `requested` names in order, or every output when none is named.
///
/// # Errors
/// INVALID_ARGUMENT for an unknown or repeated output name.
pub fn requested_outputs<'a>(requested: impl IntoIterator<Item = &'a str>) -> Result<Vec<&'static str>, Status> {
    let mut outputs = Vec::new();
    for name in requested {
        let known = OUTPUTS.iter().find(|&&o| o == name).ok_or_else(|| {
            invalid(format!(
                "outputs: unknown output {:?}; the outputs are {}",
                name.chars().take(64).collect::<String>(),
                OUTPUTS.join(", ")
            ))
        })?;
        if outputs.contains(known) {
            return Err(invalid(format!("outputs: {known} requested twice")));
        }
        outputs.push(*known);
    }
    Ok(if outputs.is_empty() { OUTPUTS.to_vec() } else { outputs })
}

/// The protocol's name of ALPS model version `version`: `v3` → `3`, `untrained` → `0`.
pub fn protocol_version(version: &str) -> String {
    if version == UNTRAINED_VERSION {
        return "0".to_owned();
    }
    version
        .strip_prefix('v')
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or(version)
        .to_owned()
}

/// The ALPS model version a request names: `3` → `v3`, `0` → `untrained`; anything else
/// (`v3`, empty for the active version) as given.
pub fn alps_version(version: &str) -> String {
    match version {
        "0" => UNTRAINED_VERSION.to_owned(),
        digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => format!("v{digits}"),
        other => other.to_owned(),
    }
}

/// The project `model` at protocol version `version` (empty: the active one).
///
/// # Errors
/// INVALID_ARGUMENT for a malformed name or version, NOT_FOUND for an unknown one.
pub fn project(infer: &Infer, model: &str, version: &str) -> Result<Arc<Project>, Status> {
    Ok(infer.project_at("model_name", model, &alps_version(version))?)
}

/// The protocol versions `project` can serve, newest first.
///
/// # Errors
/// INTERNAL if the version list cannot be read.
pub fn versions(infer: &Infer, project: &Project) -> Result<Vec<String>, Status> {
    Ok(infer.versions(project)?.iter().map(|v| protocol_version(v)).collect())
}

/// The engine's statistics of `projects`, per project and protocol version; only `version`
/// (a protocol version) when it is not empty.
pub fn statistics(metrics: &Metrics, projects: &[Arc<Project>], version: &str) -> Vec<(String, String, ModelStats)> {
    let wanted = alps_version(version);
    projects
        .iter()
        .flat_map(|project| {
            metrics
                .model_stats(&project.spec.id)
                .into_iter()
                .filter(|(v, _)| wanted.is_empty() || *v == wanted)
                .map(|(v, stats)| (project.spec.id.clone(), protocol_version(&v), stats))
        })
        .collect()
}

/// Runs one inference request: `project` (as [`project`] resolved it, first thing, so that
/// every later failure counts for it) on the one input, returning the project as served and
/// the `outputs` in order.
///
/// # Errors
/// INVALID_ARGUMENT for a request that does not follow the mapping or a sample that fails
/// (its index named); NOT_FOUND for an unknown project or version; the statuses of `Predict`.
pub async fn infer(
    infer: &Infer,
    project: Arc<Project>,
    inputs: Vec<InputTensor>,
    params: PredictParams,
    outputs: &[&'static str],
) -> Result<(Arc<Project>, Vec<OutputTensor>), Status> {
    let [input] = <[InputTensor; 1]>::try_from(inputs).map_err(|inputs| {
        invalid(format!(
            "inputs: {} inputs sent; send exactly one, `{IMAGE_INPUT}` (BYTES [N]) or `{TENSOR_INPUT}` (FP32 [N, C, H, W])",
            inputs.len()
        ))
    })?;
    let samples = samples(&project, input)?;
    let n = samples.len();
    let params = PredictParams { return_mc_samples: outputs.contains(&"mc_samples"), ..params };
    let predictions = infer.predict(project, samples, params).await?;
    let (classes, k) = (predictions.project.spec.classes.len(), predictions.mc_iterations);
    let mut probabilities = Vec::with_capacity(n * classes);
    let (mut class, mut score, mut mc_samples) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::new());
    for (index, sample) in predictions.samples.into_iter().enumerate() {
        let sample = sample.map_err(|error| invalid(format!("sample {index}: {error}")))?;
        probabilities.extend_from_slice(&sample.mean_probabilities);
        class.push(predictions.project.spec.classes[sample.class_index].clone().into_bytes());
        score.push(sample.score);
        mc_samples.extend(sample.mc_samples.unwrap_or_default());
    }
    let (n, c, k) = (n as i64, classes as i64, k as i64);
    let mut all = vec![
        OutputTensor { name: "probabilities", shape: vec![n, c], data: TensorData::Fp32(probabilities) },
        OutputTensor { name: "class", shape: vec![n], data: TensorData::Bytes(class) },
        OutputTensor { name: "score", shape: vec![n], data: TensorData::Fp32(score) },
        OutputTensor { name: "mc_samples", shape: vec![n, c, k], data: TensorData::Fp32(mc_samples) },
    ];
    let selected = outputs
        .iter()
        .filter_map(|name| all.iter().position(|o| o.name == *name).map(|i| all.swap_remove(i)))
        .collect();
    Ok((predictions.project, selected))
}

/// Splits the input into the engine's samples, checking name, datatype and shape.
fn samples(project: &Project, input: InputTensor) -> Result<Vec<SampleInput>, Status> {
    let field = format!("inputs[{}]", input.name.chars().take(64).collect::<String>());
    let Some((&n, per_sample)) = input.shape.split_first() else {
        return Err(invalid(format!("{field}: shape is empty; the first dimension is the batch")));
    };
    if input.shape.iter().any(|&d| d < 0) {
        return Err(invalid(format!("{field}: negative dimension in shape {:?}", input.shape)));
    }
    let n = usize::try_from(n).map_err(|_| invalid(format!("{field}: batch size {n} is too large")))?;
    match (input.name.as_str(), input.data) {
        (IMAGE_INPUT, TensorData::Bytes(images)) => {
            if !(per_sample.is_empty() || per_sample == [1]) {
                return Err(invalid(format!("{field}: shape {:?}; images are BYTES [N] or [N, 1]", input.shape)));
            }
            check_count(&field, images.len(), n)?;
            Ok(images.into_iter().map(SampleInput::Image).collect())
        }
        (TENSOR_INPUT, TensorData::Fp32(values)) => {
            let chw = input_shape(project);
            let flat = chw.iter().product::<u64>() as i64;
            let fits = per_sample.iter().map(|&d| d as u64).eq(chw) || per_sample == [flat];
            if !fits {
                return Err(invalid(format!(
                    "{field}: shape {:?}; project {} takes FP32 [N, {}, {}, {}] or [N, {flat}]",
                    input.shape, project.spec.id, chw[0], chw[1], chw[2]
                )));
            }
            // The per-sample shape is the project's (small), so only the batch can overflow.
            let size = flat as usize;
            check_count(&field, values.len(), n.saturating_mul(size))?;
            let shape: Vec<u64> = per_sample.iter().map(|&d| d as u64).collect();
            Ok(values
                .chunks_exact(size.max(1))
                .map(|v| SampleInput::Tensor { shape: shape.clone(), values: v.to_vec() })
                .collect())
        }
        (IMAGE_INPUT | TENSOR_INPUT, data) => Err(invalid(format!(
            "{field}: datatype {}; `{IMAGE_INPUT}` is BYTES and `{TENSOR_INPUT}` is FP32",
            data.datatype()
        ))),
        (_, _) => Err(invalid(format!("{field}: unknown input; the inputs are `{IMAGE_INPUT}` and `{TENSOR_INPUT}`"))),
    }
}

fn check_count(field: &str, got: usize, expected: usize) -> Result<(), Status> {
    if got == expected {
        return Ok(());
    }
    Err(invalid(format!("{field}: {got} values do not match the shape ({expected} values)")))
}

/// The project's input shape `[C, H, W]`.
fn input_shape(project: &Project) -> [u64; 3] {
    let p = &project.spec.preprocessing;
    [u64::from(p.channels), u64::from(p.height), u64::from(p.width)]
}

/// A tensor's description in metadata: name, datatype, shape with -1 for the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name.
    pub name: &'static str,
    /// `BYTES` or `FP32`.
    pub datatype: &'static str,
    /// Shape, `-1` where any size goes.
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// The datatype in Triton's model configuration (`TYPE_STRING` for BYTES, `TYPE_FP32`).
    pub fn config_type(&self) -> alps_proto::inference::DataType {
        use alps_proto::inference::DataType;
        if self.datatype == "BYTES" { DataType::TypeString } else { DataType::TypeFp32 }
    }
}

/// The inputs of `project`: `image` BYTES `[-1, 1]` and `tensor` FP32 `[-1, C, H, W]`.
/// Images are described as `[N, 1]`, Triton's layout of one string per batch item (clients
/// such as perf_analyzer drop the batch dimension and need one left); `[N]` is accepted too.
pub fn inputs(project: &Project) -> Vec<TensorSpec> {
    let [c, h, w] = input_shape(project).map(|d| d as i64);
    vec![
        TensorSpec { name: IMAGE_INPUT, datatype: "BYTES", shape: vec![-1, 1] },
        TensorSpec { name: TENSOR_INPUT, datatype: "FP32", shape: vec![-1, c, h, w] },
    ]
}

/// The outputs of `project`; K varies per request, so `mc_samples` is `[-1, C, -1]`.
pub fn outputs(project: &Project) -> Vec<TensorSpec> {
    let c = project.spec.classes.len() as i64;
    vec![
        TensorSpec { name: "probabilities", datatype: "FP32", shape: vec![-1, c] },
        TensorSpec { name: "class", datatype: "BYTES", shape: vec![-1] },
        TensorSpec { name: "score", datatype: "FP32", shape: vec![-1] },
        TensorSpec { name: "mc_samples", datatype: "FP32", shape: vec![-1, c, -1] },
    ]
}

/// A project as a Triton model configuration: batching on the first dimension up to the
/// admission bound (`--max-in-flight-samples`), tensor shapes without the batch dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    /// The largest batch one request may carry.
    pub max_batch_size: usize,
    /// Both inputs; each is optional (a request sends one of them).
    pub inputs: Vec<TensorSpec>,
    /// Every output.
    pub outputs: Vec<TensorSpec>,
    /// How long the engine waits to fill a batch, µs; `None` when batching across requests is
    /// off (`--max-batch-wait-ms 0`).
    pub max_queue_delay_us: Option<u64>,
}

/// The model configuration of `project` (see [`ModelConfig`]).
pub fn model_config(project: &Project, infer: &Infer) -> ModelConfig {
    let without_batch = |specs: Vec<TensorSpec>| {
        specs
            .into_iter()
            .map(|s| TensorSpec { shape: if s.shape.len() == 1 { vec![1] } else { s.shape[1..].to_vec() }, ..s })
            .collect()
    };
    let (max_batch_size, wait) = infer.batching();
    ModelConfig {
        max_batch_size,
        inputs: without_batch(inputs(project)),
        outputs: without_batch(outputs(project)),
        max_queue_delay_us: (!wait.is_zero()).then(|| u64::try_from(wait.as_micros()).unwrap_or(u64::MAX)),
    }
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

fn unsupported_datatype(field: &str, datatype: &str) -> Status {
    invalid(format!(
        "{field}: datatype {:?} is not supported; images are BYTES, tensors FP32",
        datatype.chars().take(16).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_tensors_round_trip_in_the_protocol_layout() {
        let bytes = TensorData::Bytes(vec![b"ab".to_vec(), Vec::new(), b"xyz".to_vec()]);
        let raw = bytes.to_raw();
        assert_eq!(&raw[..6], &[2, 0, 0, 0, b'a', b'b']);
        assert_eq!(TensorData::from_raw("x", "BYTES", &raw, 3).unwrap(), bytes);
        let too_many = TensorData::from_raw("x", "BYTES", &raw, 2).unwrap_err();
        assert!(too_many.message().contains("more than 2 BYTES elements"), "{}", too_many.message());
        let fp32 = TensorData::Fp32(vec![1.5, -2.0]);
        assert_eq!(TensorData::from_raw("x", "FP32", &fp32.to_raw(), 0).unwrap(), fp32);
    }

    #[test]
    fn malformed_raw_tensors_are_invalid_arguments() {
        for (datatype, raw) in [("FP32", &[0u8, 0, 0][..]), ("BYTES", &[5, 0, 0, 0, 1][..]), ("BYTES", &[1, 0][..])] {
            let status = TensorData::from_raw("inputs[tensor]", datatype, raw, 8).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{datatype} {raw:?}");
            assert!(status.message().starts_with("inputs[tensor]"), "{}", status.message());
        }
        let status = TensorData::from_raw("inputs[x]", "INT8", &[], 8).unwrap_err();
        assert!(status.message().contains("not supported"), "{}", status.message());
    }

    #[test]
    fn parameters_are_checked_and_unknown_ones_refused() {
        let seed = Param::Int(7);
        let k = Param::Uint(5);
        let heuristic = Param::String("entropy@1.0.0".into());
        let params = predict_params([("seed", &seed), ("mc_iterations", &k), ("heuristic", &heuristic)]).unwrap();
        assert_eq!((params.seed, params.mc_iterations), (Some(7), 5));
        assert_eq!(params.heuristic, Some(HeuristicChoice { name: "entropy".into(), version: "1.0.0".into() }));
        assert!(predict_params([("priority", &Param::Int(1))]).is_ok());
        for empty in ["", "@1.0.0"] {
            let status = predict_params([("heuristic", &Param::String(empty.into()))]).unwrap_err();
            assert!(status.message().contains("a name is required"), "{empty:?}: {}", status.message());
        }
        assert!(predict_params([("triton_enable_empty_final_response", &Param::Bool(true))]).is_ok());
        for (name, value) in [
            ("mc_iteration", Param::Int(5)),
            ("mc_iterations", Param::Int(-1)),
            ("mc_iterations", Param::Int(0)),
            ("mc_iterations", Param::Int(1001)),
            ("mc_iterations", Param::Uint(1 << 40)),
            ("mc_iterations", Param::Double(2.5)),
            ("seed", Param::String("7".into())),
            ("heuristic", Param::Int(1)),
        ] {
            let status = predict_params([(name, &value)]).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{name}");
            // Every message names the parameter as the request does, once.
            let message = status.message();
            assert!(message.starts_with(&format!("parameters.{name}: ")), "{message}");
            assert!(!message[1..].contains("parameters."), "{message}");
        }
        let huge = predict_params([("mc_iterations", &Param::Uint(1 << 40))]).unwrap_err();
        assert!(huge.message().contains(&(1u64 << 40).to_string()), "the number sent: {}", huge.message());
    }

    #[test]
    fn versions_are_numbers_on_the_protocol() {
        for (alps, protocol) in [("v3", "3"), ("v12", "12"), (UNTRAINED_VERSION, "0")] {
            assert_eq!(protocol_version(alps), protocol);
            assert_eq!(alps_version(protocol), alps);
        }
        assert_eq!(alps_version("v3"), "v3");
        assert_eq!(alps_version(""), "");
        assert_eq!(protocol_version("v"), "v");
    }

    #[test]
    fn outputs_default_to_all_and_unknown_names_are_refused() {
        assert_eq!(requested_outputs([]).unwrap(), OUTPUTS.to_vec());
        assert_eq!(requested_outputs(["score", "class"]).unwrap(), vec!["score", "class"]);
        assert!(requested_outputs(["scores"]).unwrap_err().message().contains("unknown output"));
        assert!(requested_outputs(["score", "score"]).unwrap_err().message().contains("twice"));
    }
}
