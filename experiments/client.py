"""ALPS through its public gRPC API only, as any outside tool would use it, plus the process
wrapper that starts a private ``alps-server`` for one run of the experiment.

``AlpsServer`` starts the binary on free localhost ports with a temporary data directory and a
temporary plugin directory holding a copy of the built-in heuristics plugin, and stops it with
SIGTERM. ``AlpsClient`` wraps the RPCs the experiment needs: CreateProject (with or without the
server's default acquisition schedule), AddExamples, Train +
WatchTrainingJob, ActivateModelVersion, Rank (the pool streamed in chunks) and Predict, plus the
reads that check the Label Studio route (ListExamples, ListTrainingJobs).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from alps_client import Client, pb

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_FILE = "libalps_heuristics_builtin.so"
# Pool and test images per request message: small enough to stay far below the server's
# admission bound (--max-in-flight-samples, 2048) with a few projects running at once.
CHUNK = 256
# RESOURCE_EXHAUSTED (admission bound) is retried after this many seconds, doubling.
RETRY_BACKOFF_S = 0.05
RETRIES = 8


def default_server_binary() -> Path:
    """The release build if there is one, else the debug build."""
    release = ROOT / "target" / "release" / "alps-server"
    return release if release.exists() else ROOT / "target" / "debug" / "alps-server"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AlpsServer:
    """A private alps-server process: ``with AlpsServer(binary) as server: server.address``."""

    def __init__(self, binary: Path, start_timeout_s: float = 60.0):
        self.binary = Path(binary)
        self.start_timeout_s = start_timeout_s
        self.address = ""
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.exit_code: int | None = None

    def __enter__(self) -> AlpsServer:
        plugin = self.binary.parent / PLUGIN_FILE
        if not self.binary.exists() or not plugin.exists():
            raise FileNotFoundError(f"need {self.binary} and {plugin}: build them first (make release)")
        self.workdir = Path(tempfile.mkdtemp(prefix="alps-experiment-"))
        plugins = self.workdir / "plugins"
        plugins.mkdir()
        shutil.copy2(plugin, plugins / PLUGIN_FILE)
        port, metrics_port = _free_port(), _free_port()
        self.address = f"127.0.0.1:{port}"
        self.log_path = self.workdir / "alps-server.log"
        command = [
            str(self.binary),
            "--data-dir", str(self.workdir / "data"),
            "--listen", self.address,
            "--metrics-listen", f"127.0.0.1:{metrics_port}",
            "--http-listen", f"127.0.0.1:{_free_port()}",
            "--plugin-dir", str(plugins),
        ]  # fmt: skip
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = pb.heuristics_pb2_grpc.HeuristicServiceStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"alps-server exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    stub.ListHeuristics(pb.heuristics_pb2.ListHeuristicsRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"alps-server not ready after {self.start_timeout_s} s:\n{self.log_tail()}")
                    time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> int | None:
        """SIGTERM, then wait for the drain (the server exits 0 after it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self.exit_code = self.process.returncode
        return self.exit_code

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class TrainingSettings:
    """TrainRequest.parameters as the experiment sets them (see active_learning.py)."""

    full: bool = True
    epochs: int = 50
    learning_rate: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 1e-4
    validation_fraction: float = 0.0


class TrainingFailed(RuntimeError):
    """A training job ended without a usable model version."""


def _retry(call, *args, **kwargs):
    """Calls a unary RPC, retrying RESOURCE_EXHAUSTED (the server's admission bound) with backoff."""
    delay = RETRY_BACKOFF_S
    for attempt in range(RETRIES + 1):
        try:
            return call(*args, **kwargs)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or attempt == RETRIES:
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


class AlpsClient:
    """The RPCs of one experiment run against one server (thread-safe: runs share one client)."""

    def __init__(self, address: str, tls_ca: Path | None = None, token: str | None = None):
        """``address`` is ``host:port``. ``tls_ca``: PEM file of the CA that signed the server's
        certificate (the server runs with ``--tls-cert``); ``token``: a bearer token from
        ``alps-server token create``, sent as ``authorization: Bearer <token>`` with every call."""
        # Workaround for a server race (reported with issue #7): two AddExamples calls in flight
        # that carry the same image bytes (here: one digit labelled in two projects) can fail
        # with INTERNAL "blob store ...: No such file or directory", because both write the
        # same temporary file name. Uploads are therefore serialised across threads.
        self._upload_lock = threading.Lock()
        self._client = Client(address, tls_ca=tls_ca, token=token)
        self.projects = self._client.projects
        self.examples = self._client.examples
        self.training = self._client.training
        self.versions = self._client.versions
        self.inference = self._client.inference
        self.heuristics = self._client.heuristics

    def close(self) -> None:
        self._client.close()

    def heuristic_names(self) -> set[str]:
        response = self.heuristics.ListHeuristics(pb.heuristics_pb2.ListHeuristicsRequest())
        return {h.name for h in response.heuristics}

    def create_project(
        self,
        project_id: str,
        classes: Sequence[str],
        side: int,
        mc_iterations: int,
        head_dropout: float,
        schedule: bool = True,
    ) -> str:
        """An MLP over ``side`` x ``side`` grayscale inputs with an MC-Dropout head.

        ``schedule``: True leaves ``acquisition_schedule`` unset (the server's default schedule);
        False sends an explicit ``AcquisitionSchedule`` with an empty ``cold_start`` (no schedule:
        Rank without a heuristic uses the project's default heuristic). Returns the stored
        schedule's cold-start heuristic name ("" = none)."""
        project = pb.projects_pb2.Project(
            id=project_id,
            classes=list(classes),
            model=pb.projects_pb2.ModelSpec(architecture=pb.projects_pb2.ARCHITECTURE_MLP, head_dropout=head_dropout),
            preprocessing=pb.projects_pb2.Preprocessing(width=side, height=side, channels=1),
            mc_iterations=mc_iterations,
        )
        if not schedule:
            project.acquisition_schedule.SetInParent()  # present, with an empty cold_start
        response = self.projects.CreateProject(pb.projects_pb2.CreateProjectRequest(project=project))
        return response.project.acquisition_schedule.cold_start.name

    def active_version(self, project_id: str) -> str:
        response = self.projects.GetProject(pb.projects_pb2.GetProjectRequest(project_id=project_id))
        return response.project.active_model_version

    def add_examples(self, project_id: str, examples: Sequence[tuple[str, bytes, str]]) -> int:
        """Streams (external id, PNG bytes, class name) triples; returns how many were new."""

        def messages() -> Iterator:
            for start in range(0, len(examples), CHUNK):
                yield pb.examples_pb2.AddExamplesRequest(
                    project_id=project_id,
                    examples=[
                        pb.examples_pb2.LabelledExample(
                            external_id=eid, sample=pb.common_pb2.Sample(image=image), class_name=name
                        )
                        for eid, image, name in examples[start : start + CHUNK]
                    ],
                )

        with self._upload_lock:
            return self.examples.AddExamples(messages()).inserted

    def count_examples(self, project_id: str) -> int:
        return self.examples.CountExamples(pb.examples_pb2.CountExamplesRequest(project_id=project_id)).total

    def list_examples(self, project_id: str) -> dict[str, str]:
        """External id → class name of every stored labelled example."""
        examples, token = {}, ""
        while True:
            request = pb.examples_pb2.ListExamplesRequest(project_id=project_id, page_size=1000, page_token=token)
            page = self.examples.ListExamples(request)
            examples.update({e.external_id: e.class_name for e in page.examples})
            if not page.next_page_token:
                return examples
            token = page.next_page_token

    def latest_job(self, project_id: str):
        """The project's newest training job, or None (also for a project that does not exist yet)."""
        try:
            request = pb.training_pb2.ListTrainingJobsRequest(project_id=project_id, limit=1)
            jobs = self.training.ListTrainingJobs(request).jobs
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return jobs[0] if jobs else None

    def train(self, project_id: str, settings: TrainingSettings, seed: int) -> str:
        """Trains a new model version, waits for it and makes sure it is the active one.

        Returns the new version. The server auto-activates a finished version unless its
        accuracy-drop guard refuses it; that refusal (or any other way the active version is
        not the new one) is resolved by activating the new version explicitly, so each round
        evaluates the model trained on exactly its labelled set.
        """
        parameters = pb.training_pb2.TrainingParameters(
            mode=pb.training_pb2.TRAINING_MODE_FULL if settings.full else pb.training_pb2.TRAINING_MODE_HEAD_ONLY,
            optimizer=pb.training_pb2.OPTIMIZER_ADAM,
            learning_rate=settings.learning_rate,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            weight_decay=settings.weight_decay,
            validation_fraction=settings.validation_fraction,
            seed=seed,
        )
        request = pb.training_pb2.TrainRequest(project_id=project_id, parameters=parameters, activate=True)
        response = self.training.Train(request)
        if response.coalesced:
            raise TrainingFailed(f"{project_id}: Train was coalesced into job {response.job.job_id}")
        job = self.wait_for_job(response.job.job_id)
        if job.state != pb.training_pb2.JOB_STATE_SUCCEEDED or not job.model_version:
            state = pb.training_pb2.JobState.Name(job.state)
            raise TrainingFailed(f"{project_id}: job {job.job_id} ended {state}: {job.error}")
        if self.active_version(project_id) != job.model_version:
            self.versions.ActivateModelVersion(
                pb.models_pb2.ActivateModelVersionRequest(project_id=project_id, version=job.model_version)
            )
        return job.model_version

    def wait_for_job(self, job_id: str):
        """Follows WatchTrainingJob to the job's terminal state (GetTrainingJob if it has ended)."""
        terminal = {
            pb.training_pb2.JOB_STATE_SUCCEEDED,
            pb.training_pb2.JOB_STATE_FAILED,
            pb.training_pb2.JOB_STATE_CANCELLED,
        }
        last = None
        for last in self.training.WatchTrainingJob(pb.training_pb2.WatchTrainingJobRequest(job_id=job_id)):
            if last.state in terminal:
                return last
        return self.training.GetTrainingJob(pb.training_pb2.GetTrainingJobRequest(job_id=job_id)).job

    def rank(
        self,
        project_id: str,
        pool: Sequence[tuple[str, bytes]],
        heuristic: str | None,
        query_size: int,
        mc_iterations: int,
        seed: int,
    ) -> tuple[list[str], str, str]:
        """Ranks the unlabelled pool ((id, PNG bytes) pairs) with ``heuristic`` (None: name no
        heuristic, so the project's acquisition schedule or default heuristic decides); returns
        the ``query_size`` most informative ids, the model version that scored them and the name
        of the heuristic that ranked (``RankResponse.heuristic``)."""

        def messages() -> Iterator:
            for start in range(0, len(pool), CHUNK):
                samples = [pb.common_pb2.Sample(id=i, image=image) for i, image in pool[start : start + CHUNK]]
                if start == 0:
                    yield pb.inference_pb2.RankRequest(
                        project_id=project_id,
                        query_size=query_size,
                        mc_iterations=mc_iterations,
                        heuristic=pb.common_pb2.HeuristicRef(name=heuristic) if heuristic else None,
                        samples=samples,
                        seed=seed,
                    )
                else:
                    yield pb.inference_pb2.RankRequest(samples=samples)

        delay = RETRY_BACKOFF_S
        for attempt in range(RETRIES + 1):
            try:
                response = self.inference.Rank(messages())
                break
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or attempt == RETRIES:
                    raise
                time.sleep(delay)
                delay *= 2
        if response.failed:
            raise RuntimeError(f"{project_id}: Rank could not score {len(response.failed)} pool items")
        return [s.id for s in response.selected], response.model_version, response.heuristic.name

    def predict_classes(
        self, project_id: str, images: Sequence[bytes], mc_iterations: int, seed: int
    ) -> tuple[np.ndarray, set[str]]:
        """Predicted class indices (argmax of the MC-Dropout mean) and the model versions used."""
        predicted, versions = [], set()
        for start in range(0, len(images), CHUNK):
            request = pb.inference_pb2.PredictRequest(
                project_id=project_id,
                samples=[pb.common_pb2.Sample(id=str(start + i), image=b) for i, b in enumerate(images[start : start + CHUNK])],
                mc_iterations=mc_iterations,
                seed=seed,
            )
            response = _retry(self.inference.Predict, request)
            versions.add(response.model_version)
            for result in response.results:
                if result.WhichOneof("outcome") != "prediction":
                    raise RuntimeError(f"{project_id}: Predict failed on a test image: {result.error.message}")
                predicted.append(result.prediction.class_index)
        return np.asarray(predicted), versions
