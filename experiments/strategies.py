"""Acquisition strategies: which ``query_size`` items of the unlabelled pool to label next.

* ``random``: uniform without replacement, chosen client-side (the baseline; needs no model).
* ``bald``, ``entropy``, ``margin``: per-item acquisition functions on the MC-Dropout predictive
  distribution, the top ``query_size`` scores (BALD: Houlsby et al. 2011, used for deep active
  learning by Gal, Islam & Ghahramani 2017; entropy = "Max Entropy" there; margin = smallest gap
  between the two most probable classes).
* ``power_bald``, ``batch_bald``: batch acquisition (PowerBALD, Kirsch et al. 2022, samples
  ∝ BALD^(1/T); BatchBALD, Kirsch, van Amersfoort & Gal 2019, greedy joint mutual information),
  which avoid picking ``query_size`` near-duplicates.

Every model-based strategy goes through ``InferenceService.Rank`` with the heuristic's name: the
server runs ``mc_iterations`` stochastic forward passes per pool item and applies the
heuristic plugin. The ranking must come from the model version trained in the same round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from experiments.client import AlpsClient
from experiments.data import Digits

STRATEGIES = ("random", "bald", "entropy", "margin", "power_bald", "batch_bald")


@dataclass
class Acquisition:
    """What a strategy returns: the chosen ids and the model version that scored them ("" for
    random)."""

    ids: list[str]
    model_version: str


def acquire(
    strategy: str,
    client: AlpsClient,
    project_id: str,
    digits: Digits,
    unlabelled: Sequence[str],
    query_size: int,
    mc_iterations: int,
    rng: np.random.Generator,
) -> Acquisition:
    """Chooses the next ``query_size`` items of the unlabelled pool with ``strategy``."""
    if strategy == "random":
        chosen = rng.choice(len(unlabelled), size=min(query_size, len(unlabelled)), replace=False)
        return Acquisition([unlabelled[i] for i in sorted(chosen)], "")
    pool = [(item, digits.images[item]) for item in unlabelled]
    seed = int(rng.integers(2**63))
    ids, version = client.rank(project_id, pool, strategy, query_size, mc_iterations, seed)
    return Acquisition(ids, version)
