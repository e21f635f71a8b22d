"""Acquisition strategies: which ``query_size`` items of the unlabelled pool to label next.

* ``random``: uniform without replacement, chosen client-side (the baseline; needs no model).
* ``bald``, ``entropy``, ``margin``: per-item acquisition functions on the MC-Dropout predictive
  distribution, the top ``query_size`` scores (BALD: Houlsby et al. 2011, used for deep active
  learning by Gal, Islam & Ghahramani 2017; entropy = "Max Entropy" there; margin = smallest gap
  between the two most probable classes).
* ``power_bald``, ``batch_bald``: batch acquisition (PowerBALD, Kirsch et al. 2022, samples
  ∝ BALD^(1/T); BatchBALD, Kirsch, van Amersfoort & Gal 2019, greedy joint mutual information),
  which avoid picking ``query_size`` near-duplicates.
* ``typiclust``, ``coreset``, ``badge``: batch acquisition on the backbone embeddings the server
  computes (TypiClust, Hacohen et al. 2022: the most typical item of each of the largest
  clusters not yet covered by the labelled set, for the cold start; Core-Set, Sener & Savarese
  2018: greedy k-center cover of pool + labelled set; BADGE, Ash et al. 2020: k-means++ seeding
  on the gradient embeddings of the predicted class).
* ``schedule``: Rank naming no heuristic, on a project created with the server's default
  acquisition schedule (``typiclust`` while the project has fewer than max(2 × classes, 20)
  labelled examples, then the project's default heuristic ``bald``). The experiment creates the
  projects of every other strategy with an explicit empty schedule.

Every model-based strategy goes through ``InferenceService.Rank`` (with the heuristic's name, or
none for ``schedule``): the server runs ``mc_iterations`` stochastic forward passes per pool item
and applies the heuristic plugin. The ranking must come from the model version active in the
same round ("untrained" before the first training).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from experiments.client import AlpsClient
from experiments.data import Digits

STRATEGIES = ("random", "typiclust", "coreset", "badge", "bald", "batch_bald", "schedule")
# Strategies the experiment can run besides the default set (issue #7's per-item and batch ones).
EXTRA_STRATEGIES = ("entropy", "margin", "power_bald")
ALL_STRATEGIES = STRATEGIES + EXTRA_STRATEGIES
# The strategy that ranks with the project's acquisition schedule (Rank names no heuristic).
SCHEDULE = "schedule"


@dataclass
class Acquisition:
    """What a strategy returns: the chosen ids, the model version that scored them and the
    heuristic that ranked (both "" for random)."""

    ids: list[str]
    model_version: str
    heuristic: str = ""


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
    heuristic = None if strategy == SCHEDULE else strategy
    ids, version, used = client.rank(project_id, pool, heuristic, query_size, mc_iterations, seed)
    return Acquisition(ids, version, used)
