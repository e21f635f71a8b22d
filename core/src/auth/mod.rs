//! Who may call what: bearer tokens with roles, checked by a tower layer in front of every
//! gRPC service (see [`layer`]), and the table of which role each RPC needs ([`method`]).
//!
//! Roles include the ones before them: `predict` < `label` < `admin`.
//!
//! * `predict`: Predict, PredictStream, Rank, Score, Select, and every List/Get/Count/Watch
//!   (also server reflection);
//! * `label`: AddExamples, DeleteExamples, Train, CancelTrainingJob;
//! * `admin`: Create/Update/DeleteProject, UploadModelFile, ActivateModelVersion,
//!   ReloadHeuristics.
//!
//! `grpc.health.v1` is open to everyone (Kubernetes probes), and so are the Open Inference
//! Protocol's ServerLive and ServerReady (and their REST mirrors); the protocol's other calls
//! need `predict`.

pub mod layer;
pub mod tokens;

use std::{fmt, str::FromStr};

/// A caller's role; each includes the rights of the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Role {
    /// Read-only: predictions, scores, listings.
    Predict,
    /// Also labelled examples and training.
    Label,
    /// Also projects, model files, model activation and plugin reloads.
    Admin,
}

impl Role {
    /// The name used in the tokens file and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Predict => "predict",
            Self::Label => "label",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "predict" => Ok(Self::Predict),
            "label" => Ok(Self::Label),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown role {other:?} (predict, label or admin)")),
        }
    }
}

/// An authenticated caller, put into each request's extensions by the auth layer so that
/// handlers can log who did what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name from the tokens file (`anonymous` when auth is off).
    pub name: String,
    /// The token's role.
    pub role: Role,
}

impl Caller {
    /// The caller of a server without a tokens file (loopback or `--insecure-no-auth`).
    pub fn anonymous() -> Self {
        Self { name: "anonymous".into(), role: Role::Admin }
    }
}

/// What the auth layer knows of one gRPC method: its name for logs and metrics, and the role
/// it needs (`None`: open to everyone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method {
    /// Fully qualified service, e.g. `alps.v1.InferenceService` (`unknown` for other paths).
    pub service: &'static str,
    /// Method, e.g. `Predict` (`unknown` for other paths).
    pub method: &'static str,
    /// Role needed; `None` for the health service.
    pub role: Option<Role>,
}

use Role::{Admin, Label, Predict};

/// Every served method with the role it needs. Paths not listed need `predict` (the router
/// then answers UNIMPLEMENTED), so an unknown path is never a way around authentication.
const METHODS: &[(&str, &str, Option<Role>)] = &[
    ("grpc.health.v1.Health", "Check", None),
    ("grpc.health.v1.Health", "Watch", None),
    ("grpc.reflection.v1.ServerReflection", "ServerReflectionInfo", Some(Predict)),
    ("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo", Some(Predict)),
    ("alps.v1.ProjectService", "CreateProject", Some(Admin)),
    ("alps.v1.ProjectService", "GetProject", Some(Predict)),
    ("alps.v1.ProjectService", "ListProjects", Some(Predict)),
    ("alps.v1.ProjectService", "UpdateProject", Some(Admin)),
    ("alps.v1.ProjectService", "DeleteProject", Some(Admin)),
    ("alps.v1.ProjectService", "UploadModelFile", Some(Admin)),
    ("alps.v1.InferenceService", "Predict", Some(Predict)),
    ("alps.v1.InferenceService", "PredictStream", Some(Predict)),
    ("alps.v1.InferenceService", "Rank", Some(Predict)),
    ("alps.v1.HeuristicService", "Score", Some(Predict)),
    ("alps.v1.HeuristicService", "Select", Some(Predict)),
    ("alps.v1.HeuristicService", "ListHeuristics", Some(Predict)),
    ("alps.v1.HeuristicService", "ReloadHeuristics", Some(Admin)),
    ("alps.v1.ExampleService", "AddExamples", Some(Label)),
    ("alps.v1.ExampleService", "DeleteExamples", Some(Label)),
    ("alps.v1.ExampleService", "ListExamples", Some(Predict)),
    ("alps.v1.ExampleService", "CountExamples", Some(Predict)),
    ("alps.v1.TrainingService", "Train", Some(Label)),
    ("alps.v1.TrainingService", "GetTrainingJob", Some(Predict)),
    ("alps.v1.TrainingService", "WatchTrainingJob", Some(Predict)),
    ("alps.v1.TrainingService", "CancelTrainingJob", Some(Label)),
    ("alps.v1.TrainingService", "ListTrainingJobs", Some(Predict)),
    ("alps.v1.ModelVersionService", "ListModelVersions", Some(Predict)),
    ("alps.v1.ModelVersionService", "GetModelVersion", Some(Predict)),
    ("alps.v1.ModelVersionService", "ActivateModelVersion", Some(Admin)),
    // The Open Inference Protocol: liveness and readiness are open like health; the rest reads
    // or predicts.
    ("inference.GRPCInferenceService", "ServerLive", None),
    ("inference.GRPCInferenceService", "ServerReady", None),
    ("inference.GRPCInferenceService", "ModelReady", Some(Predict)),
    ("inference.GRPCInferenceService", "ServerMetadata", Some(Predict)),
    ("inference.GRPCInferenceService", "ModelMetadata", Some(Predict)),
    ("inference.GRPCInferenceService", "ModelInfer", Some(Predict)),
    ("inference.GRPCInferenceService", "ModelStreamInfer", Some(Predict)),
    ("inference.GRPCInferenceService", "ModelConfig", Some(Predict)),
    ("inference.GRPCInferenceService", "ModelStatistics", Some(Predict)),
    ("inference.GRPCInferenceService", "RepositoryIndex", Some(Predict)),
];

/// The method an HTTP/2 request path (`/package.Service/Method`) calls. A path missing from
/// [`METHODS`] needs the `admin` role: a service added without a row is closed by default,
/// never open to every token.
pub fn method(path: &str) -> Method {
    let known = path
        .strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(service, method)| METHODS.iter().find(|(s, m, _)| *s == service && *m == method));
    match known {
        Some(&(service, method, role)) => Method { service, method, role },
        None => Method { service: "unknown", method: "unknown", role: Some(Admin) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parsed() {
        assert!(Predict < Label && Label < Admin);
        for role in [Predict, Label, Admin] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn the_issue_s_role_table_holds() {
        assert_eq!(method("/grpc.health.v1.Health/Check").role, None);
        assert_eq!(method("/alps.v1.InferenceService/Rank").role, Some(Predict));
        assert_eq!(method("/alps.v1.TrainingService/Train").role, Some(Label));
        assert_eq!(method("/alps.v1.ModelVersionService/ActivateModelVersion").role, Some(Admin));
        assert_eq!(method("/alps.v1.ProjectService/UploadModelFile").role, Some(Admin));
        // Unknown paths need the highest role, and never claim to be health.
        for path in ["/grpc.health.v1.Health/Other", "/", "", "/x/y/z", "grpc.health.v1.Health/Check"] {
            assert_eq!(method(path), Method { service: "unknown", method: "unknown", role: Some(Admin) }, "{path}");
        }
    }

    #[test]
    fn every_rpc_of_the_descriptors_is_in_the_table() {
        use prost::Message;
        for (package, descriptors) in
            [("alps.v1", alps_proto::FILE_DESCRIPTOR_SET), ("inference", alps_proto::INFERENCE_FILE_DESCRIPTOR_SET)]
        {
            let set = prost_types::FileDescriptorSet::decode(descriptors).unwrap();
            let mut count = 0;
            for file in set.file.iter().filter(|f| f.package() == package) {
                for service in &file.service {
                    for rpc in &service.method {
                        let path = format!("/{package}.{}/{}", service.name(), rpc.name());
                        assert_ne!(method(&path).service, "unknown", "{path} has no role");
                        count += 1;
                    }
                }
            }
            let prefix = format!("{package}.");
            assert_eq!(count, METHODS.iter().filter(|(s, _, _)| s.starts_with(&prefix)).count(), "{package}");
        }
    }
}
