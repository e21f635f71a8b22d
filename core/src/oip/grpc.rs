//! `inference.GRPCInferenceService`: the Open Inference Protocol over gRPC, on the `alps.v1`
//! port with the same auth (role `predict`), TLS and message-size limit. Responses carry their
//! tensors in `raw_output_contents`, as Triton's own server does (tritonclient reads them
//! there); requests may use `contents` or `raw_input_contents`.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use alps_proto::inference::{
    self as pb, InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse, ModelStreamInferResponse,
    grpc_inference_service_server::GrpcInferenceService, infer_parameter::ParameterChoice,
    model_infer_request::InferInputTensor, model_infer_response::InferOutputTensor,
};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::{InputTensor, Param, TensorData, TensorSpec};
use crate::{
    api::AppState,
    infer::Infer,
    metrics::{Metrics, ModelStats, Tally},
    projects::Project,
};

/// Serves the Open Inference Protocol over gRPC.
#[derive(Debug, Clone)]
pub struct OipApi {
    infer: Infer,
    metrics: Arc<Metrics>,
    serving: Arc<std::sync::atomic::AtomicBool>,
}

impl OipApi {
    /// A service over the shared state.
    pub fn new(state: &AppState) -> Self {
        Self { infer: state.infer.clone(), metrics: state.metrics.clone(), serving: state.serving.clone() }
    }

    async fn infer_one(&self, request: ModelInferRequest) -> Result<ModelInferResponse, Status> {
        let project = super::project(&self.infer, &request.model_name, &request.model_version)?;
        let params: Vec<(&str, Param)> = request.parameters.iter().map(|(name, p)| (name.as_str(), param(p))).collect();
        let params = super::predict_params(params.iter().map(|(name, p)| (*name, p)))?;
        let outputs = super::requested_outputs(request.outputs.iter().map(|o| o.name.as_str()))?;
        let inputs = decode_inputs(request.inputs, request.raw_input_contents, self.infer.batching().0)?;
        let (project, tensors) = super::infer(&self.infer, project, inputs, params, &outputs).await?;
        let (outputs, raw_output_contents) = tensors
            .into_iter()
            .map(|t| {
                let output = InferOutputTensor {
                    name: t.name.to_owned(),
                    datatype: t.data.datatype().to_owned(),
                    shape: t.shape,
                    ..Default::default()
                };
                (output, t.data.to_raw())
            })
            .unzip();
        Ok(ModelInferResponse {
            model_name: project.spec.id.clone(),
            model_version: super::protocol_version(&project.active_version),
            id: request.id,
            parameters: HashMap::new(),
            outputs,
            raw_output_contents,
        })
    }
}

/// A parameter's value; one without a value reads as an empty string (refused where a value
/// matters).
fn param(parameter: &InferParameter) -> Param {
    let Some(choice) = parameter.parameter_choice.as_ref() else { return Param::String(String::new()) };
    match choice {
        ParameterChoice::BoolParam(v) => Param::Bool(*v),
        ParameterChoice::Int64Param(v) => Param::Int(*v),
        ParameterChoice::StringParam(v) => Param::String(v.clone()),
        ParameterChoice::DoubleParam(v) => Param::Double(*v),
        ParameterChoice::Uint64Param(v) => Param::Uint(*v),
    }
}

/// The inputs with their values from `contents`, or from `raw_input_contents` when given
/// (then one entry per input, in order); at most `max_samples` BYTES elements each.
fn decode_inputs(
    inputs: Vec<InferInputTensor>,
    raw: Vec<Vec<u8>>,
    max_samples: usize,
) -> Result<Vec<InputTensor>, Status> {
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(Status::invalid_argument(format!(
            "raw_input_contents: {} entries for {} inputs; send one per input or none",
            raw.len(),
            inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    inputs
        .into_iter()
        .map(|input| {
            let field = format!("inputs[{}]", input.name.chars().take(64).collect::<String>());
            let data = match raw.next() {
                Some(bytes) => TensorData::from_raw(&field, &input.datatype, &bytes, max_samples)?,
                None => contents(&field, &input.datatype, input.contents.unwrap_or_default())?,
            };
            Ok(InputTensor { name: input.name, shape: input.shape, data })
        })
        .collect()
}

fn contents(field: &str, datatype: &str, contents: InferTensorContents) -> Result<TensorData, Status> {
    match datatype {
        "BYTES" => Ok(TensorData::Bytes(contents.bytes_contents)),
        "FP32" => Ok(TensorData::Fp32(contents.fp32_contents)),
        other => Err(super::unsupported_datatype(field, other)),
    }
}

fn tensor_metadata(specs: Vec<TensorSpec>) -> Vec<pb::model_metadata_response::TensorMetadata> {
    specs
        .into_iter()
        .map(|s| pb::model_metadata_response::TensorMetadata {
            name: s.name.to_owned(),
            datatype: s.datatype.to_owned(),
            shape: s.shape,
        })
        .collect()
}

/// The project's [`super::ModelConfig`] in Triton's message.
fn model_config(project: &Project, infer: &Infer) -> pb::ModelConfig {
    let config = super::model_config(project, infer);
    pb::ModelConfig {
        name: project.spec.id.clone(),
        platform: super::PLATFORM.to_owned(),
        backend: "alps".to_owned(),
        max_batch_size: i32::try_from(config.max_batch_size).unwrap_or(i32::MAX),
        input: config
            .inputs
            .into_iter()
            .map(|s| pb::model_config::Input {
                name: s.name.to_owned(),
                data_type: s.config_type() as i32,
                dims: s.shape,
                optional: true,
            })
            .collect(),
        output: config
            .outputs
            .into_iter()
            .map(|s| pb::model_config::Output {
                name: s.name.to_owned(),
                data_type: s.config_type() as i32,
                dims: s.shape,
            })
            .collect(),
        dynamic_batching: config.max_queue_delay_us.map(|us| pb::model_config::DynamicBatching {
            preferred_batch_size: Vec::new(),
            max_queue_delay_microseconds: us,
        }),
    }
}

fn duration(tally: Tally) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration { count: tally.count, ns: tally.ns })
}

fn statistics(name: &str, version: String, stats: ModelStats) -> pb::ModelStatistics {
    pb::ModelStatistics {
        name: name.to_owned(),
        version,
        last_inference: stats.last_inference_unix_ms,
        inference_count: stats.inference_count,
        execution_count: stats.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(stats.success),
            fail: duration(stats.fail),
            queue: duration(stats.queue),
            compute_input: duration(stats.compute_input),
            compute_infer: duration(stats.compute_infer),
            compute_output: duration(stats.compute_output),
            cache_hit: None,
            cache_miss: None,
        }),
        batch_stats: Vec::new(),
    }
}

type StreamInfer = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for OipApi {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.serving.load(std::sync::atomic::Ordering::Relaxed);
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let ready = match super::project(&self.infer, &request.name, &request.version) {
            Ok(_) => true,
            Err(status) if matches!(status.code(), tonic::Code::NotFound | tonic::Code::FailedPrecondition) => false,
            Err(status) => return Err(status),
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "alps".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: super::EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let project = super::project(&self.infer, &request.name, &request.version)?;
        let versions = super::versions(&self.infer, &project)?;
        Ok(Response::new(pb::ModelMetadataResponse {
            name: project.spec.id.clone(),
            versions,
            platform: super::PLATFORM.to_owned(),
            inputs: tensor_metadata(super::inputs(&project)),
            outputs: tensor_metadata(super::outputs(&project)),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        self.infer_one(request.into_inner()).await.map(Response::new)
    }

    type ModelStreamInferStream = StreamInfer;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let mut inbound = request.into_inner();
        // Capacity 1: responses go out in order at the pace the client reads them. A failed
        // request is an error message on the stream (the protocol's rule), not its end.
        let (responses, outbound) = tokio::sync::mpsc::channel(1);
        let api = self.clone();
        tokio::spawn(crate::observe::in_this_call(async move {
            while let Ok(Some(request)) = inbound.message().await {
                let message = match api.infer_one(request).await {
                    Ok(response) => {
                        ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) }
                    }
                    Err(status) => {
                        ModelStreamInferResponse { error_message: status.message().to_owned(), infer_response: None }
                    }
                };
                if responses.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        }));
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let request = request.into_inner();
        let project = super::project(&self.infer, &request.name, &request.version)?;
        Ok(Response::new(pb::ModelConfigResponse { config: Some(model_config(&project, &self.infer)) }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let request = request.into_inner();
        let projects = if request.name.is_empty() {
            self.infer.projects()
        } else {
            vec![super::project(&self.infer, &request.name, &request.version)?]
        };
        let model_stats = super::statistics(&self.metrics, &projects, &request.version)
            .into_iter()
            .map(|(name, version, stats)| statistics(&name, version, stats))
            .collect();
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        _: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let models = self
            .infer
            .projects()
            .iter()
            .map(|p| pb::repository_index_response::ModelIndex {
                name: p.spec.id.clone(),
                version: super::protocol_version(&p.active_version),
                state: "READY".to_owned(),
                reason: String::new(),
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }
}
