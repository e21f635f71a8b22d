//! The built-in ALPS heuristics, exported as one plugin through the ALPS heuristic C ABI:
//! * per-sample scores over MC-Dropout probabilities: `bald`, `entropy`, `variance`, `margin`,
//!   `least_confidence`, `random` ([`score`]);
//! * batch selection over probabilities: `power_bald`, `batch_bald` ([`batch`]);
//! * batch selection over backbone embeddings (ABI 1.1 inputs): `typiclust` ([`typiclust`],
//!   embeddings and the labelled set), `coreset` ([`coreset`], embeddings and the labelled set)
//!   and `badge` ([`badge`], embeddings and probabilities).
//!
//! Each heuristic's doc gives its formula, source paper and cost; scores are in nats where they
//! are entropies, in embedding units where they are distances.

pub mod badge;
pub mod batch;
pub mod coreset;
pub mod entropy;
mod geometry;
mod ln;
pub mod score;
// Bench-only: stage timings for `benches/diversity.rs`; not part of the plugin's API.
#[doc(hidden)]
pub mod stages;
pub mod typiclust;

use crate::{
    badge::Badge,
    batch::{BatchBald, PowerBald},
    coreset::Coreset,
    score::{Bald, Entropy, LeastConfidence, Margin, Random, Variance},
    typiclust::Typiclust,
};

alps_heuristic_abi::export_plugin! {
    name: c"alps-builtin",
    version: c"0.2.0",
    heuristics: [
        score Bald,
        score Entropy,
        score Variance,
        score Margin,
        score LeastConfidence,
        score Random,
        batch PowerBald,
        batch BatchBald,
        batch Typiclust,
        batch Coreset,
        batch Badge,
    ],
}
