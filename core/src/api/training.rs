//! `alps.v1.TrainingService` and `alps.v1.ModelVersionService`.

use std::{pin::Pin, sync::Arc};

use alps_proto::v1::{
    self as pb, ActivateModelVersionRequest, ActivateModelVersionResponse, CancelTrainingJobRequest,
    CancelTrainingJobResponse, GetModelVersionRequest, GetModelVersionResponse, GetTrainingJobRequest,
    GetTrainingJobResponse, ListModelVersionsRequest, ListModelVersionsResponse, ListTrainingJobsRequest,
    ListTrainingJobsResponse, TrainRequest, TrainResponse, WatchTrainingJobRequest,
    model_version_service_server::ModelVersionService, training_service_server::TrainingService,
};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{AppState, blocking};
use crate::training::{
    Trainer, TrainingError,
    record::{JobRecord, JobState, Manifest, Mode, Optimizer, Phase, RequestedParams, TrainingParams},
};
use crate::{ids, projects::Project};

/// Serves training jobs and model versions.
#[derive(Debug, Clone)]
pub struct TrainingApi {
    state: Arc<AppState>,
}

impl TrainingApi {
    /// A service over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// The gRPC status of a training error, also when inference reads a project's version list.
pub(crate) fn training_status(error: TrainingError) -> Status {
    match error {
        TrainingError::NotFound(message) => Status::not_found(message),
        TrainingError::Precondition(message) => Status::failed_precondition(message),
        TrainingError::Storage(error) => crate::errors::storage("the training store", error.failure, &error),
    }
}

/// The request's settings, decoded; [`TrainingParams::resolve`] checks them and fills defaults.
fn params(requested: Option<pb::TrainingParameters>) -> Result<TrainingParams, Status> {
    let requested = requested.unwrap_or_default();
    let full = match pb::TrainingMode::try_from(requested.mode) {
        Ok(mode) => mode == pb::TrainingMode::Full,
        Err(_) => return Err(Status::invalid_argument(format!("parameters.mode: unknown value {}", requested.mode))),
    };
    let optimizer = match pb::Optimizer::try_from(requested.optimizer) {
        Ok(pb::Optimizer::Unspecified) => None,
        Ok(pb::Optimizer::Adam) => Some(Optimizer::Adam),
        Ok(pb::Optimizer::Adamw) => Some(Optimizer::AdamW),
        Ok(pb::Optimizer::Sgd) => Some(Optimizer::Sgd),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "parameters.optimizer: unknown value {}",
                requested.optimizer
            )));
        }
    };
    TrainingParams::resolve(RequestedParams {
        full,
        optimizer,
        learning_rate: requested.learning_rate,
        epochs: requested.epochs,
        batch_size: requested.batch_size,
        weight_decay: requested.weight_decay,
        class_weighting: requested.class_weighting,
        validation_fraction: requested.validation_fraction,
        seed: requested.seed,
    })
    .map_err(|error| Status::invalid_argument(error.to_string()))
}

fn proto_params(params: &TrainingParams) -> pb::TrainingParameters {
    pb::TrainingParameters {
        mode: match params.mode {
            Mode::HeadOnly => pb::TrainingMode::HeadOnly,
            Mode::Full => pb::TrainingMode::Full,
        }
        .into(),
        optimizer: match params.optimizer {
            Optimizer::Adam => pb::Optimizer::Adam,
            Optimizer::AdamW => pb::Optimizer::Adamw,
            Optimizer::Sgd => pb::Optimizer::Sgd,
        }
        .into(),
        learning_rate: params.learning_rate as f32,
        epochs: params.epochs,
        batch_size: params.batch_size,
        weight_decay: Some(params.weight_decay as f32),
        class_weighting: params.class_weighting,
        validation_fraction: Some(params.validation_fraction as f32),
        seed: Some(params.seed),
    }
}

/// How often a watch of a job that is not live on this server reads its record.
const ELSEWHERE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Streams the record of job `job_id`, which is queued in the catalogue or runs on another
/// replica (its record there changes as it starts, progresses and ends), from `last` on, until
/// it ends or the client leaves (`None`), or until this server starts it: then its live record.
async fn follow_elsewhere(
    trainer: &Arc<Trainer>,
    job_id: &str,
    mut last: JobRecord,
    sender: &tokio::sync::mpsc::Sender<Result<pb::TrainingJob, Status>>,
) -> Option<tokio::sync::watch::Receiver<JobRecord>> {
    while !sender.is_closed() {
        tokio::time::sleep(ELSEWHERE_POLL).await;
        if let Some(live) = trainer.watch(job_id) {
            return Some(live);
        }
        let (reader, id) = (trainer.clone(), job_id.to_owned());
        let record = match tokio::task::spawn_blocking(move || reader.job(&id)).await {
            Ok(Ok(record)) => record,
            // A database blip: the next poll tries again.
            Ok(Err(TrainingError::Storage(error))) if error.failure == crate::store::Failure::Transient => continue,
            Ok(Err(error)) => {
                let _ = sender.send(Err(training_status(error))).await;
                return None;
            }
            Err(_) => return None,
        };
        if record == last {
            continue;
        }
        if sender.send(Ok(proto_job(&record))).await.is_err() || record.state.is_terminal() {
            return None;
        }
        last = record;
    }
    None
}

/// The API view of a job record.
pub fn proto_job(record: &JobRecord) -> pb::TrainingJob {
    pb::TrainingJob {
        job_id: record.job_id.clone(),
        project_id: record.project_id.clone(),
        state: match record.state {
            JobState::Queued => pb::JobState::Queued,
            JobState::Running => pb::JobState::Running,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
        }
        .into(),
        phase: match record.progress.phase {
            Phase::Pending => pb::TrainingPhase::Unspecified,
            Phase::Loading => pb::TrainingPhase::Loading,
            Phase::Embedding => pb::TrainingPhase::Embedding,
            Phase::Training => pb::TrainingPhase::Training,
            Phase::Validating => pb::TrainingPhase::Validating,
            Phase::Saving => pb::TrainingPhase::Saving,
        }
        .into(),
        epoch: record.progress.epoch,
        step: record.progress.step,
        loss: record.progress.loss,
        validation_accuracy: record.progress.validation_accuracy,
        percent: record.progress.percent,
        eta_ms: record.progress.eta_ms,
        parameters: Some(proto_params(&record.params)),
        model_version: record.model_version.clone(),
        error: record.error.clone(),
        created_unix_ms: record.created_unix_ms,
        started_unix_ms: record.started_unix_ms,
        finished_unix_ms: record.finished_unix_ms,
        not_activated_reason: record.not_activated_reason.clone(),
        attempt: record.attempt,
    }
}

fn proto_version(manifest: &Manifest, project: &Project) -> pb::ModelVersion {
    pb::ModelVersion {
        project_id: manifest.project_id.clone(),
        version: manifest.version.clone(),
        parent_version: manifest.parent_version.clone(),
        active: manifest.version == project.active_version,
        for_other_spec: !manifest.serves(&project.spec),
        job_id: manifest.job_id.clone(),
        parameters: Some(proto_params(&manifest.params)),
        example_count: manifest.example_count,
        metrics: manifest.metrics.as_ref().map(|m| pb::ValidationMetrics {
            accuracy: m.accuracy,
            per_class: m
                .per_class
                .iter()
                .map(|c| pb::ClassMetrics {
                    class_name: c.class_name.clone(),
                    precision: c.precision,
                    recall: c.recall,
                    f1: c.f1,
                    support: c.support,
                })
                .collect(),
            confusion_matrix: m.confusion_matrix.clone(),
            examples: m.examples,
        }),
        weights_bytes: manifest.weights_bytes,
        weights_sha256: manifest.weights_sha256.clone(),
        created_unix_ms: manifest.created_unix_ms,
    }
}

type JobStream = Pin<Box<dyn Stream<Item = Result<pb::TrainingJob, Status>> + Send>>;

#[tonic::async_trait]
impl TrainingService for TrainingApi {
    async fn train(&self, request: Request<TrainRequest>) -> Result<Response<TrainResponse>, Status> {
        let request = request.into_inner();
        super::project(&self.state, &request.project_id)?;
        let params = params(request.parameters)?;
        let trainer = self.state.trainer.clone();
        let activate = request.activate.unwrap_or(true);
        let (record, coalesced) =
            blocking(move || trainer.train(&request.project_id, params, activate).map_err(training_status)).await?;
        Ok(Response::new(TrainResponse { job: Some(proto_job(&record)), coalesced }))
    }

    async fn get_training_job(
        &self,
        request: Request<GetTrainingJobRequest>,
    ) -> Result<Response<GetTrainingJobResponse>, Status> {
        let job_id = request.into_inner().job_id;
        ids::other("job_id", &job_id)?;
        let trainer = self.state.trainer.clone();
        let record = blocking(move || trainer.job(&job_id).map_err(training_status)).await?;
        crate::observe::attribute_to_project(&record.project_id);
        Ok(Response::new(GetTrainingJobResponse { job: Some(proto_job(&record)) }))
    }

    type WatchTrainingJobStream = JobStream;

    async fn watch_training_job(
        &self,
        request: Request<WatchTrainingJobRequest>,
    ) -> Result<Response<Self::WatchTrainingJobStream>, Status> {
        let job_id = request.into_inner().job_id;
        ids::other("job_id", &job_id)?;
        let trainer = self.state.trainer.clone();
        let (reader, id) = (trainer.clone(), job_id.clone());
        let first = blocking(move || reader.job(&id).map_err(training_status)).await?;
        crate::observe::attribute_to_project(&first.project_id);
        let live = trainer.watch(&job_id);
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            if sender.send(Ok(proto_job(&first))).await.is_err() || first.state.is_terminal() {
                return;
            }
            let live = match live {
                Some(live) => Some(live),
                // Started here since: its record now is news.
                None => follow_elsewhere(&trainer, &job_id, first, &sender).await.map(|mut live| {
                    live.mark_changed();
                    live
                }),
            };
            let Some(mut live) = live else { return };
            loop {
                let ended = live.changed().await.is_err();
                let record = if ended {
                    // The job left memory: its final record is in the catalogue.
                    let (reader, id) = (trainer.clone(), job_id.clone());
                    tokio::task::spawn_blocking(move || reader.job(&id).ok()).await.ok().flatten()
                } else {
                    Some(live.borrow_and_update().clone())
                };
                let Some(record) = record else { return };
                let terminal = record.state.is_terminal();
                if sender.send(Ok(proto_job(&record))).await.is_err() || terminal || ended {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn cancel_training_job(
        &self,
        request: Request<CancelTrainingJobRequest>,
    ) -> Result<Response<CancelTrainingJobResponse>, Status> {
        let job_id = request.into_inner().job_id;
        ids::other("job_id", &job_id)?;
        let trainer = self.state.trainer.clone();
        let record = blocking(move || trainer.cancel(&job_id).map_err(training_status)).await?;
        crate::observe::attribute_to_project(&record.project_id);
        Ok(Response::new(CancelTrainingJobResponse { job: Some(proto_job(&record)) }))
    }

    async fn list_training_jobs(
        &self,
        request: Request<ListTrainingJobsRequest>,
    ) -> Result<Response<ListTrainingJobsResponse>, Status> {
        let request = request.into_inner();
        super::project(&self.state, &request.project_id)?;
        let limit = if request.limit == 0 { 50 } else { request.limit as usize };
        let trainer = self.state.trainer.clone();
        let records = blocking(move || trainer.jobs(&request.project_id, limit).map_err(training_status)).await?;
        Ok(Response::new(ListTrainingJobsResponse { jobs: records.iter().map(proto_job).collect() }))
    }
}

#[tonic::async_trait]
impl ModelVersionService for TrainingApi {
    async fn list_model_versions(
        &self,
        request: Request<ListModelVersionsRequest>,
    ) -> Result<Response<ListModelVersionsResponse>, Status> {
        let project = super::project(&self.state, &request.into_inner().project_id)?;
        let (trainer, id) = (self.state.trainer.clone(), project.spec.id.clone());
        let manifests = blocking(move || trainer.versions(&id).map_err(training_status)).await?;
        let versions = manifests.iter().map(|m| proto_version(m, &project)).collect();
        Ok(Response::new(ListModelVersionsResponse { versions }))
    }

    async fn get_model_version(
        &self,
        request: Request<GetModelVersionRequest>,
    ) -> Result<Response<GetModelVersionResponse>, Status> {
        let request = request.into_inner();
        let project = super::project(&self.state, &request.project_id)?;
        ids::other("version", &request.version)?;
        let (trainer, id) = (self.state.trainer.clone(), project.spec.id.clone());
        let manifest = blocking(move || trainer.versions(&id).map_err(training_status))
            .await?
            .into_iter()
            .find(|m| m.version == request.version)
            .ok_or_else(|| {
                Status::not_found(format!("project {} has no model version {:?}", project.spec.id, request.version))
            })?;
        Ok(Response::new(GetModelVersionResponse { version: Some(proto_version(&manifest, &project)) }))
    }

    async fn activate_model_version(
        &self,
        request: Request<ActivateModelVersionRequest>,
    ) -> Result<Response<ActivateModelVersionResponse>, Status> {
        super::audit(&request, "ActivateModelVersion", &request.get_ref().project_id);
        let request = request.into_inner();
        let project = super::project(&self.state, &request.project_id)?;
        ids::other("version", &request.version)?;
        let trainer = self.state.trainer.clone();
        let (id, version) = (request.project_id.clone(), request.version.clone());
        let manifest = blocking(move || trainer.activate(&id, &version).map_err(training_status)).await?;
        // Activation checked that it fits the project's spec and made it the active version.
        let now = Project { active_version: manifest.version.clone(), ..(*project).clone() };
        Ok(Response::new(ActivateModelVersionResponse { version: Some(proto_version(&manifest, &now)) }))
    }
}
