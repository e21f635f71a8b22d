//! Validated host-side embeddings for heuristics that ask for them (plugin ABI 1.1): the pool's
//! backbone embeddings `[N, D]` and the labelled set's `[L, D]` with class indices `[L]`.

/// Why embeddings are not acceptable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EmbeddingError {
    /// `D` is 0 or does not divide the number of values.
    #[error("{len} embedding values do not form rows of dimension {d}")]
    Shape {
        /// Values given.
        len: usize,
        /// Dimension given.
        d: usize,
    },
    /// A NaN or infinite value.
    #[error("embedding {row}, dimension {dimension}: value {value} is not finite")]
    NonFinite {
        /// Row.
        row: usize,
        /// Column.
        dimension: usize,
        /// The value.
        value: f32,
    },
    /// The labelled set's classes do not match its rows.
    #[error("{rows} labelled embeddings but {classes} labelled_classes entries (one class index per row)")]
    Classes {
        /// Embedding rows.
        rows: usize,
        /// Class indices.
        classes: usize,
    },
}

/// Row-major `f32` embeddings `[rows, D]`, every value finite, `D >= 1`.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingMatrix {
    data: Vec<f32>,
    d: usize,
}

impl EmbeddingMatrix {
    /// Validates `data` as rows of dimension `d`.
    ///
    /// # Errors
    /// [`EmbeddingError`] for a bad shape or the first non-finite value.
    pub fn new(data: Vec<f32>, d: usize) -> Result<Self, EmbeddingError> {
        if d == 0 || !data.len().is_multiple_of(d) {
            return Err(EmbeddingError::Shape { len: data.len(), d });
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(EmbeddingError::NonFinite { row: i / d, dimension: i % d, value: data[i] });
        }
        Ok(Self { data, d })
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.d
    }

    /// Dimension D.
    pub fn d(&self) -> usize {
        self.d
    }

    /// Values, row-major `[rows, D]`.
    pub fn data(&self) -> &[f32] {
        &self.data
    }
}

/// The labelled set as heuristics see it: embeddings `[L, D]` and class indices `[L]` (indices
/// into the project's classes; the call checks them against C).
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledSet {
    embeddings: EmbeddingMatrix,
    classes: Vec<u32>,
}

impl LabelledSet {
    /// Pairs `embeddings` with `classes`, one per row.
    ///
    /// # Errors
    /// [`EmbeddingError::Classes`] if the counts differ.
    pub fn new(embeddings: EmbeddingMatrix, classes: Vec<u32>) -> Result<Self, EmbeddingError> {
        if embeddings.rows() != classes.len() {
            return Err(EmbeddingError::Classes { rows: embeddings.rows(), classes: classes.len() });
        }
        Ok(Self { embeddings, classes })
    }

    /// Embeddings `[L, D]`.
    pub fn embeddings(&self) -> &EmbeddingMatrix {
        &self.embeddings
    }

    /// Class indices `[L]`.
    pub fn classes(&self) -> &[u32] {
        &self.classes
    }
}

/// What a call offers besides probabilities; a heuristic gets only what it asked for
/// (`LoadedHeuristic::inputs`).
#[derive(Clone, Debug, Default)]
pub struct PoolEmbeddings {
    /// The pool's embeddings `[N, D]`, row `i` for sample `i`.
    pub pool: Option<EmbeddingMatrix>,
    /// The labelled set, in the pool's embedding space (shared: a ranking offers it to every
    /// chunk).
    pub labelled: Option<std::sync::Arc<LabelledSet>>,
}

impl PoolEmbeddings {
    /// No embeddings: enough for every heuristic that asks for probabilities only.
    pub fn none() -> Self {
        Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_values_are_checked() {
        assert_eq!(EmbeddingMatrix::new(vec![1.0; 6], 3).unwrap().rows(), 2);
        assert_eq!(EmbeddingMatrix::new(vec![1.0; 6], 4), Err(EmbeddingError::Shape { len: 6, d: 4 }));
        assert_eq!(EmbeddingMatrix::new(vec![1.0; 6], 0), Err(EmbeddingError::Shape { len: 6, d: 0 }));
        let error = EmbeddingMatrix::new(vec![0.0, 1.0, f32::NAN, 2.0], 2).unwrap_err();
        assert!(matches!(error, EmbeddingError::NonFinite { row: 1, dimension: 0, .. }), "{error:?}");
        assert!(EmbeddingMatrix::new(Vec::new(), 5).unwrap().rows() == 0, "an empty labelled set is valid");
    }

    #[test]
    fn a_labelled_set_needs_one_class_per_row() {
        let embeddings = EmbeddingMatrix::new(vec![0.5; 4], 2).unwrap();
        assert_eq!(LabelledSet::new(embeddings.clone(), vec![1]), Err(EmbeddingError::Classes { rows: 2, classes: 1 }));
        assert_eq!(LabelledSet::new(embeddings, vec![0, 1]).unwrap().classes(), [0, 1]);
    }
}
