//! Labelled examples: validated, their sample bytes stored content-addressed, their index in
//! SQLite, idempotent by external id (a replay from Label Studio changes nothing).

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    engine::SampleInput,
    models::preprocess::{self, ImageLimits, SampleError},
    projects::Project,
    store::{
        blobs::{BlobError, BlobStore},
        db::{Database, ExampleRow, StoreError, UpsertCounts},
        now_unix_ms,
    },
};

/// A labelled example to store.
#[derive(Clone, Debug)]
pub struct NewExample {
    /// Client-side identity, 1 to 256 bytes.
    pub external_id: String,
    /// The sample.
    pub sample: SampleInput,
    /// One of the project's classes.
    pub class_name: String,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
}

/// Why examples were not stored. Nothing of the offending batch is stored.
#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    /// An external id is empty or longer than 256 bytes.
    #[error("examples[{index}].external_id: must be 1 to 256 bytes")]
    ExternalId {
        /// Position in the batch.
        index: usize,
    },
    /// A class outside the project's classes.
    #[error("examples[{index}] ({external_id}): class {class:?} is not one of the project's classes: {}", valid.join(", "))]
    UnknownClass {
        /// Position in the batch.
        index: usize,
        /// The example.
        external_id: String,
        /// The class given.
        class: String,
        /// The project's classes.
        valid: Vec<String>,
    },
    /// The sample cannot become a model input.
    #[error("examples[{index}] ({external_id}): {source}")]
    Sample {
        /// Position in the batch.
        index: usize,
        /// The example.
        external_id: String,
        /// Why.
        source: SampleError,
    },
    /// See [`BlobError`].
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// See [`StoreError`].
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The labelled examples of every project.
#[derive(Debug)]
pub struct Examples {
    db: Arc<Database>,
    blobs: Arc<BlobStore>,
    limits: ImageLimits,
}

impl Examples {
    /// Examples in `db` with sample bytes in `blobs`; images are checked against `limits`.
    pub fn new(db: Arc<Database>, blobs: Arc<BlobStore>, limits: ImageLimits) -> Self {
        Self { db, blobs, limits }
    }

    /// Validates every example of the batch, then stores them durably (blobs fsync'ed, index
    /// committed with SQLite's full sync) and returns what changed.
    ///
    /// # Errors
    /// [`ExampleError`] naming the first invalid example; nothing of the batch is stored then.
    pub fn add(&self, project: &Project, batch: Vec<NewExample>) -> Result<UpsertCounts, ExampleError> {
        let spec = &project.spec;
        let mut prepared = Vec::with_capacity(batch.len());
        for (index, example) in batch.into_iter().enumerate() {
            if !(1..=256).contains(&example.external_id.len()) {
                return Err(ExampleError::ExternalId { index });
            }
            if !spec.classes.contains(&example.class_name) {
                return Err(ExampleError::UnknownClass {
                    index,
                    external_id: example.external_id,
                    class: example.class_name,
                    valid: spec.classes.clone(),
                });
            }
            let sample_error =
                |source| ExampleError::Sample { index, external_id: example.external_id.clone(), source };
            let (bytes, tensor_shape) = match example.sample {
                SampleInput::Image(bytes) => {
                    preprocess::image(&bytes, &spec.preprocessing, self.limits).map_err(sample_error)?;
                    (bytes, None)
                }
                SampleInput::Tensor { shape, values } => {
                    let values = preprocess::tensor(&shape, values, &spec.preprocessing).map_err(sample_error)?;
                    let shape = preprocess::input_shape(&spec.preprocessing).to_vec();
                    (values.iter().flat_map(|v| v.to_le_bytes()).collect(), Some(shape))
                }
                SampleInput::Missing => return Err(sample_error(SampleError::Empty)),
            };
            prepared.push((example.external_id, example.class_name, bytes, tensor_shape, example.metadata));
        }
        let now = now_unix_ms();
        let mut rows = Vec::with_capacity(prepared.len());
        for (external_id, class_name, bytes, tensor_shape, metadata) in prepared {
            let sha256 = self.blobs.put(&bytes)?;
            rows.push(ExampleRow {
                external_id,
                class_name,
                sha256,
                size_bytes: bytes.len() as u64,
                tensor_shape,
                metadata,
                updated_unix_ms: now,
            });
        }
        Ok(self.db.upsert_examples(&spec.id, &rows)?)
    }

    /// Deletes examples by external id; returns (deleted, not found).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn delete(&self, project: &str, external_ids: &[String]) -> Result<(u64, u64), StoreError> {
        self.db.delete_examples(project, external_ids)
    }

    /// A page of examples after `after` (exclusive), ordered by external id.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn page(&self, project: &str, after: &str, limit: usize) -> Result<Vec<ExampleRow>, StoreError> {
        self.db.examples(project, after, limit)
    }

    /// Examples per class; every project class is present, with 0 when it has none.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn counts(&self, project: &Project) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut counts: BTreeMap<String, u64> = project.spec.classes.iter().map(|c| (c.clone(), 0)).collect();
        for (class, count) in self.db.count_examples(&project.spec.id)? {
            counts.insert(class, count);
        }
        Ok(counts)
    }
}
