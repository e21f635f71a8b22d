"""``--via label-studio``: Label Studio as the labelling front end of the experiment (issue #7).

The simulated annotator works the way a person would in Label Studio's Community edition: after
each training run it clicks "Retrieve predictions" for the unlabelled tasks (the adapter answers
with the active model version and, in ``uncertainty`` score mode, the BALD value as the prediction
score), sorts the Data Manager by prediction score, most informative first, labels the top
``query_size`` tasks with their true digit, and clicks "Start training". Retraining goes the
adapter's webhook path: START_TRAINING → resync of the labelled tasks from Label Studio's API →
AddExamples + Train on alps-server. Nothing here calls the training or example RPCs; the
experimenter only reads (ListExamples, Predict on the test set) to check and evaluate.

``LabelStudioFrontEnd`` starts a fresh Label Studio and ``alps-label-studio`` next to the
experiment's alps-server; ``LabelStudioAnnotator`` is one Label Studio project (the pool as
tasks) with the adapter as its ML backend. Both reuse the end-to-end test's Label Studio driver
(``tests/e2e/label_studio.py``) and process helpers (``tests/e2e/test_label_studio.py``).

Checks that make a broken pipeline fail loudly (``LabelStudioError``): the project's annotation
count grows by exactly the labels submitted; every unlabelled task has a score of the active
version and Label Studio's order is by descending score; the tasks just annotated are the top of
that order; the adapter's resync stored exactly the labelled tasks, with their labels, on
alps-server; each training run produces a new model version named ``<model>-v<N>-<heuristic>``
(uncertainty mode names the heuristic too).
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import requests

from experiments.client import AlpsClient, TrainingSettings
from experiments.data import CLASSES, IMAGE_SIDE, Digits
from alps_client import pb
from experiments.strategies import Acquisition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from label_studio import LabelStudio, free_port  # noqa: E402
from test_label_studio import LABEL_CONFIG, Process, wait_for  # noqa: E402

# The adapter's model preset for the digits: the experiment's MLP on 8x8 grayscale input (the
# ALPS project gets the server's defaults for everything else: MC-Dropout head p = 0.5, K = 20,
# default heuristic BALD, the same as the gRPC runs).
MODEL = "digits"
MODEL_PRESET = f"{MODEL}=mlp,size={IMAGE_SIDE},channels=1"
# Score = BALD of the active version: higher = more informative, so the Data Manager sorts descending.
SCORE_MODE = "uncertainty"
ORDERING = "-tasks:predictions_score"
# "Extra params" of the ML-backend connection (read by the adapter's /setup).
EXTRA_PARAMS = {"model": MODEL, "score_mode": SCORE_MODE}
# Names in LABEL_CONFIG: <Choices name="label" toName="image">.
FROM_NAME, TO_NAME = "label", "image"
TRAIN_TIMEOUT_S = 120.0  # "Start training" → new model version (a run takes seconds)
SYNC_TIMEOUT_S = 60.0  # stored predictions → the adapter PATCHes the project's model_version
RETRIEVALS = 5  # "Retrieve predictions" clicks per round at most (the adapter may defer tasks)
# Label Studio answers "Retrieve predictions" after storing every prediction, one at a time:
# 1.5 to 3 minutes for the 1,300-task pool on 2 busy cores.
RETRIEVE_TIMEOUT_S = 900.0


class LabelStudioError(RuntimeError):
    """Label Studio or the adapter did not do what the pipeline expects."""


class LabelStudioFrontEnd:
    """A fresh Label Studio and ``alps-label-studio`` serving the alps-server at ``core_address``.

    ``with LabelStudioFrontEnd(address, adapter_binary, training) as front_end: ...``
    """

    def __init__(self, core_address: str, adapter_binary: Path, training: TrainingSettings):
        self.core_address = core_address
        self.adapter_binary = Path(adapter_binary)
        self.training = training
        self.workdir = Path(tempfile.mkdtemp(prefix="alps-al-ls-"))
        self.ls: LabelStudio | None = None
        self.adapter: Process | None = None
        self.adapter_url = ""

    def __enter__(self) -> LabelStudioFrontEnd:
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def start(self) -> None:
        if not self.adapter_binary.exists():
            raise FileNotFoundError(f"need {self.adapter_binary}: build it first (cargo build)")
        started = time.monotonic()
        self.ls = LabelStudio(log_path=self.workdir / "label-studio.log")
        self.ls.start()
        port = free_port()
        self.adapter_url = f"http://127.0.0.1:{port}"
        self.adapter = Process("alps-label-studio", [str(self.adapter_binary)], {
            "LABEL_STUDIO_URL": self.ls.url,
            "LABEL_STUDIO_API_KEY": self.ls.pat,
            "ALPS_CORE_URL": f"http://{self.core_address}",
            "ALPS_LS_LISTEN": f"127.0.0.1:{port}",
            "ALPS_LS_MODELS": MODEL_PRESET,
            "ALPS_LS_DEFAULT_MODEL": MODEL,
            "ALPS_LS_SCORE_MODE": SCORE_MODE,
            "ALPS_LS_TRAIN_EVERY": "0",  # train only on "Start training"
            "ALPS_LS_TRAIN_DEBOUNCE_MS": "500",
            "ALPS_LS_TRAIN_EPOCHS": str(self.training.epochs),
            "ALPS_LS_TRAIN_LEARNING_RATE": str(self.training.learning_rate),
            "ALPS_LS_TRAIN_VALIDATION_FRACTION": str(self.training.validation_fraction),
            "RUST_LOG": "info",
        }, self.workdir / "alps-label-studio.log")  # fmt: skip

        def adapter_ready() -> bool:
            self.adapter.check_alive()
            health = requests.get(self.adapter_url + "/health", timeout=2).json()
            return health.get("status") == "UP" and health.get("model_server") == "ready"

        wait_for("alps-label-studio /health with model_server ready", adapter_ready, 60, 0.2)
        print(f"[label-studio] {self.ls.url} + adapter {self.adapter_url} ready in {time.monotonic() - started:.1f} s", flush=True)

    def log_tails(self) -> str:
        parts = [(p.name, p.log_tail()) for p in (self.adapter,) if p is not None]
        if self.ls is not None:
            parts.append(("label-studio", self.ls.log_tail()))
        return "\n".join(f"--- last lines of {name} log ---\n{tail}" for name, tail in parts)

    def __exit__(self, *exc) -> None:
        if self.adapter is not None:
            self.adapter.stop()
        if self.ls is not None:
            self.ls.stop()
            self.ls.remove_data()
        shutil.rmtree(self.workdir, ignore_errors=True)


def job_ended_inactive(job) -> bool:
    """Whether a training job has ended without a new active version (failed, or refused by the
    server's accuracy-drop guard)."""
    if job.state == pb.training_pb2.JOB_STATE_SUCCEEDED:
        return bool(job.not_activated_reason)
    return job.state in (pb.training_pb2.JOB_STATE_FAILED, pb.training_pb2.JOB_STATE_CANCELLED)


def alps_version(ls_version: str) -> str:
    """``digits-v3`` or ``digits-v3-bald`` → ``v3`` (the adapter's ``<model>-<ALPS version>``,
    with the heuristic appended in uncertainty mode); anything else is an error."""
    match = re.fullmatch(rf"{re.escape(MODEL)}-(v\d+)(-[A-Za-z0-9][A-Za-z0-9_.]*)?", ls_version)
    if not match:
        raise LabelStudioError(f"model version {ls_version!r} is not {MODEL}-v<N>[-<heuristic>]")
    return match.group(1)


class LabelStudioAnnotator:
    """One Label Studio project holding the pool as tasks, with the adapter as its ML backend.

    ``label_and_retrain`` annotates through Label Studio and trains through the adapter;
    ``take_top_tasks`` is the acquisition: the top of the Data Manager sorted by prediction score.
    ``project_id`` is the ALPS project the adapter made for it (``ls-<Label Studio project id>``).
    """

    def __init__(self, front_end: LabelStudioFrontEnd, client: AlpsClient, title: str, digits: Digits, pool: Sequence[str]):
        self.ls, self.front_end, self.client, self.digits = front_end.ls, front_end, client, digits
        self.ls_project = self.ls.create_project(title, LABEL_CONFIG)["id"]
        self.project_id = f"ls-{self.ls_project}"
        images = front_end.workdir / title
        images.mkdir()
        paths = []
        for item in pool:
            paths.append(images / f"{item}.png")
            paths[-1].write_bytes(digits.images[item])
        self.task_of = dict(zip(pool, self.ls.import_images(self.ls_project, paths)))
        self.item_of = {task: item for item, task in self.task_of.items()}
        ml = self.ls.connect_ml_backend(self.ls_project, front_end.adapter_url, title="alps", extra_params=EXTRA_PARAMS)
        if ml["state"] != "CO":
            raise LabelStudioError(f"ML backend state {ml['state']}: {ml.get('error_message')}")
        self.ml_backend = ml["id"]
        self.version = ml["model_version"]  # the adapter's current version string (digits-untrained)
        self.labelled: set[int] = set()  # task ids
        # The unlabelled tasks when the last acquisition ran, and the version whose scores ordered them.
        self.candidates: set[int] = set()
        self.scored_by = ""
        print(f"[label-studio] project {self.ls_project} ({title}): {len(pool)} tasks, ALPS project {self.project_id}", flush=True)

    # --- acquisition: Label Studio's order by prediction score ------------------------------

    def take_top_tasks(self, query_size: int) -> Acquisition:
        """Retrieves predictions of the active version for the unlabelled tasks, sorts them as
        the Data Manager does (most informative first) and returns the top ``query_size`` items
        with the ALPS version that scored them."""
        self.candidates = set(self.task_of.values()) - self.labelled
        ordered = self._scored_unlabelled_in_order()
        self.scored_by = self.version
        top = [task["id"] for task in ordered[:query_size]]
        print(
            f"[label-studio] project {self.ls_project}: {len(ordered)} unlabelled tasks scored by {self.version}, "
            f"top {len(top)} scores {ordered[0]['predictions_score']:.3f} .. {ordered[len(top) - 1]['predictions_score']:.3f}, "
            f"median {ordered[len(ordered) // 2]['predictions_score']:.3f}",
            flush=True,
        )
        return Acquisition([self.item_of[task] for task in top], alps_version(self.version))

    def _scored_unlabelled_in_order(self) -> list[dict]:
        """The unlabelled tasks in Label Studio's order by ``ORDERING``, each with a score of the
        active version (retrieving again for tasks the adapter deferred)."""
        missing = sorted(self.candidates)
        for _ in range(RETRIEVALS):
            self.ls.retrieve_predictions(self.ls_project, missing, timeout=RETRIEVE_TIMEOUT_S)
            wait_for(
                f"project {self.ls_project} model_version == {self.version!r} (the adapter's PATCH)",
                lambda: self.ls.project(self.ls_project)["model_version"] == self.version,
                SYNC_TIMEOUT_S, 0.5,
            )  # fmt: skip
            ordered = self._in_ls_order()
            missing = [task["id"] for task in ordered if task["predictions_score"] is None]
            if not missing:
                break
        else:
            raise LabelStudioError(f"{len(missing)} unlabelled tasks still without a score of {self.version} after {RETRIEVALS} retrievals")
        scores = [task["predictions_score"] for task in ordered]
        if any(a < b for a, b in zip(scores, scores[1:])):
            raise LabelStudioError(f"tasks ordered by {ORDERING} are not in descending score order")
        return ordered

    def _in_ls_order(self) -> list[dict]:
        """The current candidates as Label Studio lists them, sorted by ``ORDERING``."""
        return [task for task in self.ls.tasks(self.ls_project, ordering=ORDERING) if task["id"] in self.candidates]

    # --- annotation and training through Label Studio ------------------------------------

    def label_and_retrain(self, item_ids: Sequence[str], seed: int) -> str:
        """Annotates ``item_ids`` with their true digit through Label Studio's API, clicks "Start
        training" and waits for the adapter's new model version; returns its ALPS version.
        ``seed`` is not used: the adapter's training requests carry none."""
        tasks = [self.task_of[item] for item in item_ids]
        if self.labelled & set(tasks):
            raise LabelStudioError(f"tasks {sorted(self.labelled & set(tasks))} are already labelled")
        for task, item in zip(tasks, item_ids):
            self.ls.annotate(task, FROM_NAME, TO_NAME, CLASSES[self.digits.labels[item]])
        self.labelled |= set(tasks)
        annotations = self.ls.project(self.ls_project)["total_annotations_number"]
        if annotations != len(self.labelled):
            raise LabelStudioError(f"project {self.ls_project} counts {annotations} annotations, submitted {len(self.labelled)}")
        if self.scored_by:
            self._check_top_of_order(tasks)
        previous, last_job = self.version, self.client.latest_job(self.project_id)
        self.ls.start_training(self.ml_backend)
        self.version = wait_for(
            f"a model version after {previous!r} in the adapter's /setup",
            self._new_version(previous, last_job.job_id if last_job else ""),
            TRAIN_TIMEOUT_S, 0.5,
        )  # fmt: skip
        self._check_training_set()
        job = self.client.latest_job(self.project_id).parameters
        print(
            f"[label-studio] project {self.ls_project}: {len(tasks)} annotations ({annotations} in all), Start training "
            f"→ {self.version} (epochs {job.epochs}, lr {job.learning_rate:g}, batch {job.batch_size}, "
            f"validation fraction {job.validation_fraction:g}, seed {job.seed if job.HasField('seed') else 'none'})",
            flush=True,
        )
        return alps_version(self.version)

    def _new_version(self, previous: str, last_job: str):
        """A probe for ``wait_for``: the adapter's version once it differs from ``previous``;
        raises at once if the training job started after ``last_job`` ended without activating."""

        def probe() -> str | None:
            self.front_end.adapter.check_alive()
            backends = self.ls.ml_backends(self.ls_project)  # LS calls the adapter's /setup
            version = backends[0]["model_version"] if backends else None
            if version and version != previous:
                return version
            job = self.client.latest_job(self.project_id)
            if job is not None and job.job_id != last_job and job_ended_inactive(job):
                raise LabelStudioError(
                    f"{self.project_id}: training job {job.job_id} ({job.model_version or 'no version'}) ended "
                    f"{pb.training_pb2.JobState.Name(job.state)} without becoming active: {job.error or job.not_activated_reason}"
                )
            return None

        return probe

    def _check_top_of_order(self, annotated: list[int]) -> None:
        """The tasks just annotated must be the top of Label Studio's order of the candidates
        (still by the scores of ``scored_by``), and must now show their annotation."""
        if self.ls.project(self.ls_project)["model_version"] != self.scored_by:
            raise LabelStudioError(f"project model_version moved from {self.scored_by} before training")
        ordered = self._in_ls_order()
        score = {task["id"]: task["predictions_score"] for task in ordered}
        rest = [score[task] for task in score if task not in annotated]
        if rest and min(score[task] for task in annotated) < max(rest):
            top = [task["id"] for task in ordered[: len(annotated)]]
            raise LabelStudioError(f"annotated tasks {sorted(annotated)} are not the top of Label Studio's order {top}")
        unannotated = [task["id"] for task in ordered if task["id"] in annotated and task["total_annotations"] != 1]
        if unannotated:
            raise LabelStudioError(f"tasks {unannotated} do not show exactly one annotation")

    def _check_training_set(self) -> None:
        """What the adapter resynced to alps-server: exactly the labelled tasks, with true labels."""
        stored = self.client.list_examples(self.project_id)
        expected = {str(task): CLASSES[self.digits.labels[self.item_of[task]]] for task in self.labelled}
        if stored != expected:
            wrong = sorted(set(stored.items()) ^ set(expected.items()))[:10]
            raise LabelStudioError(
                f"{self.project_id} holds {len(stored)} examples, expected the {len(expected)} labelled tasks; differences: {wrong}"
            )
