//! `alps.v1.ProjectService`: create (idempotent upsert), get, list, update, delete projects.

use std::sync::Arc;

use alps_proto::v1::{
    self as pb, CreateProjectRequest, CreateProjectResponse, DeleteProjectRequest, DeleteProjectResponse,
    GetProjectRequest, GetProjectResponse, ListProjectsRequest, ListProjectsResponse, UpdateProjectRequest,
    UpdateProjectResponse, UploadModelFileRequest, UploadModelFileResponse, project_service_server::ProjectService,
};
use tonic::{Request, Response, Status, Streaming};

use super::{AppState, blocking};
use crate::{
    ids,
    models::{ModelError, files::ModelFileError, pretrained::PretrainedError},
    projects::{
        AcquisitionSchedule, Architecture, DEFAULT_HEAD_DROPOUT, HeuristicChoice, ModelSpec, Preprocessing,
        PretrainedWeights, Project, ProjectError, ProjectSpec, ProjectUpdate,
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

    /// NOT_FOUND unless `choice` resolves now, INVALID_ARGUMENT (naming `field`) for a batch
    /// heuristic: the default heuristic scores every Predict, which needs per-sample scores.
    fn check_default_heuristic(&self, field: &str, choice: &HeuristicChoice) -> Result<(), Status> {
        let heuristic = self.loaded(choice)?;
        if heuristic.kind == alps_heuristic_abi::Kind::Batch {
            return Err(Status::invalid_argument(format!(
                "{field}: {} selects batches and has no per-sample scores for Predict; choose a per-sample heuristic (use a batch one in Rank or as the acquisition schedule's cold start)",
                heuristic.label()
            )));
        }
        Ok(())
    }

    /// NOT_FOUND (naming the loaded heuristics) unless `choice` resolves now.
    fn check_heuristic(&self, choice: &HeuristicChoice) -> Result<(), Status> {
        self.loaded(choice).map(drop)
    }

    /// The heuristic `choice` names, as loaded now; NOT_FOUND naming the loaded ones.
    fn loaded(&self, choice: &HeuristicChoice) -> Result<Arc<crate::plugins::LoadedHeuristic>, Status> {
        self.state
            .heuristics
            .registry()
            .resolve(&choice.name, &choice.version)
            .map_err(super::heuristics::resolve_status)
    }

    /// The schedule a CreateProject or UpdateProject asks for: `None` for an empty cold-start
    /// name (no schedule), else a checked, loaded heuristic. `field` names the request field.
    fn requested_schedule(
        &self,
        field: &str,
        requested: pb::AcquisitionSchedule,
    ) -> Result<Option<AcquisitionSchedule>, Status> {
        let Some(cold_start) = requested.cold_start.filter(|h| !h.name.is_empty()) else {
            if requested.min_labels != 0 {
                // Contradictory: a switch point for no cold start. Refused rather than read as
                // "no schedule", which would silently drop what the caller meant.
                return Err(Status::invalid_argument(format!(
                    "{field}.min_labels: {} without a cold_start heuristic; name one (e.g. typiclust) or send min_labels 0 to remove the schedule",
                    requested.min_labels
                )));
            }
            return Ok(None);
        };
        super::heuristics::check_reference(&format!("{field}.cold_start"), &cold_start.name, &cold_start.version)?;
        let cold_start = HeuristicChoice { name: cold_start.name, version: cold_start.version };
        self.check_heuristic(&cold_start)?;
        Ok(Some(AcquisitionSchedule { cold_start, min_labels: requested.min_labels }))
    }

    /// The schedule of a new project: the requested one, else the server's default when its
    /// cold-start heuristic is loaded (a server without it keeps ranking as before).
    fn new_project_schedule(
        &self,
        requested: Option<pb::AcquisitionSchedule>,
    ) -> Result<Option<AcquisitionSchedule>, Status> {
        if let Some(requested) = requested {
            return self.requested_schedule("project.acquisition_schedule", requested);
        }
        let default = AcquisitionSchedule::server_default();
        match self.check_heuristic(&default.cold_start) {
            Ok(()) => Ok(Some(default)),
            Err(_) => {
                tracing::warn!(heuristic = %default.cold_start.name, "default cold-start heuristic not loaded; no schedule");
                Ok(None)
            }
        }
    }

    /// Fetches the published weights `spec` starts from into the cache, if any, waiting at most
    /// `--weights-fetch-wait-secs` (the download goes on after that).
    async fn fetch_pretrained(&self, spec: &ProjectSpec) -> Result<(), Status> {
        let Some(weights) = spec.model.pretrained else { return Ok(()) };
        let cache =
            self.state.model_files.weights_cache().ok_or_else(|| {
                Status::failed_precondition("project.model.pretrained: this server has no weights cache")
            })?;
        let result = cache.ensure(spec.model.architecture, weights, self.state.weights_fetch_wait).await;
        result.map_err(pretrained_status)
    }

    /// Checks that `spec`'s model builds (and its published weights are fetched).
    async fn check_model(&self, spec: &ProjectSpec) -> Result<(), Status> {
        self.fetch_pretrained(spec).await?;
        let (checked, state) = (spec.clone(), self.state.clone());
        blocking(move || state.engine.check_model(&checked).map_err(model_status)).await
    }
}

/// The gRPC status of unavailable published weights: UNAVAILABLE while they may still come
/// (mirror down or slow, still downloading), FAILED_PRECONDITION when the mirror serves the
/// wrong file or none.
fn pretrained_status(error: PretrainedError) -> Status {
    let message = format!("project.model.pretrained: {error}");
    match error {
        PretrainedError::Unavailable { .. } | PretrainedError::Pending { .. } | PretrainedError::NotCached { .. } => {
            Status::unavailable(message)
        }
        PretrainedError::NotPublished { .. } => Status::invalid_argument(message),
        PretrainedError::Refused { .. } | PretrainedError::Mismatch { .. } | PretrainedError::Unusable { .. } => {
            Status::failed_precondition(message)
        }
        PretrainedError::Internal(_) => Status::internal(message),
    }
}

/// The gRPC status of a project error.
pub fn project_status(error: ProjectError) -> Status {
    match error {
        ProjectError::Invalid(error) => Status::invalid_argument(error.to_string()),
        ProjectError::NotFound(_) => Status::not_found(error.to_string()),
        ProjectError::Storage(error) => crate::errors::storage("the project store", error.failure, &error),
    }
}

/// The gRPC status of a model that cannot be built for a project: PERMISSION_DENIED for a file
/// outside the model root, NOT_FOUND for a missing one, RESOURCE_EXHAUSTED over the size limit,
/// INVALID_ARGUMENT for an unusable file; libtorch and I/O details only in the server log.
fn model_status(error: ModelError) -> Status {
    let message = format!("project.model: {}", error.client_message());
    match error {
        ModelError::File(ModelFileError::OutsideRoot { .. }) => Status::permission_denied(message),
        ModelError::File(ModelFileError::NotFound { .. }) => Status::not_found(message),
        ModelError::File(ModelFileError::TooLarge { .. }) => Status::resource_exhausted(message),
        ModelError::File(ModelFileError::Unreadable { ref source, .. }) => {
            crate::errors::internal("reading the model file", source)
        }
        ModelError::Torch(_) => Status::internal(message),
        ModelError::Pretrained(error) => pretrained_status(error),
        _ => Status::invalid_argument(message),
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

fn pretrained(value: i32) -> Result<Option<PretrainedWeights>, Status> {
    match pb::PretrainedWeights::try_from(value) {
        Ok(pb::PretrainedWeights::Unspecified) => Ok(None),
        Ok(pb::PretrainedWeights::Imagenet) => Ok(Some(PretrainedWeights::Imagenet)),
        Err(_) => Err(Status::invalid_argument(format!(
            "project.model.pretrained: {value} is not known (PRETRAINED_WEIGHTS_UNSPECIFIED, PRETRAINED_WEIGHTS_IMAGENET)"
        ))),
    }
}

fn non_empty(path: String) -> Option<std::path::PathBuf> {
    (!path.is_empty()).then(|| path.into())
}

fn requested_preprocessing(p: pb::Preprocessing) -> Preprocessing {
    Preprocessing { width: p.width, height: p.height, channels: p.channels, mean: p.mean, std: p.std }
}

/// The domain spec of a requested project (its schedule is resolved by the caller); the domain
/// fills what it left unset ([`Preprocessing::with_defaults`], [`ProjectSpec::with_defaults`]).
fn spec(project: pb::Project) -> Result<ProjectSpec, Status> {
    let model = project.model.ok_or_else(|| Status::invalid_argument("project.model is required"))?;
    let architecture = architecture(model.architecture)?;
    let weights = pretrained(model.pretrained)?;
    let requested = requested_preprocessing(project.preprocessing.unwrap_or_default());
    let heuristic = project.default_heuristic.unwrap_or_default();
    let spec = ProjectSpec {
        id: project.id,
        display_name: project.display_name,
        classes: project.classes,
        model: ModelSpec {
            architecture,
            weights_path: non_empty(model.weights_path),
            torchscript_path: non_empty(model.torchscript_path),
            head_dropout: model.head_dropout.unwrap_or(DEFAULT_HEAD_DROPOUT),
            pretrained: weights,
        },
        preprocessing: Preprocessing::with_defaults(requested, architecture, weights),
        mc_iterations: project.mc_iterations,
        default_heuristic: HeuristicChoice { name: heuristic.name, version: heuristic.version },
        acquisition_schedule: None,
    };
    Ok(spec.with_defaults())
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
            pretrained: match spec.model.pretrained {
                None => pb::PretrainedWeights::Unspecified,
                Some(PretrainedWeights::Imagenet) => pb::PretrainedWeights::Imagenet,
            }
            .into(),
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
        acquisition_schedule: Some(match &spec.acquisition_schedule {
            Some(schedule) => pb::AcquisitionSchedule {
                cold_start: Some(pb::HeuristicRef {
                    name: schedule.cold_start.name.clone(),
                    version: schedule.cold_start.version.clone(),
                }),
                min_labels: schedule.min_labels,
            },
            None => pb::AcquisitionSchedule::default(),
        }),
    }
}

#[tonic::async_trait]
impl ProjectService for ProjectApi {
    async fn create_project(
        &self,
        request: Request<CreateProjectRequest>,
    ) -> Result<Response<CreateProjectResponse>, Status> {
        let project_id = request.get_ref().project.as_ref().map(|p| p.id.clone()).unwrap_or_default();
        super::audit(&request, "CreateProject", &project_id);
        let mut project =
            request.into_inner().project.ok_or_else(|| Status::invalid_argument("project is required"))?;
        let schedule = project.acquisition_schedule.take();
        let mut spec = spec(project)?;
        spec.validate().map_err(|error| Status::invalid_argument(error.to_string()))?;
        super::heuristics::check_reference(
            "project.default_heuristic",
            &spec.default_heuristic.name,
            &spec.default_heuristic.version,
        )?;
        self.check_default_heuristic("project.default_heuristic", &spec.default_heuristic)?;
        // Replacing a project without naming a schedule keeps the one it has (e.g. set by
        // UpdateProject); only a new project gets the server's default.
        spec.acquisition_schedule = match (schedule, self.state.projects.get(&spec.id)) {
            (None, Ok(existing)) => existing.spec.acquisition_schedule.clone(),
            (schedule, _) => self.new_project_schedule(schedule)?,
        };
        self.check_model(&spec).await?;
        let projects = self.state.projects.clone();
        let id = spec.id.clone();
        let (project, created) = blocking(move || projects.upsert(spec).map_err(project_status)).await?;
        self.state.engine.forget(&id);
        crate::observe::attribute_to_project(&id);
        tracing::info!(project = %id, created, "project stored");
        Ok(Response::new(CreateProjectResponse { project: Some(proto_project(&project)), created }))
    }

    async fn get_project(&self, request: Request<GetProjectRequest>) -> Result<Response<GetProjectResponse>, Status> {
        let project = super::project(&self.state, &request.into_inner().project_id)?;
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
        super::audit(&request, "UpdateProject", &request.get_ref().project_id);
        let request = request.into_inner();
        super::project(&self.state, &request.project_id)?;
        if let Some(h) = request.default_heuristic.as_ref().filter(|h| !h.name.is_empty()) {
            super::heuristics::check_reference("default_heuristic", &h.name, &h.version)?;
        }
        let default_heuristic = request
            .default_heuristic
            .filter(|h| !h.name.is_empty())
            .map(|h| HeuristicChoice { name: h.name, version: h.version });
        if let Some(choice) = &default_heuristic {
            self.check_default_heuristic("default_heuristic", choice)?;
        }
        let acquisition_schedule = request
            .acquisition_schedule
            .map(|requested| self.requested_schedule("acquisition_schedule", requested))
            .transpose()?;
        // New preprocessing: defaults as in CreateProject, and the model must still build on it
        // (e.g. pretrained weights need 3 channels).
        let preprocessing = match request.preprocessing {
            Some(requested) => {
                let mut spec = super::project(&self.state, &request.project_id)?.spec.clone();
                let requested = requested_preprocessing(requested);
                spec.preprocessing =
                    Preprocessing::with_defaults(requested, spec.model.architecture, spec.model.pretrained);
                spec.validate()
                    .map_err(|error| Status::invalid_argument(error.to_string().replacen("project.", "", 1)))?;
                self.check_model(&spec).await?;
                Some(spec.preprocessing)
            }
            None => None,
        };
        let changes_inputs = preprocessing.is_some();
        let update = ProjectUpdate {
            display_name: request.display_name,
            mc_iterations: request.mc_iterations,
            default_heuristic,
            preprocessing,
            acquisition_schedule,
        };
        let projects = self.state.projects.clone();
        let id = request.project_id.clone();
        let project = blocking(move || projects.update(&id, update).map_err(project_status)).await?;
        if changes_inputs {
            // Loaded models and their input handling follow the new spec on the next request.
            self.state.engine.forget(&request.project_id);
        }
        Ok(Response::new(UpdateProjectResponse { project: Some(proto_project(&project)) }))
    }

    async fn delete_project(
        &self,
        request: Request<DeleteProjectRequest>,
    ) -> Result<Response<DeleteProjectResponse>, Status> {
        super::audit(&request, "DeleteProject", &request.get_ref().project_id);
        let id = request.into_inner().project_id;
        ids::project("project_id", &id)?;
        let (projects, trainer) = (self.state.projects.clone(), self.state.trainer.clone());
        let deleted = id.clone();
        blocking(move || {
            // The rows first (examples, versions and jobs cascade), then the jobs running here
            // and the version files.
            projects.delete(&deleted).map_err(project_status)?;
            trainer.project_deleted(&deleted, crate::clock::now_unix_ms());
            Ok(())
        })
        .await?;
        self.state.engine.forget(&id);
        self.state.metrics.forget_project(&id);
        tracing::info!(project = %id, "project deleted");
        Ok(Response::new(DeleteProjectResponse {}))
    }

    async fn upload_model_file(
        &self,
        request: Request<Streaming<UploadModelFileRequest>>,
    ) -> Result<Response<UploadModelFileResponse>, Status> {
        super::audit(&request, "UploadModelFile", "");
        super::uploads::receive(&self.state.model_files, request.into_inner()).await.map(Response::new)
    }
}
