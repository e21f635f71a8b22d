"""The "annotator + retrain" step of the active-learning loop, behind one small interface.

An ``Annotator`` receives the ids of the items the acquisition function chose, gets them
labelled, has the server retrain on the grown labelled set, and returns the new model version
(which must then be the active one of ``annotator.project_id``, the ALPS project to evaluate).
Both label from ground truth (the oracle of Gal et al. 2017):

* ``--via grpc``: ``SimulatedAnnotator`` calls AddExamples + Train directly.
* ``--via label-studio``: ``LabelStudioAnnotator`` (``experiments/label_studio_annotator.py``)
  submits the annotations through Label Studio's REST API and retrains through the adapter's
  webhook path; it also does the acquisition, taking tasks in Label Studio's order by the
  adapter's prediction score (``take_top_tasks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from experiments.client import AlpsClient, TrainingSettings
from experiments.data import CLASSES, Digits


class Annotator(Protocol):
    """Labels items and retrains the project's model on everything labelled so far."""

    project_id: str  # the ALPS project that is trained (and evaluated)

    def label_and_retrain(self, item_ids: Sequence[str], seed: int) -> str:
        """Labels ``item_ids``, retrains with training seed ``seed``; returns the new active model
        version."""
        ...


class SimulatedAnnotator:
    """A simulated annotator: true labels straight into ExampleService, then TrainingService."""

    def __init__(self, client: AlpsClient, project_id: str, digits: Digits, training: TrainingSettings):
        self.client = client
        self.project_id = project_id
        self.digits = digits
        self.training = training
        self.labelled = 0

    def label_and_retrain(self, item_ids: Sequence[str], seed: int, train: bool = True) -> str:
        """As ``Annotator.label_and_retrain``; ``train=False`` only labels (the cold start before
        the labels cover 2 classes) and returns the active version unchanged ("untrained" at
        first). An empty ``item_ids`` labels nothing."""
        if item_ids:
            examples = [(item, self.digits.images[item], CLASSES[self.digits.labels[item]]) for item in item_ids]
            inserted = self.client.add_examples(self.project_id, examples)
            if inserted != len(item_ids):
                raise RuntimeError(f"{self.project_id}: {inserted} of {len(item_ids)} labels were new")
            self.labelled += inserted
        stored = self.client.count_examples(self.project_id)
        if stored != self.labelled:
            raise RuntimeError(f"{self.project_id}: server holds {stored} examples, expected {self.labelled}")
        if not train:
            return self.client.active_version(self.project_id)
        return self.client.train(self.project_id, self.training, seed)


def make_annotator(
    via: str,
    client: AlpsClient,
    project_id: str,
    digits: Digits,
    training: TrainingSettings,
    label_studio=None,
    pool: Sequence[str] = (),
) -> Annotator:
    """The annotator for ``--via``: ``grpc`` (simulated, direct API calls; the ALPS project
    ``project_id`` must exist) or ``label-studio`` (a Label Studio project titled ``project_id``
    holding ``pool``, on the running ``label_studio`` front end; the adapter makes the ALPS project)."""
    if via == "grpc":
        return SimulatedAnnotator(client, project_id, digits, training)
    if via == "label-studio":
        from experiments.label_studio_annotator import LabelStudioAnnotator

        return LabelStudioAnnotator(label_studio, client, project_id, digits, pool)
    raise ValueError(f"--via {via}: one of grpc, label-studio")
