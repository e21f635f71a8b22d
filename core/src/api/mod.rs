//! The gRPC surface: tonic services only (decode, validate, call, encode). Never touches tch.
//!
//! Served: `alps.v1.ProjectService`, `alps.v1.InferenceService`, `alps.v1.HeuristicService`,
//! `alps.v1.ExampleService`, `alps.v1.TrainingService`, `alps.v1.ModelVersionService`,
//! the Open Inference Protocol's `inference.GRPCInferenceService` (see [`crate::oip`]),
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha) over every served file, so
//! `grpcurl` can describe the API without the `.proto` files.

pub mod examples;
pub mod heuristics;
pub mod inference;
pub mod projects;
pub mod training;
pub mod uploads;

use std::sync::Arc;

use alps_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use alps_proto::v1::{
    example_service_server::ExampleServiceServer, heuristic_service_server::HeuristicServiceServer,
    inference_service_server::InferenceServiceServer, model_version_service_server::ModelVersionServiceServer,
    project_service_server::ProjectServiceServer, training_service_server::TrainingServiceServer,
};
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::{
    auth::Caller,
    engine::Engine,
    metrics::Metrics,
    plugins::HeuristicHost,
    projects::Projects,
    training::{Trainer, examples::Examples},
};

/// What the gRPC services share.
#[derive(Debug)]
pub struct AppState {
    /// The heuristic plugin host.
    pub heuristics: Arc<HeuristicHost>,
    /// The project registry.
    pub projects: Arc<Projects>,
    /// The inference engine.
    pub engine: Engine,
    /// Labelled examples.
    pub examples: Arc<Examples>,
    /// Training jobs and model versions.
    pub trainer: Arc<Trainer>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The inference facade (Predict, Rank and the Open Inference Protocol).
    pub infer: crate::infer::Infer,
    /// False once shutdown began: the Open Inference Protocol's readiness (gRPC health has its
    /// own reporter).
    pub serving: Arc<std::sync::atomic::AtomicBool>,
    /// The model root, for UploadModelFile, and the weights cache.
    pub model_files: crate::models::files::ModelFiles,
    /// Longest CreateProject waits for published pretrained weights (`--weights-fetch-wait-secs`).
    pub weights_fetch_wait: std::time::Duration,
}

/// Why the gRPC routes could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the gRPC reflection service: {0}")]
pub struct ReflectionError(#[from] tonic_reflection::server::Error);

/// Builds the routes of the gRPC server and returns them with the reporter that sets the
/// health status (overall `""` and every served `alps.v1` service start as `SERVING`).
///
/// # Errors
/// [`ReflectionError`] if an embedded descriptor set is malformed (a build defect).
pub async fn routes(
    state: Arc<AppState>,
    max_message_bytes: usize,
) -> Result<(HealthReporter, Routes), ReflectionError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let heuristics = HeuristicServiceServer::new(heuristics::HeuristicApi::new(state.heuristics.clone()))
        .max_decoding_message_size(max_message_bytes);
    let projects = ProjectServiceServer::new(projects::ProjectApi::new(state.clone()))
        .max_decoding_message_size(max_message_bytes);
    let examples = ExampleServiceServer::new(examples::ExampleApi::new(state.clone()))
        .max_decoding_message_size(max_message_bytes);
    let inference = InferenceServiceServer::new(inference::InferenceApi::new(state.clone()))
        .max_decoding_message_size(max_message_bytes);
    let open_inference = GrpcInferenceServiceServer::new(crate::oip::grpc::OipApi::new(&state))
        .max_decoding_message_size(max_message_bytes);
    reporter.set_serving::<HeuristicServiceServer<heuristics::HeuristicApi>>().await;
    reporter.set_serving::<ProjectServiceServer<projects::ProjectApi>>().await;
    reporter.set_serving::<ExampleServiceServer<examples::ExampleApi>>().await;
    let training_api = training::TrainingApi::new(state);
    let training = TrainingServiceServer::new(training_api.clone()).max_decoding_message_size(max_message_bytes);
    let versions = ModelVersionServiceServer::new(training_api).max_decoding_message_size(max_message_bytes);
    reporter.set_serving::<TrainingServiceServer<training::TrainingApi>>().await;
    reporter.set_serving::<ModelVersionServiceServer<training::TrainingApi>>().await;
    reporter.set_serving::<InferenceServiceServer<inference::InferenceApi>>().await;
    reporter.set_serving::<GrpcInferenceServiceServer<crate::oip::grpc::OipApi>>().await;
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let routes = Routes::new(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(heuristics)
        .add_service(projects)
        .add_service(inference)
        .add_service(open_inference)
        .add_service(examples)
        .add_service(training)
        .add_service(versions);
    Ok((reporter, routes))
}

/// The project `id` (request field `project_id`) after checking it against the identifier
/// grammar: INVALID_ARGUMENT naming the field for a malformed id, NOT_FOUND for an unknown one.
pub(crate) fn project(state: &AppState, id: &str) -> Result<Arc<crate::projects::Project>, tonic::Status> {
    Ok(state.infer.project("project_id", id)?)
}

/// Logs an admin call with who made it (the token's name), the RPC and the project, for audit.
/// The project id is logged before it is validated, so at most its first 80 characters.
pub(crate) fn audit<T>(request: &tonic::Request<T>, rpc: &'static str, project: &str) {
    let caller = request.extensions().get::<Caller>().map_or("anonymous", |c| c.name.as_str());
    let project = project.char_indices().nth(80).map_or(project, |(end, _)| &project[..end]);
    tracing::info!(caller, rpc, project, "admin call");
}

/// Runs CPU-heavy or blocking work (heuristics, SQLite, file I/O) on the blocking pool, off
/// the async runtime; a panic there becomes INTERNAL.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, tonic::Status> + Send + 'static,
) -> Result<T, tonic::Status> {
    tokio::task::spawn_blocking(work).await.map_err(|error| crate::errors::internal("a worker task", &error))?
}

/// Reflection over `alps.v1` and `grpc.health.v1`; built twice because grpcurl and older
/// clients ask the v1alpha service while newer ones ask v1.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(alps_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(alps_proto::INFERENCE_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
