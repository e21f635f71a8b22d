//! `alps.v1.ExampleService`: add (streamed, idempotent by external id), delete, list, count.

use std::sync::Arc;

use alps_proto::v1::{
    AddExamplesRequest, AddExamplesResponse, CountExamplesRequest, CountExamplesResponse, DeleteExamplesRequest,
    DeleteExamplesResponse, ListExamplesRequest, ListExamplesResponse, StoredExample,
    example_service_server::ExampleService,
};
use tonic::{Request, Response, Status, Streaming};

use super::{AppState, blocking, inference::sample_input};
use crate::ids;
use crate::training::examples::{ExampleError, NewExample};

/// Largest page of ListExamples.
const MAX_PAGE: u32 = 1000;

/// Serves labelled examples.
#[derive(Debug, Clone)]
pub struct ExampleApi {
    state: Arc<AppState>,
}

impl ExampleApi {
    /// A service over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

pub(crate) fn example_status(error: ExampleError) -> Status {
    match error {
        ExampleError::ExternalId { .. } | ExampleError::UnknownClass { .. } | ExampleError::Sample { .. } => {
            Status::invalid_argument(error.to_string())
        }
        ExampleError::Storage(ref storage) => crate::errors::storage("the example store", storage.failure, &error),
    }
}

#[tonic::async_trait]
impl ExampleService for ExampleApi {
    async fn add_examples(
        &self,
        request: Request<Streaming<AddExamplesRequest>>,
    ) -> Result<Response<AddExamplesResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty stream: send examples"))?;
        let project = super::project(&self.state, &first.project_id)?;
        let mut offset = 0;
        let mut response = AddExamplesResponse::default();
        let mut message = Some(first);
        while let Some(request) = message {
            for (index, example) in request.examples.iter().enumerate() {
                ids::external(&format!("examples[{}].external_id", offset + index), &example.external_id)?;
            }
            offset += request.examples.len();
            let batch: Vec<NewExample> = request
                .examples
                .into_iter()
                .map(|example| NewExample {
                    sample: sample_input(example.sample.and_then(|s| s.input)),
                    external_id: example.external_id,
                    class_name: example.class_name,
                    metadata: example.metadata.into_iter().collect(),
                    label_revision: example.label_revision,
                })
                .collect();
            let (examples, project) = (self.state.examples.clone(), project.clone());
            let counts = blocking(move || examples.add(&project, batch).map_err(example_status)).await?;
            response.inserted += counts.inserted;
            response.updated += counts.updated;
            response.unchanged += counts.unchanged;
            response.stale += counts.stale;
            message = stream.message().await?;
        }
        tracing::info!(
            project = %project.spec.id,
            inserted = response.inserted,
            updated = response.updated,
            unchanged = response.unchanged,
            stale = response.stale,
            "examples stored"
        );
        Ok(Response::new(response))
    }

    async fn delete_examples(
        &self,
        request: Request<DeleteExamplesRequest>,
    ) -> Result<Response<DeleteExamplesResponse>, Status> {
        let request = request.into_inner();
        super::project(&self.state, &request.project_id)?;
        for (index, id) in request.external_ids.iter().enumerate() {
            ids::external(&format!("external_ids[{index}]"), id)?;
        }
        let examples = self.state.examples.clone();
        let (deleted, not_found) =
            blocking(move || examples.delete(&request.project_id, &request.external_ids).map_err(example_status))
                .await?;
        Ok(Response::new(DeleteExamplesResponse { deleted, not_found }))
    }

    async fn list_examples(
        &self,
        request: Request<ListExamplesRequest>,
    ) -> Result<Response<ListExamplesResponse>, Status> {
        let request = request.into_inner();
        super::project(&self.state, &request.project_id)?;
        if !request.page_token.is_empty() {
            ids::external("page_token", &request.page_token)?;
        }
        let size = match request.page_size {
            0 => 100,
            size if size <= MAX_PAGE => size,
            size => return Err(Status::invalid_argument(format!("page_size {size}: at most {MAX_PAGE}"))),
        } as usize;
        let examples = self.state.examples.clone();
        // The page token is the last external id of the previous page.
        let rows =
            blocking(move || examples.page(&request.project_id, &request.page_token, size + 1).map_err(example_status))
                .await?;
        let more = rows.len() > size;
        let examples: Vec<StoredExample> = rows
            .into_iter()
            .take(size)
            .map(|row| StoredExample {
                external_id: row.external_id,
                class_name: row.class_name,
                content_sha256: row.sha256,
                size_bytes: row.size_bytes,
                metadata: row.metadata.into_iter().collect(),
                updated_unix_ms: row.updated_unix_ms,
                label_revision: row.label_revision,
            })
            .collect();
        let next_page_token =
            if more { examples.last().map(|e| e.external_id.clone()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(ListExamplesResponse { examples, next_page_token }))
    }

    async fn count_examples(
        &self,
        request: Request<CountExamplesRequest>,
    ) -> Result<Response<CountExamplesResponse>, Status> {
        let project = super::project(&self.state, &request.into_inner().project_id)?;
        let examples = self.state.examples.clone();
        let per_class = blocking(move || examples.counts(&project).map_err(example_status)).await?;
        let total = per_class.values().sum();
        Ok(Response::new(CountExamplesResponse { total, per_class: per_class.into_iter().collect() }))
    }
}
