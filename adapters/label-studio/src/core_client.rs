//! The alps-server calls the adapter makes (`alps.v1` gRPC): project upserts, predictions,
//! labelled examples and training. One long-lived channel; no model state in the adapter.

use std::{collections::HashMap, time::Duration};

use alps_proto::v1::{
    AcquisitionSchedule, AddExamplesRequest, CountExamplesRequest, CreateProjectRequest, DeleteExamplesRequest,
    Direction, GetProjectRequest, HeuristicKind, HeuristicRef, JobState, LabelledExample, ListExamplesRequest,
    ListHeuristicsRequest, ListModelVersionsRequest, ListTrainingJobsRequest, ModelSpec, PredictRequest, PredictResult,
    Preprocessing, Project, RankRequest, RankResponse, Sample, StoredExample, TrainRequest, TrainingJob,
    TrainingParameters, UpdateProjectRequest, WatchTrainingJobRequest, example_service_client::ExampleServiceClient,
    heuristic_service_client::HeuristicServiceClient, inference_service_client::InferenceServiceClient,
    model_version_service_client::ModelVersionServiceClient, project_service_client::ProjectServiceClient, sample,
    training_service_client::TrainingServiceClient,
};
use tonic::{Code, Status};

use crate::{config::ModelPreset, core_link::CoreTransport};

/// Largest gRPC message the adapter sends or accepts, bytes (a chunk of images).
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Time a unary call (other than Predict) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Time a Rank call may take (it runs the model over every sample sent).
const RANK_TIMEOUT: Duration = Duration::from_secs(600);

/// Handle to alps-server; cheap to clone.
#[derive(Clone, Debug)]
pub struct Core {
    channel: CoreTransport,
}

/// The outcome of one Predict call.
#[derive(Debug)]
pub struct Predicted {
    /// One result per sample, in order.
    pub results: Vec<PredictResult>,
    /// The model version that served them ("untrained" or "v3").
    pub model_version: String,
}

impl Core {
    /// Wraps the (lazily connected) transport of [`crate::core_link::core_transport`].
    pub fn new(channel: CoreTransport) -> Self {
        Self { channel }
    }

    fn projects(&self) -> ProjectServiceClient<CoreTransport> {
        ProjectServiceClient::new(self.channel.clone())
    }

    /// The project `id` if it exists.
    ///
    /// # Errors
    /// The gRPC status of any failure other than NOT_FOUND.
    pub async fn project(&self, id: &str) -> Result<Option<Project>, Status> {
        let request = with_timeout(GetProjectRequest { project_id: id.to_owned() });
        match self.projects().get_project(request).await {
            Ok(response) => Ok(response.into_inner().project),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// Creates the project, or brings its classes and model in line with `classes` and `preset`,
    /// and returns it. An unchanged project is left alone (its model versions stay usable).
    ///
    /// # Errors
    /// The gRPC status (INVALID_ARGUMENT for a bad preset, e.g. unreadable weights).
    pub async fn ensure_project(&self, id: &str, classes: &[String], preset: &ModelPreset) -> Result<Project, Status> {
        let wanted = project_spec(id, classes, preset);
        if let Some(existing) = self.project(id).await?
            && existing.classes == wanted.classes
            && same_model(&existing, &wanted)
        {
            return Ok(existing);
        }
        tracing::info!(project = id, model = %preset.name, classes = classes.len(), "creating or updating ALPS project");
        let request = with_timeout(CreateProjectRequest { project: Some(wanted) });
        let response = self.projects().create_project(request).await?.into_inner();
        response.project.ok_or_else(|| Status::internal("CreateProject answered without a project"))
    }

    /// Sets the project's acquisition schedule: `cold_start` ranks until `min_labels` labelled
    /// examples (0 = the core's default); an empty `cold_start` removes the schedule.
    ///
    /// # Errors
    /// The gRPC status (NOT_FOUND for a heuristic the core has not loaded).
    pub async fn set_schedule(&self, id: &str, cold_start: &str, min_labels: u32) -> Result<Project, Status> {
        let schedule = AcquisitionSchedule {
            cold_start: Some(HeuristicRef { name: cold_start.to_owned(), version: String::new() }),
            min_labels,
        };
        tracing::info!(project = id, cold_start, min_labels, "setting the ALPS project's acquisition schedule");
        let request = UpdateProjectRequest {
            project_id: id.to_owned(),
            acquisition_schedule: Some(schedule),
            ..UpdateProjectRequest::default()
        };
        let response = self.projects().update_project(with_timeout(request)).await?.into_inner();
        response.project.ok_or_else(|| Status::internal("UpdateProject answered without a project"))
    }

    /// Predicts `samples` (id, encoded image) with the project's default K and `heuristic` (a
    /// per-sample one; `None` = the project's default).
    ///
    /// # Errors
    /// The request-level gRPC status (per-sample failures are in the results).
    pub async fn predict(
        &self,
        project: &str,
        samples: Vec<(String, Vec<u8>)>,
        heuristic: Option<&str>,
    ) -> Result<Predicted, Status> {
        let samples = samples.into_iter().map(|(id, bytes)| image_sample(id, bytes)).collect();
        let heuristic = heuristic.map(|name| HeuristicRef { name: name.to_owned(), version: String::new() });
        let request =
            PredictRequest { project_id: project.to_owned(), samples, heuristic, ..PredictRequest::default() };
        let mut client = InferenceServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let response = client.predict(request).await?.into_inner();
        Ok(Predicted { results: response.results, model_version: response.model_version })
    }

    /// Stores labelled examples (upsert by external id); returns how many were older than the
    /// stored ones (a lower `label_revision`) and so not applied.
    ///
    /// # Errors
    /// The gRPC status.
    pub async fn add_examples(&self, project: &str, examples: Vec<LabelledExample>) -> Result<u64, Status> {
        let message = AddExamplesRequest { project_id: project.to_owned(), examples };
        let mut client = ExampleServiceClient::new(self.channel.clone()).max_encoding_message_size(MAX_MESSAGE_BYTES);
        let response = client.add_examples(with_timeout(tokio_stream::iter([message]))).await?;
        Ok(response.into_inner().stale)
    }

    /// Removes labelled examples by external id; unknown ids are ignored.
    ///
    /// # Errors
    /// The gRPC status.
    pub async fn delete_examples(&self, project: &str, external_ids: Vec<String>) -> Result<(), Status> {
        let request = with_timeout(DeleteExamplesRequest { project_id: project.to_owned(), external_ids });
        ExampleServiceClient::new(self.channel.clone()).delete_examples(request).await.map(drop)
    }

    /// How many labelled examples the project has, and of how many distinct classes.
    ///
    /// # Errors
    /// The gRPC status.
    pub async fn count_examples(&self, project: &str) -> Result<(u64, usize), Status> {
        let request = with_timeout(CountExamplesRequest { project_id: project.to_owned() });
        let counts = ExampleServiceClient::new(self.channel.clone()).count_examples(request).await?.into_inner();
        Ok((counts.total, counts.per_class.values().filter(|&&count| count > 0).count()))
    }

    /// Every stored example of the project (without sample bytes).
    ///
    /// # Errors
    /// The gRPC status.
    pub async fn examples(&self, project: &str) -> Result<Vec<StoredExample>, Status> {
        let mut client = ExampleServiceClient::new(self.channel.clone());
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListExamplesRequest { project_id: project.to_owned(), page_size: 1000, page_token };
            let page = client.list_examples(with_timeout(request)).await?.into_inner();
            all.extend(page.examples);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }

    /// Trains the project and waits for the job to end, telling `progress` every state the core
    /// reports; returns the ended job.
    ///
    /// # Errors
    /// The gRPC status of Train or of the watch stream.
    pub async fn train(
        &self,
        project: &str,
        parameters: TrainingParameters,
        mut progress: impl FnMut(&TrainingJob),
    ) -> Result<TrainingJob, Status> {
        let mut client = TrainingServiceClient::new(self.channel.clone());
        let request = TrainRequest { project_id: project.to_owned(), parameters: Some(parameters), activate: None };
        let job = client.train(with_timeout(request)).await?.into_inner().job.unwrap_or_default();
        progress(&job);
        let mut updates =
            client.watch_training_job(WatchTrainingJobRequest { job_id: job.job_id.clone() }).await?.into_inner();
        let mut last = job;
        while let Some(update) = updates.message().await? {
            progress(&update);
            last = update;
            if is_terminal(last.state) {
                break;
            }
        }
        Ok(last)
    }

    /// The project's newest training jobs (at most `limit`), newest first, whoever started them.
    ///
    /// # Errors
    /// The gRPC status.
    pub async fn training_jobs(&self, project: &str, limit: u32) -> Result<Vec<TrainingJob>, Status> {
        let request = with_timeout(ListTrainingJobsRequest { project_id: project.to_owned(), limit });
        Ok(TrainingServiceClient::new(self.channel.clone()).list_training_jobs(request).await?.into_inner().jobs)
    }

    /// Every loaded heuristic: name -> (kind, direction), newest version of each name.
    ///
    /// # Errors
    /// The gRPC status.
    pub async fn heuristics(&self) -> Result<HashMap<String, (HeuristicKind, Direction)>, Status> {
        let request = with_timeout(ListHeuristicsRequest {});
        let listed = HeuristicServiceClient::new(self.channel.clone()).list_heuristics(request).await?.into_inner();
        Ok(listed
            .heuristics
            .into_iter()
            .map(|info| {
                let kind = HeuristicKind::try_from(info.kind).unwrap_or(HeuristicKind::Unspecified);
                let direction = Direction::try_from(info.direction).unwrap_or(Direction::Unspecified);
                (info.name, (kind, direction))
            })
            .collect())
    }

    /// Ranks `samples` (id, encoded image) with `heuristic` and returns the `query_size` selected,
    /// most informative first (for a batch heuristic: in selection order). `seed` makes the
    /// selection reproducible.
    ///
    /// # Errors
    /// The gRPC status.
    pub async fn rank(
        &self,
        project: &str,
        heuristic: &str,
        query_size: u32,
        seed: u64,
        samples: Vec<(String, Vec<u8>)>,
    ) -> Result<RankResponse, Status> {
        let samples: Vec<Sample> = samples.into_iter().map(|(id, bytes)| image_sample(id, bytes)).collect();
        let mut messages = Vec::new();
        let mut chunks = samples.chunks(32).map(<[Sample]>::to_vec);
        messages.push(RankRequest {
            project_id: project.to_owned(),
            query_size,
            // An empty name leaves the choice to the core: the project's schedule, else its default.
            heuristic: (!heuristic.is_empty())
                .then(|| HeuristicRef { name: heuristic.to_owned(), version: String::new() }),
            samples: chunks.next().unwrap_or_default(),
            seed: Some(seed),
            ..RankRequest::default()
        });
        messages.extend(chunks.map(|samples| RankRequest { samples, ..RankRequest::default() }));
        let mut client = InferenceServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut request = tonic::Request::new(tokio_stream::iter(messages));
        request.set_timeout(RANK_TIMEOUT);
        Ok(client.rank(request).await?.into_inner())
    }

    /// The project's model versions, newest first.
    ///
    /// # Errors
    /// The gRPC status.
    pub async fn versions(&self, project: &str) -> Result<Vec<String>, Status> {
        let request = with_timeout(ListModelVersionsRequest { project_id: project.to_owned() });
        let versions = ModelVersionServiceClient::new(self.channel.clone()).list_model_versions(request).await?;
        let mut versions = versions.into_inner().versions;
        versions.sort_by_key(|version| std::cmp::Reverse(version.created_unix_ms));
        Ok(versions.into_iter().map(|version| version.version).collect())
    }

    /// Every project id on the server.
    ///
    /// # Errors
    /// The gRPC status.
    pub async fn project_ids(&self) -> Result<Vec<String>, Status> {
        let response = self.projects().list_projects(with_timeout(Default::default())).await?;
        Ok(response.into_inner().projects.into_iter().map(|project| project.id).collect())
    }
}

fn with_timeout<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

fn is_terminal(state: i32) -> bool {
    [JobState::Succeeded, JobState::Failed, JobState::Cancelled].iter().any(|terminal| *terminal as i32 == state)
}

/// An encoded image as a gRPC sample.
pub fn image_sample(id: String, bytes: Vec<u8>) -> Sample {
    Sample { id, input: Some(sample::Input::Image(bytes)) }
}

/// Whether the stored project has the wanted model and preprocessing (the server fills in
/// defaults, so unset sizes in `wanted` match anything).
fn same_model(existing: &Project, wanted: &Project) -> bool {
    let (model, want_model) = (existing.model.clone().unwrap_or_default(), wanted.model.clone().unwrap_or_default());
    let (input, want_input) =
        (existing.preprocessing.clone().unwrap_or_default(), wanted.preprocessing.clone().unwrap_or_default());
    let matches = |have: u32, want: u32| want == 0 || have == want;
    let same_values = |have: &[f32], want: &[f32]| want.is_empty() || have == want;
    model.architecture == want_model.architecture
        && model.weights_path == want_model.weights_path
        && model.pretrained == want_model.pretrained
        && same_values(&input.mean, &want_input.mean)
        && same_values(&input.std, &want_input.std)
        && matches(input.width, want_input.width)
        && matches(input.height, want_input.height)
        && matches(input.channels, want_input.channels)
}

fn project_spec(id: &str, classes: &[String], preset: &ModelPreset) -> Project {
    use {crate::config::PresetWeights, alps_proto::v1::PretrainedWeights};
    let (weights_path, pretrained) = match &preset.weights {
        Some(PresetWeights::File(path)) => (path.display().to_string(), PretrainedWeights::Unspecified),
        Some(PresetWeights::Imagenet) => (String::new(), PretrainedWeights::Imagenet),
        None => (String::new(), PretrainedWeights::Unspecified),
    };
    Project {
        id: id.to_owned(),
        display_name: format!("Label Studio project {}", id.trim_start_matches(crate::projects::ALPS_ID_PREFIX)),
        classes: classes.to_vec(),
        model: Some(ModelSpec {
            architecture: preset.architecture as i32,
            weights_path,
            pretrained: pretrained.into(),
            ..ModelSpec::default()
        }),
        preprocessing: Some(Preprocessing {
            width: preset.size,
            height: preset.size,
            channels: preset.channels,
            mean: preset.mean.clone(),
            std: preset.std.clone(),
        }),
        ..Project::default()
    }
}
