"""The typed wrapper over the alps.v1 stubs (see the package docstring)."""

from __future__ import annotations

import hashlib
import logging
import types
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import grpc
from tqdm import tqdm

from alps.v1 import (
    common_pb2,
    common_pb2_grpc,
    examples_pb2,
    examples_pb2_grpc,
    heuristics_pb2,
    heuristics_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

#: Every generated module, by its file name: ``pb.projects_pb2.Project(...)``.
pb = types.SimpleNamespace(
    common_pb2=common_pb2,
    common_pb2_grpc=common_pb2_grpc,
    examples_pb2=examples_pb2,
    examples_pb2_grpc=examples_pb2_grpc,
    heuristics_pb2=heuristics_pb2,
    heuristics_pb2_grpc=heuristics_pb2_grpc,
    inference_pb2=inference_pb2,
    inference_pb2_grpc=inference_pb2_grpc,
    models_pb2=models_pb2,
    models_pb2_grpc=models_pb2_grpc,
    projects_pb2=projects_pb2,
    projects_pb2_grpc=projects_pb2_grpc,
    training_pb2=training_pb2,
    training_pb2_grpc=training_pb2_grpc,
)

ARCHITECTURES = {
    "mlp": projects_pb2.ARCHITECTURE_MLP,
    "small_cnn": projects_pb2.ARCHITECTURE_SMALL_CNN,
    "vgg16": projects_pb2.ARCHITECTURE_VGG16,
    "resnet18": projects_pb2.ARCHITECTURE_RESNET18,
}
#: Files taken as images when walking a folder: the formats the server decodes.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
#: Samples per streamed message: far below the server's admission bound and message size.
CHUNK = 64
_TERMINAL = {training_pb2.JOB_STATE_SUCCEEDED, training_pb2.JOB_STATE_FAILED, training_pb2.JOB_STATE_CANCELLED}


class TrainingFailed(RuntimeError):
    """A training job ended FAILED or CANCELLED; ``job`` is its last record."""

    def __init__(self, job: training_pb2.TrainingJob):
        super().__init__(f"training job {job.job_id} {training_pb2.JobState.Name(job.state)}: {job.error}")
        self.job = job


def _credentials(tls_ca, token, client_cert, client_key) -> grpc.ChannelCredentials | None:
    """TLS (optionally mutual) and/or a bearer token. gRPC sends call credentials only over a
    secure channel; on a plaintext loopback server ``local_channel_credentials`` counts as one."""
    if tls_ca is None and token is None:
        return None
    if tls_ca is not None:
        identity = {}
        if client_cert is not None:
            identity = {"certificate_chain": Path(client_cert).read_bytes(), "private_key": Path(client_key).read_bytes()}
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes(), **identity)
    else:
        credentials = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    if token is not None:
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    return credentials


def images_under(folder: str | Path) -> list[Path]:
    """Every image file under ``folder``, sorted, so rankings and uploads are reproducible."""
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def sample_id(relative: Path) -> str:
    """The server-side id of the file at ``relative`` (a path under a folder): ids are 1 to 256
    characters from ``[A-Za-z0-9_.-]``, so the path's parts are joined with ``.``, other
    characters become ``_``, and a hash of the exact path keeps ids of similar names apart."""
    readable = ".".join("".join(c if c in _ID_CHARS else "_" for c in part) for part in relative.parts)
    digest = hashlib.sha256(relative.as_posix().encode()).hexdigest()[:12]
    return f"f{readable[:200]}-{digest}"


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Client:
    """One connection to an alps-server (thread-safe, like the gRPC channel under it).

    ``address`` is ``host:port`` of the gRPC port. ``tls_ca``: PEM file of the CA that signed the
    server's certificate (server run with ``--tls-cert``); ``client_cert``/``client_key``: PEM
    files for mutual TLS; ``token``: a bearer token from ``alps-server token create``.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        tls_ca: str | Path | None = None,
        token: str | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        max_message_mib: int = 64,
    ):
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key go together")
        if client_cert is not None and tls_ca is None:
            raise ValueError("a client certificate needs tls_ca (mutual TLS)")
        size = max_message_mib << 20
        options = [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)]
        credentials = _credentials(tls_ca, token, client_cert, client_key)
        if credentials is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            self.channel = grpc.secure_channel(address, credentials, options=options)
        self.projects = projects_pb2_grpc.ProjectServiceStub(self.channel)
        self.examples = examples_pb2_grpc.ExampleServiceStub(self.channel)
        self.training = training_pb2_grpc.TrainingServiceStub(self.channel)
        self.versions = models_pb2_grpc.ModelVersionServiceStub(self.channel)
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.heuristics = heuristics_pb2_grpc.HeuristicServiceStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def create_project(
        self,
        project_id: str,
        classes: Sequence[str],
        *,
        width: int,
        height: int,
        channels: int = 3,
        architecture: str = "small_cnn",
        pretrained: bool = False,
        mc_iterations: int = 0,
        display_name: str = "",
    ) -> projects_pb2.Project:
        """Creates (or replaces the spec of) ``project_id``: an image classifier over ``classes``
        with inputs resized to ``width`` x ``height`` x ``channels``. ``architecture`` is one of
        mlp, small_cnn, vgg16, resnet18; ``pretrained`` starts vgg16/resnet18 from ImageNet
        weights; ``mc_iterations`` 0 keeps the server's default K."""
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {architecture!r}: one of {', '.join(ARCHITECTURES)}")
        model = projects_pb2.ModelSpec(
            architecture=ARCHITECTURES[architecture],
            pretrained=projects_pb2.PRETRAINED_WEIGHTS_IMAGENET if pretrained else 0,
        )
        project = projects_pb2.Project(
            id=project_id,
            display_name=display_name,
            classes=list(classes),
            model=model,
            preprocessing=projects_pb2.Preprocessing(width=width, height=height, channels=channels),
            mc_iterations=mc_iterations,
        )
        return self.projects.CreateProject(projects_pb2.CreateProjectRequest(project=project)).project

    def add_examples(self, project_id: str, examples: Iterable[tuple[str, bytes, str]]) -> examples_pb2.AddExamplesResponse:
        """Streams ``(external id, encoded image, class name)`` labelled examples, ``CHUNK`` per
        message as the iterable yields them (a generator keeps only one chunk in memory); the
        answer counts the inserted, updated and unchanged ones (an external id is stored once)."""

        def messages() -> Iterator[examples_pb2.AddExamplesRequest]:
            chunk: list[examples_pb2.LabelledExample] = []
            for eid, image, name in examples:
                sample = common_pb2.Sample(image=image)
                chunk.append(examples_pb2.LabelledExample(external_id=eid, sample=sample, class_name=name))
                if len(chunk) == CHUNK:
                    yield examples_pb2.AddExamplesRequest(project_id=project_id, examples=chunk)
                    chunk = []
            if chunk:
                yield examples_pb2.AddExamplesRequest(project_id=project_id, examples=chunk)

        return self.examples.AddExamples(messages())

    def add_folder(self, project_id: str, folder: str | Path) -> examples_pb2.AddExamplesResponse:
        """Adds every image under ``folder/<class name>/`` as a labelled example of that class;
        its external id comes from its path relative to ``folder`` (see ``sample_id``), so
        adding a folder again changes nothing."""
        root = Path(folder)
        files = images_under(root)
        if not files:
            raise FileNotFoundError(f"no images under {root}/<class>/")
        if any(len(p.relative_to(root).parts) < 2 for p in files):
            raise ValueError(f"images must sit in {root}/<class name>/, not directly in {root}")
        # A generator: each image is read when its chunk is sent, not all up front.
        examples = ((sample_id(p.relative_to(root)), p.read_bytes(), p.relative_to(root).parts[0]) for p in files)
        return self.add_examples(project_id, examples)

    def train(
        self,
        project_id: str,
        *,
        epochs: int = 0,
        learning_rate: float = 0.0,
        seed: int | None = None,
        full: bool = False,
        activate: bool | None = None,
        progress: bool = True,
    ) -> training_pb2.TrainingJob:
        """Starts training ``project_id`` on its labelled examples and watches the job to its
        end with a progress bar (``progress=False``: silent). ``epochs`` and ``learning_rate``
        0 = the server's defaults;
        ``full`` fine-tunes the backbone too; ``activate`` None follows the server's policy.
        Returns the final job record; raises ``TrainingFailed`` unless it succeeded, and
        ``RuntimeError`` if the watch ended before the job did (then it still runs on the
        server: ``training.GetTrainingJob`` reads it later)."""
        parameters = training_pb2.TrainingParameters(
            epochs=epochs,
            learning_rate=learning_rate,
            mode=training_pb2.TRAINING_MODE_FULL if full else training_pb2.TRAINING_MODE_HEAD_ONLY,
        )
        if seed is not None:
            parameters.seed = seed
        request = training_pb2.TrainRequest(project_id=project_id, parameters=parameters)
        if activate is not None:
            request.activate = activate
        job = self.training.Train(request).job
        # Whole percents: the job reports fractions, which tqdm would print as raw floats.
        bar_format = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"
        with tqdm(
            total=100.0, desc=f"training {project_id}", bar_format=bar_format, disable=not progress
        ) as bar:
            for job in self.training.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(job_id=job.job_id)):
                bar.set_postfix(epoch=job.epoch, loss=f"{job.loss:.4f}", refresh=False)
                bar.update(job.percent - bar.n)
                if job.state in _TERMINAL:
                    break
        if job.state not in _TERMINAL:
            raise RuntimeError(f"the watch of training job {job.job_id} ended while it was still running")
        if job.state != training_pb2.JOB_STATE_SUCCEEDED:
            raise TrainingFailed(job)
        return job

    def rank_folder(
        self,
        project_id: str,
        folder: str | Path,
        *,
        query_size: int = 10,
        heuristic: str = "",
        mc_iterations: int = 0,
        seed: int | None = None,
    ) -> list[tuple[Path, float]]:
        """Ranks every image under ``folder`` (the unlabelled pool) and returns the
        ``query_size`` most informative as ``(path, score)``, most informative first.
        ``heuristic`` "" = the project's choice: its acquisition schedule's cold-start heuristic
        (``typiclust`` for a new project, until it has max(2 × classes, 20) labels), then its
        default acquisition function (e.g. ``bald``); the heuristic that ranked is logged at INFO.
        Images the server cannot read are left out of the ranking with a ``UserWarning`` naming
        them."""
        root = Path(folder)
        files = {sample_id(p.relative_to(root)): p for p in images_under(root)}
        if not files:
            raise FileNotFoundError(f"no images under {root}")

        def messages() -> Iterator[inference_pb2.RankRequest]:
            for index, chunk in enumerate(_chunks(list(files.items()), CHUNK)):
                samples = [common_pb2.Sample(id=sid, image=p.read_bytes()) for sid, p in chunk]
                if index > 0:
                    yield inference_pb2.RankRequest(samples=samples)
                    continue
                first = inference_pb2.RankRequest(
                    project_id=project_id,
                    query_size=query_size,
                    mc_iterations=mc_iterations,
                    heuristic=common_pb2.HeuristicRef(name=heuristic),
                    samples=samples,
                )
                if seed is not None:
                    first.seed = seed
                yield first

        response = self.inference.Rank(messages())
        if response.failed:
            unread = "; ".join(f"{files[r.id]}: {r.error.message}" for r in response.failed[:5])
            warnings.warn(f"{len(response.failed)} images could not be scored (first ones: {unread})", stacklevel=2)
        ranked_with = response.heuristic
        logging.getLogger(__name__).info("%s ranked with %s@%s", project_id, ranked_with.name, ranked_with.version)
        return [(files[s.id], s.score) for s in response.selected]

    def count_examples(self, project_id: str) -> examples_pb2.CountExamplesResponse:
        """How many labelled examples ``project_id`` holds: ``total`` and ``per_class`` (every class,
        0 included). Raises ``grpc.RpcError`` NOT_FOUND for an unknown project."""
        return self.examples.CountExamples(examples_pb2.CountExamplesRequest(project_id=project_id))

    def list_examples(self, project_id: str, page_size: int = 1000) -> Iterator[examples_pb2.StoredExample]:
        """Every labelled example of ``project_id`` (external id, class, sample sha256 and size),
        ordered by external id, fetched ``page_size`` (1 to 1000) at a time. Raises
        ``grpc.RpcError`` NOT_FOUND for an unknown project."""
        token = ""
        while True:
            request = examples_pb2.ListExamplesRequest(project_id=project_id, page_size=page_size, page_token=token)
            page = self.examples.ListExamples(request)
            yield from page.examples
            if not page.next_page_token:
                return
            token = page.next_page_token

    def list_versions(self, project_id: str) -> list[models_pb2.ModelVersion]:
        """The model versions of ``project_id``, newest first; ``active`` marks the served one and
        ``for_other_spec`` those made before the project's spec changed (they cannot be
        activated). Raises ``grpc.RpcError`` NOT_FOUND for an unknown project."""
        request = models_pb2.ListModelVersionsRequest(project_id=project_id)
        return list(self.versions.ListModelVersions(request).versions)

    def activate(self, project_id: str, version: str) -> models_pb2.ModelVersion:
        """Makes ``version`` (e.g. ``"v2"``) the one ``project_id`` serves, also to roll back;
        returns it. The server loads it before it swaps, so the old one serves meanwhile. Raises
        ``grpc.RpcError`` NOT_FOUND for an unknown project or version, FAILED_PRECONDITION for a
        version made for another spec of the project or whose files fail their checksums."""
        request = models_pb2.ActivateModelVersionRequest(project_id=project_id, version=version)
        return self.versions.ActivateModelVersion(request).version

    def predict(
        self, project_id: str, images: Sequence[bytes], *, mc_iterations: int = 0, seed: int | None = None
    ) -> inference_pb2.PredictResponse:
        """Predicts encoded ``images`` on the active model: per image the class, the MC mean
        probabilities and the acquisition score (or a per-image error)."""
        request = inference_pb2.PredictRequest(
            project_id=project_id,
            samples=[common_pb2.Sample(id=str(i), image=image) for i, image in enumerate(images)],
            mc_iterations=mc_iterations,
        )
        if seed is not None:
            request.seed = seed
        return self.inference.Predict(request)
