//! `alps.v1.InferenceService`: Predict, PredictStream and Rank on a project's active model.

use std::{pin::Pin, sync::Arc};

use alps_proto::v1::{
    self as pb, PredictRequest, PredictResponse, PredictResult, RankRequest, RankResponse, RankedSample, Sample,
    SampleError, inference_service_server::InferenceService, predict_result::Outcome, sample::Input,
};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::{AppState, heuristics::call_status};
use crate::{
    engine::{EngineError, PredictOptions, Ranking, RankingError, SampleInput, SamplePrediction},
    models::preprocess,
    plugins::LoadedHeuristic,
    projects::{HeuristicChoice, Project, check_mc_iterations},
};

/// Serves predictions and rankings.
#[derive(Debug, Clone)]
pub struct InferenceApi {
    state: Arc<AppState>,
}

impl InferenceApi {
    /// A service over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    fn heuristic(
        &self,
        project: &Project,
        requested: Option<pb::HeuristicRef>,
    ) -> Result<Arc<LoadedHeuristic>, Status> {
        let choice = requested
            .filter(|h| !h.name.is_empty())
            .map(|h| HeuristicChoice { name: h.name, version: h.version })
            .unwrap_or_else(|| project.spec.default_heuristic.clone());
        super::heuristics::check_reference("heuristic", &choice.name, &choice.version)?;
        self.state
            .heuristics
            .registry()
            .resolve(&choice.name, &choice.version)
            .map_err(super::heuristics::resolve_status)
    }

    async fn predict_one(&self, request: PredictRequest) -> Result<PredictResponse, Status> {
        let project = super::project(&self.state, &request.project_id)?;
        if request.samples.is_empty() {
            return Err(Status::invalid_argument("samples: at least one sample is required"));
        }
        let k = mc_iterations(&project, request.mc_iterations)?;
        let heuristic = self.heuristic(&project, request.heuristic)?;
        let (ids, inputs) = split_samples(request.samples);
        let options = PredictOptions {
            mc_iterations: k,
            heuristic: heuristic.clone(),
            return_mc_samples: request.return_mc_samples,
            seed: request.seed,
        };
        let predictions = self.state.engine.predict(&project, inputs, &options).await.map_err(engine_status)?;
        let results = ids
            .into_iter()
            .zip(predictions)
            .map(|(id, prediction)| PredictResult {
                id,
                outcome: Some(match prediction {
                    Ok(prediction) => Outcome::Prediction(proto_prediction(prediction, &project, k)),
                    Err(error) => Outcome::Error(sample_error(&error)),
                }),
            })
            .collect();
        Ok(PredictResponse {
            results,
            model_version: project.active_version.clone(),
            heuristic: Some(pb::HeuristicRef { name: heuristic.name.clone(), version: heuristic.version.to_string() }),
            direction: super::heuristics::direction(heuristic.direction).into(),
            mc_iterations: k as u32,
        })
    }

    async fn rank_pool(&self, mut stream: Streaming<RankRequest>) -> Result<RankResponse, Status> {
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty stream: send the pool"))?;
        let project = super::project(&self.state, &first.project_id)?;
        // The same rule as Select: at least 1; more than the pool selects the whole pool (the
        // pool's size is known only at the end of the stream).
        if first.query_size == 0 {
            return Err(Status::invalid_argument("query_size: at least 1 sample must be selected"));
        }
        let k = mc_iterations(&project, first.mc_iterations)?;
        let heuristic = self.heuristic(&project, first.heuristic.clone())?;
        let seed = first.seed.unwrap_or_else(|| fastrand::u64(..));
        let classes = project.spec.classes.len();
        let mut ranking = Ranking::new(
            heuristic.clone(),
            first.query_size as usize,
            classes,
            k,
            seed,
            self.state.max_rank_pool_values,
        );
        let (mut failed, mut pool_size) = (Vec::new(), 0u64);
        let mut chunk = Some(first);
        while let Some(message) = chunk {
            pool_size += message.samples.len() as u64;
            if let Some(position) = message.samples.iter().position(|s| s.id.is_empty()) {
                return Err(Status::invalid_argument(format!(
                    "samples[{position}].id: Rank needs an id for every sample"
                )));
            }
            let (ids, inputs) = split_samples(message.samples);
            if !ids.is_empty() {
                let (outcomes, probabilities) = self
                    .state
                    .engine
                    // Every chunk uses the ranking's seed, so the whole ranking is reproducible.
                    .probabilities(&project, inputs, k, Some(seed))
                    .await
                    .map_err(engine_status)?;
                let mut scored = Vec::with_capacity(ids.len());
                for (id, outcome) in ids.into_iter().zip(outcomes) {
                    match outcome {
                        Ok(()) => scored.push(id),
                        Err(error) => {
                            failed.push(PredictResult { id, outcome: Some(Outcome::Error(sample_error(&error))) })
                        }
                    }
                }
                tokio::task::block_in_place(|| ranking.add(scored, probabilities)).map_err(ranking_status)?;
            }
            chunk = stream.message().await?;
        }
        let selected = tokio::task::block_in_place(|| ranking.finish()).map_err(ranking_status)?;
        Ok(RankResponse {
            selected: selected.into_iter().map(|(id, score)| RankedSample { id, score }).collect(),
            failed,
            pool_size,
            model_version: project.active_version.clone(),
            heuristic: Some(pb::HeuristicRef { name: heuristic.name.clone(), version: heuristic.version.to_string() }),
        })
    }
}

fn mc_iterations(project: &Project, requested: u32) -> Result<usize, Status> {
    if requested == 0 {
        return Ok(project.spec.mc_iterations as usize);
    }
    check_mc_iterations("mc_iterations", requested).map_err(|error| Status::invalid_argument(error.to_string()))?;
    Ok(requested as usize)
}

/// The engine's view of a protobuf sample input.
pub fn sample_input(input: Option<Input>) -> SampleInput {
    match input {
        Some(Input::Image(bytes)) => SampleInput::Image(bytes),
        Some(Input::Tensor(tensor)) => SampleInput::Tensor { shape: tensor.shape, values: tensor.data },
        None => SampleInput::Missing,
    }
}

fn split_samples(samples: Vec<Sample>) -> (Vec<String>, Vec<SampleInput>) {
    samples.into_iter().map(|sample| (sample.id, sample_input(sample.input))).unzip()
}

fn proto_prediction(prediction: SamplePrediction, project: &Project, k: usize) -> pb::Prediction {
    let classes = project.spec.classes.len() as u64;
    pb::Prediction {
        class_index: prediction.class_index as u32,
        class_name: project.spec.classes[prediction.class_index].clone(),
        probability: prediction.probability,
        mean_probabilities: prediction.mean_probabilities,
        score: prediction.score,
        mc_samples: prediction.mc_samples.map(|data| pb::Tensor { shape: vec![classes, k as u64], data }),
    }
}

fn sample_error(error: &preprocess::SampleError) -> SampleError {
    SampleError { code: tonic::Code::InvalidArgument as i32, message: error.to_string() }
}

/// The gRPC status of a request-level engine failure.
pub fn engine_status(error: EngineError) -> Status {
    match error {
        EngineError::Overloaded { .. } => Status::resource_exhausted(error.to_string()),
        EngineError::TooLarge { .. } | EngineError::BatchHeuristic(_) => Status::invalid_argument(error.to_string()),
        EngineError::Heuristic(error) => call_status(error),
        EngineError::Model(_) => Status::internal(error.to_string()),
        EngineError::Unavailable => Status::unavailable(error.to_string()),
    }
}

fn ranking_status(error: RankingError) -> Status {
    match error {
        RankingError::Heuristic(error) => call_status(error),
        RankingError::PoolTooLarge { .. } => Status::invalid_argument(error.to_string()),
        RankingError::Probabilities(_) => Status::internal(error.to_string()),
    }
}

/// The canonical name of a gRPC code, for metric labels.
type ResponseStream = Pin<Box<dyn Stream<Item = Result<PredictResponse, Status>> + Send>>;

#[tonic::async_trait]
impl InferenceService for InferenceApi {
    async fn predict(&self, request: Request<PredictRequest>) -> Result<Response<PredictResponse>, Status> {
        self.predict_one(request.into_inner()).await.map(Response::new)
    }

    type PredictStreamStream = ResponseStream;

    async fn predict_stream(
        &self,
        request: Request<Streaming<PredictRequest>>,
    ) -> Result<Response<Self::PredictStreamStream>, Status> {
        let mut inbound = request.into_inner();
        // Capacity 1: responses are produced in order and at the pace the client reads them.
        let (responses, outbound) = tokio::sync::mpsc::channel(1);
        let api = self.clone();
        tokio::spawn(async move {
            loop {
                let next = match inbound.message().await {
                    Ok(Some(request)) => api.predict_one(request).await,
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = next.is_err();
                // A send error means the client went away.
                if responses.send(next).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }

    async fn rank(&self, request: Request<Streaming<RankRequest>>) -> Result<Response<RankResponse>, Status> {
        self.rank_pool(request.into_inner()).await.map(Response::new)
    }
}
