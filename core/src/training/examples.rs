//! Labelled examples: validated, their sample bytes stored content-addressed, their index in
//! SQLite, idempotent by external id (a replay from Label Studio changes nothing).

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    clock::now_unix_ms,
    engine::SampleInput,
    models::preprocess::{self, ImageLimits, SampleError},
    projects::Project,
    store::{
        StorageFailure,
        blobs::{BlobError, BlobStore},
        catalog::{Catalog, ExampleRow, StoreError, UpsertCounts},
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
    /// The client's version of the label (see [`ExampleRow::label_revision`]).
    pub label_revision: u64,
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
    /// The blob store or the catalogue failed: nothing of the request was written.
    #[error(transparent)]
    Storage(#[from] StorageFailure),
}

impl From<BlobError> for ExampleError {
    fn from(error: BlobError) -> Self {
        Self::Storage(error.into())
    }
}

impl From<StoreError> for ExampleError {
    fn from(error: StoreError) -> Self {
        Self::Storage(error.into())
    }
}

/// The sample a stored example holds, from its blob `bytes`: a raw little-endian f32 tensor when
/// the row has a `tensor_shape`, else an encoded image (the format [`Examples::add`] writes).
pub fn stored_sample(row: &ExampleRow, bytes: Vec<u8>) -> SampleInput {
    match &row.tensor_shape {
        Some(shape) => SampleInput::Tensor {
            shape: shape.clone(),
            values: bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        },
        None => SampleInput::Image(bytes),
    }
}

/// A page of labelled examples as model inputs (see [`Examples::labelled_inputs`]).
#[derive(Debug, Default)]
pub struct LabelledPage {
    /// The page's last external id; `None` when the page is empty (the end).
    pub last: Option<String>,
    /// Each example's sample with its class index, for examples whose class the project still has.
    pub inputs: Vec<(SampleInput, u32)>,
}

/// The labelled examples of every project.
#[derive(Debug)]
pub struct Examples {
    catalog: Arc<dyn Catalog>,
    blobs: Arc<BlobStore>,
    limits: ImageLimits,
}

impl Examples {
    /// Examples in `db` with sample bytes in `blobs`; images are checked against `limits`.
    pub fn new(catalog: Arc<dyn Catalog>, blobs: Arc<BlobStore>, limits: ImageLimits) -> Self {
        Self { catalog, blobs, limits }
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
            let revision = example.label_revision;
            prepared.push((example.external_id, example.class_name, bytes, tensor_shape, example.metadata, revision));
        }
        let now = now_unix_ms();
        let mut rows = Vec::with_capacity(prepared.len());
        // Kept from the garbage collector until the rows naming them are committed.
        let mut pins = self.blobs.pins();
        let samples: Vec<&[u8]> = prepared.iter().map(|(_, _, bytes, ..)| bytes.as_slice()).collect();
        let sha256s = pins.put_all(&samples)?;
        for ((external_id, class_name, bytes, tensor_shape, metadata, label_revision), sha256) in
            prepared.into_iter().zip(sha256s)
        {
            rows.push(ExampleRow {
                external_id,
                class_name,
                sha256,
                size_bytes: bytes.len() as u64,
                tensor_shape,
                metadata,
                updated_unix_ms: now,
                label_revision,
            });
        }
        Ok(self.catalog.upsert_examples(&spec.id, &rows)?)
    }

    /// Deletes examples by external id; returns (deleted, not found).
    ///
    /// # Errors
    /// [`ExampleError::Storage`] on a database failure.
    pub fn delete(&self, project: &str, external_ids: &[String]) -> Result<(u64, u64), ExampleError> {
        Ok(self.catalog.delete_examples(project, external_ids)?)
    }

    /// A page of examples after `after` (exclusive), ordered by external id.
    ///
    /// # Errors
    /// [`ExampleError::Storage`] on a database failure.
    pub fn page(&self, project: &str, after: &str, limit: usize) -> Result<Vec<ExampleRow>, ExampleError> {
        Ok(self.catalog.examples(project, after, limit)?)
    }

    /// A page of labelled examples as model inputs, for heuristics that need the labelled set:
    /// up to `limit` examples after external id `after` (exclusive, in id order), each with its
    /// class index.
    ///
    /// # Errors
    /// [`ExampleError::Storage`] when the index cannot be read (an unreadable sample is logged and
    /// left out).
    pub fn labelled_inputs(&self, project: &Project, after: &str, limit: usize) -> Result<LabelledPage, ExampleError> {
        let rows = self.catalog.examples(&project.spec.id, after, limit)?;
        let last = rows.last().map(|row| row.external_id.clone());
        let mut inputs = Vec::with_capacity(rows.len());
        for row in rows {
            let Some(class) = project.spec.classes.iter().position(|c| *c == row.class_name) else { continue };
            let bytes = match self.blobs.get(&row.sha256) {
                Ok(bytes) => bytes,
                Err(error) => {
                    // One unreadable sample leaves that example out, as a sample that no longer
                    // prepares does; the log names it.
                    tracing::warn!(external_id = %row.external_id, %error, "labelled example unreadable; left out of the labelled set");
                    continue;
                }
            };
            inputs.push((stored_sample(&row, bytes), class as u32));
        }
        Ok(LabelledPage { last, inputs })
    }

    /// Labelled examples of `project` in total.
    ///
    /// # Errors
    /// [`ExampleError::Storage`] on a database failure.
    pub fn total(&self, project: &str) -> Result<u64, ExampleError> {
        Ok(self.catalog.count_examples(project)?.iter().map(|(_, count)| count).sum())
    }

    /// Examples per class; every project class is present, with 0 when it has none.
    ///
    /// # Errors
    /// [`ExampleError::Storage`] on a database failure.
    pub fn counts(&self, project: &Project) -> Result<BTreeMap<String, u64>, ExampleError> {
        let mut counts: BTreeMap<String, u64> = project.spec.classes.iter().map(|c| (c.clone(), 0)).collect();
        for (class, count) in self.catalog.count_examples(&project.spec.id)? {
            counts.insert(class, count);
        }
        Ok(counts)
    }
}
