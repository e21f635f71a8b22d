//! The gRPC surface: tonic services only (decode, validate, call, encode). Never touches tch.
//!
//! Served today: `grpc.health.v1.Health` and server reflection (v1 and v1alpha) over every
//! `alps.v1` file, so `grpcurl` can describe the API without the `.proto` files. `alps.v1`
//! services that are not served yet answer `UNIMPLEMENTED` (tonic's router default).

use tonic::service::Routes;
use tonic_health::server::HealthReporter;

/// Why the gRPC routes could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the gRPC reflection service: {0}")]
pub struct ReflectionError(#[from] tonic_reflection::server::Error);

/// Builds the routes of the gRPC server and returns them with the reporter that sets the
/// health status (overall status `""` starts as `SERVING`).
///
/// # Errors
/// [`ReflectionError`] if an embedded descriptor set is malformed (a build defect).
pub fn routes() -> Result<(HealthReporter, Routes), ReflectionError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let routes = Routes::new(health).add_service(reflection_v1).add_service(reflection_v1alpha);
    Ok((reporter, routes))
}

/// Reflection over `alps.v1` and `grpc.health.v1`; built twice because grpcurl and older
/// clients ask the v1alpha service while newer ones ask v1.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(alps_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
