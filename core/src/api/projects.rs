//! `alps.v1.ProjectService`: create (idempotent upsert), get, list, update, delete projects.

use std::sync::Arc;

use alps_proto::v1::{
    self as pb, CreateProjectRequest, CreateProjectResponse, DeleteProjectRequest, DeleteProjectResponse,
    GetProjectRequest, GetProjectResponse, ListProjectsRequest, ListProjectsResponse, UpdateProjectRequest,
    UpdateProjectResponse, project_service_server::ProjectService,
};
use tonic::{Request, Response, Status};

use super::{AppState, blocking};
use crate::{
    engine::Engine,
    projects::{
        Architecture, DEFAULT_HEAD_DROPOUT, DEFAULT_HEURISTIC, DEFAULT_MC_ITERATIONS, HeuristicChoice, ModelSpec,
        Preprocessing, Project, ProjectError, ProjectSpec, ProjectUpdate,
    },
};

/// Serves the project registry.
#[derive(Debug, Clone)]
pub struct ProjectApi {
    state: Arc<AppState>,
}

impl ProjectApi {
    /// A service over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// NOT_FOUND (naming the loaded heuristics) unless `choice` resolves now.
    fn check_heuristic(&self, choice: &HeuristicChoice) -> Result<(), Status> {
        self.state
            .heuristics
            .registry()
            .resolve(&choice.name, &choice.version)
            .map(drop)
            .map_err(super::heuristics::resolve_status)
    }
}

/// The gRPC status of a project error.
pub fn project_status(error: ProjectError) -> Status {
    match error {
        ProjectError::Invalid(error) => Status::invalid_argument(error.to_string()),
        ProjectError::NotFound(_) => Status::not_found(error.to_string()),
        ProjectError::Store(error) => {
            tracing::error!(%error, "project store failed");
            Status::internal(error.to_string())
        }
    }
}

fn architecture(value: i32) -> Result<Architecture, Status> {
    match pb::Architecture::try_from(value) {
        Ok(pb::Architecture::Mlp) => Ok(Architecture::Mlp),
        Ok(pb::Architecture::SmallCnn) => Ok(Architecture::SmallCnn),
        Ok(pb::Architecture::Vgg16) => Ok(Architecture::Vgg16),
        Ok(pb::Architecture::Resnet18) => Ok(Architecture::Resnet18),
        Ok(pb::Architecture::Torchscript) => Ok(Architecture::TorchScript),
        Ok(pb::Architecture::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
            "project.model.architecture: {value} is not a known architecture (MLP, SMALL_CNN, VGG16, RESNET18, TORCHSCRIPT)"
        ))),
    }
}

fn proto_architecture(architecture: Architecture) -> pb::Architecture {
    match architecture {
        Architecture::Mlp => pb::Architecture::Mlp,
        Architecture::SmallCnn => pb::Architecture::SmallCnn,
        Architecture::Vgg16 => pb::Architecture::Vgg16,
        Architecture::Resnet18 => pb::Architecture::Resnet18,
        Architecture::TorchScript => pb::Architecture::Torchscript,
    }
}

fn non_empty(path: String) -> Option<std::path::PathBuf> {
    (!path.is_empty()).then(|| path.into())
}

/// The domain spec of a requested project, with defaults for unset fields.
fn spec(project: pb::Project) -> Result<ProjectSpec, Status> {
    let model = project.model.ok_or_else(|| Status::invalid_argument("project.model is required"))?;
    let architecture = architecture(model.architecture)?;
    let (default_channels, default_height, default_width) = architecture.default_input();
    let p = project.preprocessing.unwrap_or_default();
    let channels = if p.channels == 0 { default_channels } else { p.channels };
    let preprocessing = Preprocessing {
        width: if p.width == 0 { default_width } else { p.width },
        height: if p.height == 0 { default_height } else { p.height },
        channels,
        mean: if p.mean.is_empty() { vec![0.0; channels as usize] } else { p.mean },
        std: if p.std.is_empty() { vec![1.0; channels as usize] } else { p.std },
    };
    let heuristic = project.default_heuristic.unwrap_or_default();
    Ok(ProjectSpec {
        id: project.id,
        display_name: project.display_name,
        classes: project.classes,
        model: ModelSpec {
            architecture,
            weights_path: non_empty(model.weights_path),
            torchscript_path: non_empty(model.torchscript_path),
            head_dropout: model.head_dropout.unwrap_or(DEFAULT_HEAD_DROPOUT),
        },
        preprocessing,
        mc_iterations: if project.mc_iterations == 0 { DEFAULT_MC_ITERATIONS } else { project.mc_iterations },
        default_heuristic: HeuristicChoice {
            name: if heuristic.name.is_empty() { DEFAULT_HEURISTIC.to_owned() } else { heuristic.name },
            version: heuristic.version,
        },
    })
}

/// The API view of a stored project.
pub fn proto_project(project: &Project) -> pb::Project {
    let spec = &project.spec;
    pb::Project {
        id: spec.id.clone(),
        display_name: spec.display_name.clone(),
        classes: spec.classes.clone(),
        model: Some(pb::ModelSpec {
            architecture: proto_architecture(spec.model.architecture).into(),
            weights_path: spec.model.weights_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            torchscript_path: spec.model.torchscript_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            head_dropout: Some(spec.model.head_dropout),
        }),
        preprocessing: Some(pb::Preprocessing {
            width: spec.preprocessing.width,
            height: spec.preprocessing.height,
            channels: spec.preprocessing.channels,
            mean: spec.preprocessing.mean.clone(),
            std: spec.preprocessing.std.clone(),
        }),
        mc_iterations: spec.mc_iterations,
        default_heuristic: Some(pb::HeuristicRef {
            name: spec.default_heuristic.name.clone(),
            version: spec.default_heuristic.version.clone(),
        }),
        active_model_version: project.active_version.clone(),
        created_unix_ms: project.created_unix_ms,
    }
}

#[tonic::async_trait]
impl ProjectService for ProjectApi {
    async fn create_project(
        &self,
        request: Request<CreateProjectRequest>,
    ) -> Result<Response<CreateProjectResponse>, Status> {
        let project = request.into_inner().project.ok_or_else(|| Status::invalid_argument("project is required"))?;
        let spec = spec(project)?;
        spec.validate().map_err(|error| Status::invalid_argument(error.to_string()))?;
        self.check_heuristic(&spec.default_heuristic)?;
        let checked = spec.clone();
        blocking(move || {
            Engine::check_model(&checked).map_err(|error| Status::invalid_argument(format!("project.model: {error}")))
        })
        .await?;
        let projects = self.state.projects.clone();
        let id = spec.id.clone();
        let (project, created) = blocking(move || projects.upsert(spec).map_err(project_status)).await?;
        self.state.engine.forget(&id);
        tracing::info!(project = %id, created, "project stored");
        Ok(Response::new(CreateProjectResponse { project: Some(proto_project(&project)), created }))
    }

    async fn get_project(&self, request: Request<GetProjectRequest>) -> Result<Response<GetProjectResponse>, Status> {
        let project = self.state.projects.get(&request.into_inner().project_id).map_err(project_status)?;
        Ok(Response::new(GetProjectResponse { project: Some(proto_project(&project)) }))
    }

    async fn list_projects(
        &self,
        _request: Request<ListProjectsRequest>,
    ) -> Result<Response<ListProjectsResponse>, Status> {
        let projects = self.state.projects.list().iter().map(|p| proto_project(p)).collect();
        Ok(Response::new(ListProjectsResponse { projects }))
    }

    async fn update_project(
        &self,
        request: Request<UpdateProjectRequest>,
    ) -> Result<Response<UpdateProjectResponse>, Status> {
        let request = request.into_inner();
        let default_heuristic = request
            .default_heuristic
            .filter(|h| !h.name.is_empty())
            .map(|h| HeuristicChoice { name: h.name, version: h.version });
        if let Some(choice) = &default_heuristic {
            self.check_heuristic(choice)?;
        }
        let update = ProjectUpdate {
            display_name: request.display_name,
            mc_iterations: request.mc_iterations,
            default_heuristic,
        };
        let projects = self.state.projects.clone();
        let project = blocking(move || projects.update(&request.project_id, update).map_err(project_status)).await?;
        Ok(Response::new(UpdateProjectResponse { project: Some(proto_project(&project)) }))
    }

    async fn delete_project(
        &self,
        request: Request<DeleteProjectRequest>,
    ) -> Result<Response<DeleteProjectResponse>, Status> {
        let id = request.into_inner().project_id;
        let (projects, trainer) = (self.state.projects.clone(), self.state.trainer.clone());
        let deleted = id.clone();
        blocking(move || {
            // The rows first (examples, versions and jobs cascade), then the version files.
            projects.delete(&deleted).map_err(project_status)?;
            trainer.remove_versions(&deleted);
            Ok(())
        })
        .await?;
        self.state.engine.forget(&id);
        tracing::info!(project = %id, "project deleted");
        Ok(Response::new(DeleteProjectResponse {}))
    }
}
