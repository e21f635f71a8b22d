//! The gRPC surface: tonic services only (decode, validate, call, encode). Never touches tch.
//!
//! Served: `alps.v1.HeuristicService`, `grpc.health.v1.Health` and server reflection (v1 and
//! v1alpha) over every `alps.v1` file, so `grpcurl` can describe the API without the `.proto`
//! files. `alps.v1` services that are not served yet answer `UNIMPLEMENTED` (tonic's router
//! default).

pub mod heuristics;

use std::sync::Arc;

use alps_proto::v1::heuristic_service_server::HeuristicServiceServer;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::plugins::HeuristicHost;

/// Why the gRPC routes could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the gRPC reflection service: {0}")]
pub struct ReflectionError(#[from] tonic_reflection::server::Error);

/// What the gRPC services need.
#[derive(Clone, Debug)]
pub struct Services {
    /// The heuristic plugin host.
    pub heuristics: Arc<HeuristicHost>,
    /// Largest accepted request message, bytes.
    pub max_message_bytes: usize,
}

/// Builds the routes of the gRPC server and returns them with the reporter that sets the
/// health status (overall `""` and every served `alps.v1` service start as `SERVING`).
///
/// # Errors
/// [`ReflectionError`] if an embedded descriptor set is malformed (a build defect).
pub async fn routes(services: Services) -> Result<(HealthReporter, Routes), ReflectionError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let heuristics = HeuristicServiceServer::new(heuristics::HeuristicApi::new(services.heuristics))
        .max_decoding_message_size(services.max_message_bytes);
    reporter.set_serving::<HeuristicServiceServer<heuristics::HeuristicApi>>().await;
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let routes = Routes::new(health).add_service(reflection_v1).add_service(reflection_v1alpha).add_service(heuristics);
    Ok((reporter, routes))
}

/// Reflection over `alps.v1` and `grpc.health.v1`; built twice because grpcurl and older
/// clients ask the v1alpha service while newer ones ask v1.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(alps_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
