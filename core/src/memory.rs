//! The memory budget of models (`--model-cache-mib`), shared by inference and training. What
//! training holds (a running job's model, gradients, optimiser state and inputs; the model kept
//! warm for the project's next job) is taken off what the inference cache may keep, so that the
//! flag bounds both: the cache evicts down to the rest at its next batch. So is the cache of
//! backbone embeddings that head-only training keeps between jobs.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

/// The budget: a total in bytes, part of it held by training.
#[derive(Debug)]
pub struct MemoryBudget {
    total_bytes: usize,
    training_bytes: AtomicUsize,
}

/// Bytes held for training until dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl MemoryBudget {
    /// A budget of `total_bytes`, none of it held.
    pub fn new(total_bytes: usize) -> Arc<Self> {
        Arc::new(Self { total_bytes, training_bytes: AtomicUsize::new(0) })
    }

    /// The whole budget, bytes.
    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// What the inference cache may keep now: the total less what training holds (0 when
    /// training holds it all; the cache always keeps the model in use).
    pub fn for_inference(&self) -> usize {
        self.total_bytes.saturating_sub(self.training_bytes())
    }

    /// Bytes training holds now.
    pub fn training_bytes(&self) -> usize {
        self.training_bytes.load(Ordering::Relaxed)
    }

    /// Holds `bytes` for training until the returned guard is dropped. Never refused: a job
    /// larger than the budget still runs, and the cache keeps only the model in use meanwhile.
    pub fn hold(self: &Arc<Self>, bytes: usize) -> Held {
        self.training_bytes.fetch_add(bytes, Ordering::Relaxed);
        Held { budget: self.clone(), bytes }
    }
}

impl Held {
    /// Bytes this holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `bytes` instead of what this held so far (a cache that grew or shrank).
    pub fn resize(&mut self, bytes: usize) {
        let training = &self.budget.training_bytes;
        if bytes >= self.bytes {
            training.fetch_add(bytes - self.bytes, Ordering::Relaxed);
        } else {
            training.fetch_sub(self.bytes - bytes, Ordering::Relaxed);
        }
        self.bytes = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.training_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_training_holds_is_off_the_inference_share_until_released() {
        let budget = MemoryBudget::new(1000);
        assert_eq!(budget.for_inference(), 1000);
        let job = budget.hold(300);
        let warm = budget.hold(200);
        assert_eq!((budget.training_bytes(), budget.for_inference()), (500, 500));
        let huge = budget.hold(5000);
        assert_eq!(budget.for_inference(), 0, "over the total: nothing left, no underflow");
        drop((job, huge));
        assert_eq!(budget.for_inference(), 800);
        drop(warm);
        assert_eq!(budget.for_inference(), 1000);
        let mut cache = budget.hold(0);
        cache.resize(400);
        assert_eq!(budget.for_inference(), 600, "grown");
        cache.resize(100);
        assert_eq!(budget.for_inference(), 900, "shrunk");
        drop(cache);
        assert_eq!(budget.for_inference(), 1000);
    }
}
