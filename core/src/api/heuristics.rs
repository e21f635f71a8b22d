//! `alps.v1.HeuristicService`: Score, Select, ListHeuristics, ReloadHeuristics.

use std::sync::Arc;

use alps_heuristic_abi::{Direction as AbiDirection, Kind};
use alps_proto::v1::{
    Direction, HeuristicInfo, HeuristicKind, HeuristicRef, ListHeuristicsRequest, ListHeuristicsResponse,
    PluginLoadError, ReloadHeuristicsRequest, ReloadHeuristicsResponse, ScoreRequest, ScoreResponse, SelectRequest,
    SelectResponse, Tensor, heuristic_service_server::HeuristicService,
};
use tonic::{Request, Response, Status};

use super::blocking;
use crate::ids;

use crate::plugins::{
    CallError, EmbeddingMatrix, HeuristicHost, LabelledSet, LoadedHeuristic, PoolEmbeddings, ProbabilityTensor,
    Registry, ResolveError, most_informative_first,
};

/// Serves heuristics from the plugin host's current registry.
#[derive(Debug, Clone)]
pub struct HeuristicApi {
    host: Arc<HeuristicHost>,
}

impl HeuristicApi {
    /// A service over `host`.
    pub fn new(host: Arc<HeuristicHost>) -> Self {
        Self { host }
    }

    fn resolve(&self, reference: Option<HeuristicRef>) -> Result<Arc<LoadedHeuristic>, Status> {
        let reference = reference.filter(|r| !r.name.is_empty()).ok_or_else(|| {
            Status::invalid_argument("heuristic.name is required (see ListHeuristics for the loaded ones)")
        })?;
        check_reference("heuristic", &reference.name, &reference.version)?;
        self.host.registry().resolve(&reference.name, &reference.version).map_err(resolve_status)
    }
}

/// INVALID_ARGUMENT unless a heuristic `name` (required) and `version` (optional) follow the
/// identifier grammar; `field` is the request field holding them, e.g. `heuristic`.
pub fn check_reference(field: &str, name: &str, version: &str) -> Result<(), Status> {
    Ok(ids::heuristic(field, name, version)?)
}

/// NOT_FOUND naming what is loaded.
pub fn resolve_status(error: ResolveError) -> Status {
    Status::not_found(error.to_string())
}

/// The gRPC status of a heuristic call failure.
pub fn call_status(error: CallError) -> Status {
    match error {
        CallError::InvalidInput { .. }
        | CallError::NotAScoreHeuristic { .. }
        | CallError::MissingInput { .. }
        | CallError::EmbeddingShape { .. } => Status::invalid_argument(error.to_string()),
        CallError::Plugin { ref heuristic, ref plugin, ref message } => {
            // The plugin author's message is for the caller; the plugin's path on the server
            // is not (the file name says which plugin).
            tracing::error!(%error, "heuristic plugin failed");
            let file = plugin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Status::internal(format!(
                "heuristic {heuristic} (plugin {file}) failed: {}",
                crate::errors::first_line(message)
            ))
        }
    }
}

/// Validates `values` (`[N, C, K]`, probabilities or logits) into the plugins' input.
fn input(values: Option<Tensor>, logits: bool) -> Result<ProbabilityTensor, Status> {
    let values = values.ok_or_else(|| Status::invalid_argument("values is required: a [N, C, K] tensor"))?;
    let input = if logits {
        ProbabilityTensor::from_logits(values.data, &values.shape)
    } else {
        ProbabilityTensor::from_probabilities(values.data, &values.shape)
    };
    input.map_err(|error| Status::invalid_argument(format!("values: {error}")))
}

/// The embeddings a Score or Select request carries: `embeddings` `[N, D]`, and the labelled
/// set `labelled_embeddings` `[L, D]` with `labelled_classes` `[L]` (absent or empty = none yet).
/// Shapes are checked against the probabilities when the heuristic is called.
fn embeddings(
    embeddings: Option<Tensor>,
    labelled: Option<Tensor>,
    labelled_classes: Vec<u32>,
) -> Result<PoolEmbeddings, Status> {
    let Some(embeddings) = embeddings else {
        if labelled.is_some() || !labelled_classes.is_empty() {
            return Err(Status::invalid_argument("labelled_embeddings: needs embeddings for the samples too"));
        }
        return Ok(PoolEmbeddings::none());
    };
    let pool = matrix("embeddings", embeddings)?;
    let labelled = match labelled {
        Some(tensor) => matrix("labelled_embeddings", tensor)?,
        None => EmbeddingMatrix::new(Vec::new(), pool.d()).map_err(|e| Status::invalid_argument(e.to_string()))?,
    };
    let labelled = LabelledSet::new(labelled, labelled_classes)
        .map_err(|error| Status::invalid_argument(format!("labelled_classes: {error}")))?;
    Ok(PoolEmbeddings { pool: Some(pool), labelled: Some(Arc::new(labelled)) })
}

/// Largest embedding dimension D a request may carry: above the widest backbone ALPS serves
/// (VGG16's 4,096) by a wide margin, and small enough that what a heuristic allocates per
/// dimension (e.g. TypiClust's random projection, D × 128 values) stays bounded.
const MAX_EMBEDDING_DIM: u64 = 65_536;

/// A `[rows, D]` tensor as an embedding matrix (`[0, D]` or `[]` = no rows).
fn matrix(field: &str, tensor: Tensor) -> Result<EmbeddingMatrix, Status> {
    let invalid = |message: String| Status::invalid_argument(format!("{field}: {message}"));
    let [rows, d] = <[u64; 2]>::try_from(tensor.shape.as_slice())
        .map_err(|_| invalid(format!("shape {:?}: expected [rows, D]", tensor.shape)))?;
    if !(1..=MAX_EMBEDDING_DIM).contains(&d) {
        return Err(invalid(format!("dimension D = {d}: must be between 1 and {MAX_EMBEDDING_DIM}")));
    }
    if rows.checked_mul(d) != Some(tensor.data.len() as u64) {
        return Err(invalid(format!("shape [{rows}, {d}] does not match {} values", tensor.data.len())));
    }
    EmbeddingMatrix::new(tensor.data, d as usize).map_err(|error| invalid(error.to_string()))
}

fn reference(heuristic: &LoadedHeuristic) -> HeuristicRef {
    HeuristicRef { name: heuristic.name.clone(), version: heuristic.version.to_string() }
}

/// The protobuf direction of a plugin direction.
pub fn direction(direction: AbiDirection) -> Direction {
    match direction {
        AbiDirection::HigherIsMoreInformative => Direction::HigherIsMoreInformative,
        AbiDirection::LowerIsMoreInformative => Direction::LowerIsMoreInformative,
    }
}

fn info(heuristic: &LoadedHeuristic) -> HeuristicInfo {
    HeuristicInfo {
        name: heuristic.name.clone(),
        version: heuristic.version.to_string(),
        description: heuristic.description.clone(),
        direction: direction(heuristic.direction).into(),
        kind: match heuristic.kind {
            Kind::Score => HeuristicKind::Score,
            Kind::Batch => HeuristicKind::Batch,
        }
        .into(),
        plugin: heuristic.plugin.name.clone(),
        // The file name only: the plugin directory is the server's business.
        source_file: heuristic
            .plugin
            .source_file
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: heuristic.plugin.sha256.clone(),
        loaded_unix_ms: crate::clock::unix_ms(heuristic.plugin.loaded_at),
        needs_embeddings: heuristic.needs_embeddings(),
        needs_labelled_set: heuristic.needs_labelled(),
    }
}

fn infos(registry: &Registry) -> Vec<HeuristicInfo> {
    registry.all().map(|h| info(h)).collect()
}

#[tonic::async_trait]
impl HeuristicService for HeuristicApi {
    async fn score(&self, request: Request<ScoreRequest>) -> Result<Response<ScoreResponse>, Status> {
        let request = request.into_inner();
        let heuristic = self.resolve(request.heuristic)?;
        let seed = request.seed.unwrap_or_else(|| fastrand::u64(..));
        let scored = heuristic.clone();
        let scores = blocking(move || {
            let input = input(request.values, request.logits)?;
            let embeddings = embeddings(request.embeddings, request.labelled_embeddings, request.labelled_classes)?;
            scored.score(&input, &embeddings, seed).map_err(call_status)
        })
        .await?;
        let order = most_informative_first(&scores, heuristic.direction);
        Ok(Response::new(ScoreResponse {
            scores,
            order,
            heuristic: Some(reference(&heuristic)),
            direction: direction(heuristic.direction).into(),
        }))
    }

    async fn select(&self, request: Request<SelectRequest>) -> Result<Response<SelectResponse>, Status> {
        let request = request.into_inner();
        let heuristic = self.resolve(request.heuristic)?;
        let seed = request.seed.unwrap_or_else(|| fastrand::u64(..));
        let selecting = heuristic.clone();
        let (indices, scores) = blocking(move || {
            let input = input(request.values, request.logits)?;
            let embeddings = embeddings(request.embeddings, request.labelled_embeddings, request.labelled_classes)?;
            // The same rule as Rank: at least 1; more than the N samples given selects all N.
            if request.query_size == 0 {
                return Err(Status::invalid_argument("query_size: at least 1 sample must be selected"));
            }
            let query_size = (request.query_size as usize).min(input.n());
            selecting.select(&input, &embeddings, query_size, seed).map_err(call_status)
        })
        .await?;
        Ok(Response::new(SelectResponse { indices, scores, heuristic: Some(reference(&heuristic)) }))
    }

    async fn list_heuristics(
        &self,
        _request: Request<ListHeuristicsRequest>,
    ) -> Result<Response<ListHeuristicsResponse>, Status> {
        Ok(Response::new(ListHeuristicsResponse { heuristics: infos(&self.host.registry()) }))
    }

    async fn reload_heuristics(
        &self,
        request: Request<ReloadHeuristicsRequest>,
    ) -> Result<Response<ReloadHeuristicsResponse>, Status> {
        super::audit(&request, "ReloadHeuristics", "");
        let host = self.host.clone();
        let report = blocking(move || {
            host.reload().map_err(|error| Status::failed_precondition(host.redact(&error.to_string())))
        })
        .await?;
        let host = &self.host;
        let errors = report
            .errors
            .iter()
            .map(|error| PluginLoadError {
                file: error.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                message: host.redact(&crate::errors::first_line(&error)),
            })
            .collect();
        Ok(Response::new(ReloadHeuristicsResponse { heuristics: infos(&report.registry), errors }))
    }
}
