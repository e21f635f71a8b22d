//! `alps.v1.InferenceService`: Predict, PredictStream and Rank. The handlers decode, call the
//! [`Infer`] facade and encode; the rules (version, defaults, ranking) live in the facade.

use std::{pin::Pin, sync::Arc};

use alps_proto::v1::{
    self as pb, PredictRequest, PredictResponse, PredictResult, RankRequest, RankResponse, RankedSample, Sample,
    SampleError, inference_service_server::InferenceService, predict_result::Outcome, sample::Input,
};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::{AppState, heuristics::call_status};
use crate::{
    engine::{EngineError, RankingError, SampleInput, SamplePrediction},
    infer::{Infer, InferError, PredictParams},
    models::preprocess,
    plugins::{CallError, LoadedHeuristic},
    projects::{HeuristicChoice, Project},
};

/// Serves predictions and rankings.
#[derive(Debug, Clone)]
pub struct InferenceApi {
    infer: Infer,
}

impl InferenceApi {
    /// A service over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { infer: state.infer.clone() }
    }

    async fn predict_one(&self, request: PredictRequest) -> Result<PredictResponse, Status> {
        let project = self.infer.project("project_id", &request.project_id)?;
        let params = PredictParams {
            mc_iterations: request.mc_iterations,
            heuristic: heuristic_choice(request.heuristic),
            return_mc_samples: request.return_mc_samples,
            seed: request.seed,
        };
        let (ids, inputs) = split_samples(request.samples);
        let predictions = self.infer.predict(project, inputs, params).await?;
        let (project, k) = (&predictions.project, predictions.mc_iterations);
        let results = ids
            .into_iter()
            .zip(predictions.samples)
            .map(|(id, prediction)| PredictResult {
                id,
                outcome: Some(match prediction {
                    Ok(prediction) => Outcome::Prediction(proto_prediction(prediction, project, k)),
                    Err(error) => Outcome::Error(sample_error(&error)),
                }),
            })
            .collect();
        Ok(PredictResponse {
            results,
            model_version: project.active_version.clone(),
            heuristic: Some(heuristic_ref(&predictions.heuristic)),
            direction: super::heuristics::direction(predictions.heuristic.direction).into(),
            mc_iterations: k as u32,
        })
    }

    async fn rank_pool(&self, mut stream: Streaming<RankRequest>) -> Result<RankResponse, Status> {
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty stream: send the pool"))?;
        let project = self.infer.project("project_id", &first.project_id)?;
        let params = PredictParams {
            mc_iterations: first.mc_iterations,
            heuristic: heuristic_choice(first.heuristic.clone()),
            return_mc_samples: false,
            seed: first.seed,
        };
        let mut ranking = self.infer.rank(project, first.query_size, params).await?;
        let mut failed = Vec::new();
        let mut chunk = Some(first);
        while let Some(message) = chunk {
            let samples = message.samples.into_iter().map(|s| (s.id, sample_input(s.input))).collect();
            for (id, error) in ranking.add(samples).await? {
                failed.push(PredictResult { id, outcome: Some(Outcome::Error(sample_error(&error))) });
            }
            chunk = stream.message().await?;
        }
        let outcome = ranking.finish()?;
        Ok(RankResponse {
            selected: outcome.selected.into_iter().map(|(id, score)| RankedSample { id, score }).collect(),
            failed,
            pool_size: outcome.pool_size,
            model_version: outcome.project.active_version.clone(),
            heuristic: Some(heuristic_ref(&outcome.heuristic)),
        })
    }
}

fn heuristic_choice(requested: Option<pb::HeuristicRef>) -> Option<HeuristicChoice> {
    requested.map(|h| HeuristicChoice { name: h.name, version: h.version })
}

fn heuristic_ref(heuristic: &LoadedHeuristic) -> pb::HeuristicRef {
    pb::HeuristicRef { name: heuristic.name.clone(), version: heuristic.version.to_string() }
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
        EngineError::Unavailable | EngineError::Fetch(_) => Status::unavailable(error.to_string()),
    }
}

fn ranking_status(error: RankingError) -> Status {
    match error {
        // Embeddings in Rank come from the model, not the client: a misfit is the server's.
        RankingError::Heuristic(error @ CallError::EmbeddingShape { .. }) => {
            crate::errors::internal("the model's embeddings", &error)
        }
        RankingError::Heuristic(error) => call_status(error),
        RankingError::PoolTooLarge { .. } => Status::invalid_argument(error.to_string()),
        RankingError::LabelledSetTooLarge { .. } => Status::failed_precondition(error.to_string()),
        RankingError::Probabilities(_) | RankingError::Embeddings(_) => Status::internal(error.to_string()),
    }
}

impl From<InferError> for Status {
    fn from(error: InferError) -> Self {
        match error {
            InferError::Invalid { .. } => Status::invalid_argument(error.to_string()),
            InferError::Id(error) => error.into(),
            InferError::Project(error) => super::projects::project_status(error),
            InferError::UnknownVersion { .. } => Status::not_found(error.to_string()),
            InferError::StaleVersion { .. } => Status::failed_precondition(error.to_string()),
            InferError::Versions(error) => super::training::training_status(error),
            InferError::Heuristic(error) => super::heuristics::resolve_status(error),
            InferError::Engine(error) => engine_status(error),
            InferError::Ranking(error) => ranking_status(error),
            // The store's detail stays in the log (it may name paths or the database).
            InferError::LabelledSet(error) => super::examples::example_status(error),
        }
    }
}

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
        tokio::spawn(crate::observe::in_this_call(async move {
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
        }));
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }

    async fn rank(&self, request: Request<Streaming<RankRequest>>) -> Result<Response<RankResponse>, Status> {
        self.rank_pool(request.into_inner()).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{engine::ModelFailure, models::ModelError};

    #[test]
    fn a_version_that_cannot_be_fetched_now_is_unavailable_and_a_missing_one_internal() {
        let status = |transient| {
            let error = ModelError::Fetch { version: "v1".into(), transient };
            engine_status(EngineError::from(ModelFailure::from(&error)))
        };
        let now = status(true);
        assert_eq!(now.code(), tonic::Code::Unavailable, "{now:?}");
        assert!(now.message().ends_with("retry with backoff"), "{now:?}");
        let missing = status(false);
        assert_eq!(missing.code(), tonic::Code::Internal, "{missing:?}");
        assert!(missing.message().contains("activate another version"), "{missing:?}");
    }
}
