//! The built-in ALPS heuristics, exported as one plugin through the ALPS heuristic C ABI:
//! `bald`, `entropy`, `variance`, `margin`, `least_confidence`, `random` (per-sample scores) and
//! `power_bald`, `batch_bald` (batch selection). Each function's doc gives its
//! formula and source; scores are in nats where they are entropies.

pub mod batch;
pub mod entropy;
mod ln;
pub mod score;

use alps_heuristic_abi::HeuristicDescriptor;

use crate::{
    batch::{BatchBald, PowerBald},
    score::{Bald, Entropy, LeastConfidence, Margin, Random, Variance},
};

alps_heuristic_abi::export_plugin! {
    name: c"alps-builtin",
    version: c"0.1.0",
    heuristics: [
        HeuristicDescriptor::for_score::<Bald>(),
        HeuristicDescriptor::for_score::<Entropy>(),
        HeuristicDescriptor::for_score::<Variance>(),
        HeuristicDescriptor::for_score::<Margin>(),
        HeuristicDescriptor::for_score::<LeastConfidence>(),
        HeuristicDescriptor::for_score::<Random>(),
        HeuristicDescriptor::for_batch::<PowerBald>(),
        HeuristicDescriptor::for_batch::<BatchBald>(),
    ],
}
