"""End-to-end test: Label Studio 1.23 ⇄ alps-label-studio ⇄ alps-server, on real handwritten digits.

    scripts/bootstrap-label-studio.sh                      # once: Label Studio in .venv-ls
    .venv/bin/python tests/e2e/test_label_studio.py [--bin-dir target/debug] [--images 200] [--annotate 50]

A plain script: exit code 0 = pass. It starts alps-server, a fresh Label Studio and the adapter on
free ports, uploads digit images, connects the adapter as the project's ML backend, waits for
the background predictions, labels some tasks through Label Studio's API, starts training, waits
for the new model version and checks the new predictions (version bookkeeping, score ordering,
accuracy). Then it switches the connection's heuristic to batch_bald (the selected batch must
head Label Studio's order) and to entropy (new versions, re-scored with no click, never two
predictions of one version on a task), and restarts the adapter (the first /setup must answer the
trained version, and nothing is rewritten).
Everything is torn down at the end, also on failure, when the log tails are printed.
"""

import argparse
import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_studio import LabelStudio, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from write_digits import write_digits  # noqa: E402

# --- Settings ------------------------------------------------------------------------------
# Extra environment of alps-label-studio (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, ALPS_CORE_URL
# and ALPS_LS_LISTEN are set by the test).
ADAPTER_ENV = {
    "ALPS_LS_DEFAULT_MODEL": "small-cnn",
    "ALPS_LS_SCORE_MODE": "confidence",  # score = probability of the predicted label: ascending = least confident first
    "ALPS_LS_TRAIN_EVERY": "0",  # train only when Label Studio asks (POST /api/ml/{id}/train)
    "ALPS_LS_MIN_TRAIN_LABELS": "10",
    "ALPS_LS_TRAIN_DEBOUNCE_MS": "1000",
    "RUST_LOG": "info",
}
# "Extra params" of the ML-backend connection (POST /api/ml), read by the adapter's /setup.
EXTRA_PARAMS = {"model": "small-cnn", "score_mode": "confidence"}
# Extra environment of alps-server (--listen, --metrics-listen and --data-dir are set by the test).
SERVER_ENV = {"RUST_LOG": "info"}
# Extra environment of Label Studio (on top of label_studio.LabelStudio's).
LS_ENV = {}
MIN_ACCURACY = 0.5  # on the tasks not annotated, after one training run (chance: 0.1)
TRAIN_TIMEOUT = 300.0  # seconds from "Start training" to a new model version
SYNC_TIMEOUT = 60.0  # seconds for the adapter to PATCH the project's model_version
RESCORE_TIMEOUT = 180.0  # seconds from a heuristic change until the project's model_version follows
QUERY_SIZE = 5  # extra_params.query_size of the batch_bald check
# -------------------------------------------------------------------------------------------

LABELS = [str(d) for d in range(10)]
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
    + "".join(f'<Choice value="{label}"/>' for label in LABELS)
    + "</Choices></View>"
)

T0 = time.monotonic()


@contextlib.contextmanager
def step(name: str):
    """Prints the step's name, then its duration."""
    print(f"[{time.monotonic() - T0:7.1f} s] {name} ...", flush=True)
    started = time.monotonic()
    yield
    print(f"[{time.monotonic() - T0:7.1f} s]   done in {time.monotonic() - started:.1f} s", flush=True)


def wait_for(what: str, probe, timeout: float, interval: float = 1.0):
    """Calls `probe` until it returns something truthy; returns that, or fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = probe()
        except requests.RequestException:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Process:
    """A child process with its output in a log file; stopped by its PID."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: Path):
        self.name, self.log_path = name, log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)

    def check_alive(self):
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.popen.returncode}; log: {self.log_path}")

    def stop(self, timeout: float = 30.0):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "debug",
                        help="directory with alps-server and alps-label-studio (default: target/debug)")
    parser.add_argument("--images", type=int, default=200, help="digit images to upload (default 200)")
    parser.add_argument("--annotate", type=int, default=50, help="tasks to label before training (default 50)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = parser.parse_args()
    for binary in ("alps-server", "alps-label-studio"):
        if not (args.bin_dir / binary).exists():
            print(f"test_label_studio: {args.bin_dir / binary} not found (cargo build first)", file=sys.stderr)
            return 2

    tmp = Path(tempfile.mkdtemp(prefix="alps-e2e-"))
    processes: list = []  # Process and LabelStudio objects, for teardown and log tails
    try:
        run(args, tmp, processes)
        print(f"[{time.monotonic() - T0:7.1f} s] PASS")
        return 0
    except BaseException as error:
        report_failure(error, processes)
        return 1
    finally:
        with step("teardown"):
            tear_down(processes, tmp, args.keep)


def report_failure(error: BaseException, processes: list) -> None:
    """Prints the failure and the last log lines of every process started (stderr)."""
    print(f"\nFAIL: {type(error).__name__}: {error}", file=sys.stderr)
    for process in processes:
        print(f"\n--- last lines of {process.log_path} ---\n{process.log_tail()}", file=sys.stderr)


def tear_down(processes: list, tmp: Path, keep: bool) -> None:
    """Stops the processes (last started first), removes Label Studio's data, and `tmp` unless `keep`."""
    for process in reversed(processes):
        process.stop()
    for process in processes:
        if isinstance(process, LabelStudio):
            process.remove_data()
    if keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path, processes: list) -> None:
    with step(f"write {args.images} digit images"):
        rows = write_digits(tmp / "digits", limit=args.images)
        paths = [tmp / "digits" / name for _, name, _ in rows]
        true_label = {name: str(label) for _, name, label in rows}

    with step("start alps-server"):
        grpc_port, metrics_port = free_port(), free_port()
        server = Process("alps-server", [
            str(args.bin_dir / "alps-server"), "--listen", f"127.0.0.1:{grpc_port}",
            "--metrics-listen", f"127.0.0.1:{metrics_port}", "--http-listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp / "alps-data"),
        ], SERVER_ENV, tmp / "alps-server.log")
        processes.append(server)

        def server_up():
            server.check_alive()
            return requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).status_code == 200

        wait_for("alps-server /metrics", server_up, 60, 0.2)

    with step("start Label Studio, log in, create a personal access token"):
        ls = LabelStudio(log_path=tmp / "label-studio.log", env=LS_ENV)
        processes.append(ls)
        healthy_after = ls.start()
        print(f"    Label Studio {ls.url} healthy after {healthy_after:.1f} s")

    with step("start alps-label-studio"):
        adapter_port = free_port()
        adapter_url = f"http://127.0.0.1:{adapter_port}"
        adapter = start_adapter(args, tmp, ls, grpc_port, adapter_port)
        processes.append(adapter)

    with step("create project, upload images"):
        pid = ls.create_project("alps-e2e", LABEL_CONFIG)["id"]
        task_ids = ls.import_images(pid, paths)
        task_label = {task_id: true_label[path.name] for task_id, path in zip(task_ids, paths)}
        tasks = ls.tasks(pid)
        assert len(tasks) == len(paths), f"{len(tasks)} tasks for {len(paths)} uploaded images"
        image = tasks[0]["data"]["image"]
        assert image.startswith(f"/data/upload/{pid}/"), f"unexpected task data.image {image!r}"
        media = ls.api.get(image)  # what the adapter must do: Bearer <access token from the PAT>
        assert media.status_code == 200 and media.content.startswith(b"\x89PNG"), \
            f"GET {image} with Bearer: {media.status_code} {media.headers.get('Content-Type')}"

    with step("connect the adapter as ML backend"):
        ml = ls.connect_ml_backend(pid, adapter_url, title="alps", extra_params=EXTRA_PARAMS)
        assert ml["state"] == "CO", f"ML backend state {ml['state']}: {ml.get('error_message')}"
        version = ml["model_version"]
        assert version, "the adapter's /setup gave no model_version"
        hooks = [hook["url"] for hook in ls.webhooks(pid)]
        assert adapter_url + "/webhook" in hooks, f"no webhook to the adapter among {hooks}"
        print(f"    ML backend {ml['id']}, model_version {version!r}")

    with step(f"background scoring: every task gets a prediction of {version!r} with no click"):
        predictions = check_predictions(wait_for_pool(ls, pid, version, set(task_ids)), version, len(tasks))
        before, _ = accuracy(predictions, task_label, set(task_ids))
        print(f"    accuracy before training {before:.3f}")
        ls.retrieve_predictions(pid)  # nothing left to predict: must not store a duplicate set
        again = ls.predictions(pid)
        assert len(again) == len(tasks), \
            f"{len(again)} predictions for {len(tasks)} tasks after a second retrieval: /setup and prediction versions differ?"

    with step(f"wait for the adapter to set the project's model_version to {version!r}"):
        wait_for(f"project.model_version == {version!r}", lambda: ls.project(pid)["model_version"] == version, SYNC_TIMEOUT)
        check_ordering(ls, pid)

    with step(f"annotate {args.annotate} tasks"):
        # The first ones uploaded: sklearn's digits cycle through the classes, so about N/10 per
        # class. (The least confident tasks of the untrained model are heavily skewed by class.)
        labelled = task_ids[:args.annotate]
        # The first one gets a wrong label first, then the right one (ANNOTATION_UPDATED) ...
        first = ls.annotate(labelled[0], "label", "image", wrong(task_label[labelled[0]]))
        ls.update_annotation(first, "label", "image", task_label[labelled[0]])
        for task_id in labelled[1:]:
            ls.annotate(task_id, "label", "image", task_label[task_id])
        # ... and one unlabelled task gets a wrong annotation that is deleted again (ANNOTATIONS_DELETED).
        ls.delete_annotation(ls.annotate(task_ids[-1], "label", "image", wrong(task_label[task_ids[-1]])))
        labelled_count = sum(1 for task in ls.tasks(pid) if task["total_annotations"] > 0)
        assert labelled_count == args.annotate, f"{labelled_count} annotated tasks, expected {args.annotate}"
        classes = collections.Counter(task_label[task_id] for task_id in labelled)
        print(f"    labels per class: {dict(sorted(classes.items()))}")

    with step("start training and wait for a new model version"):
        ls.start_training(ml["id"])

        def new_version():
            adapter.check_alive()
            versions = requests.get(adapter_url + "/versions", timeout=5).json()["versions"]
            return versions[0] if versions and versions[0] != version else None

        new = wait_for("a new version in the adapter's GET /versions", new_version, TRAIN_TIMEOUT, 2)
        assert ls.ml_backends(pid)[0]["model_version"] == new, "the adapter's /setup does not give the new version"
        print(f"    new model_version {new!r}")

    unlabelled = set(task_ids) - set(labelled)
    with step(f"background scoring: every unlabelled task gets a prediction of {new!r} with no click"):
        all_predictions = wait_for_pool(ls, pid, new, unlabelled)
        predictions = check_predictions(all_predictions, new, len(unlabelled))
        assert {p["task"] for p in predictions} == unlabelled, "labelled tasks are not re-scored in the background"
        assert len(all_predictions) == len(tasks) + len(unlabelled), \
            f"{len(all_predictions)} predictions stored, expected {len(tasks)} + {len(unlabelled)}"
        views = [v for v in ls.views(pid) if v["data"].get("title") == "Most informative (ALPS)"]
        assert len(views) == 1, f"{len(views)} 'Most informative (ALPS)' tabs"
        ids = ls.view_task_ids(views[0]["id"])
        assert set(ids) == unlabelled, "the tab lists exactly the unlabelled tasks"

    with step(f"wait for the project's model_version to follow to {new!r}"):
        wait_for(f"project.model_version == {new!r}", lambda: ls.project(pid)["model_version"] == new, SYNC_TIMEOUT)
        check_ordering(ls, pid)
        # The tab's grid shows "Prediction model versions" and "Prediction score" filled in.
        listed = ls.view_tasks(views[0]["id"])
        empty = [task["id"] for task in listed if new not in [v.strip() for v in task.get("predictions_model_versions", "").split(",")]]
        assert not empty, f"the tab's 'Prediction model versions' column lacks {new!r} for tasks {empty[:5]}"
        assert all(task.get("predictions_score") is not None for task in listed), "the tab's 'Prediction score' is empty"

    with step("accuracy on the tasks not annotated"):
        unlabelled = set(task_ids) - set(labelled)
        after, correct = accuracy(predictions, task_label, unlabelled)
        print(f"    accuracy {after:.3f} ({correct}/{len(unlabelled)}) after training on {args.annotate} labels")
        assert after > MIN_ACCURACY, f"accuracy {after:.3f} not above {MIN_ACCURACY} (chance: 0.1)"

    batch_params = {**EXTRA_PARAMS, "score_mode": "uncertainty", "heuristic": "batch_bald", "query_size": QUERY_SIZE}
    with step(f"heuristic batch_bald, query_size {QUERY_SIZE}: the selected batch heads Label Studio's order"):
        batch_version = change_heuristic(ls, adapter_url, pid, ml["id"], batch_params, f"{new}-batch_bald", unlabelled)
        batch = project_status(adapter_url, pid)["pool"]["batch"]
        assert len(batch) == QUERY_SIZE == len(set(batch)), f"/status batch {batch}: not {QUERY_SIZE} distinct tasks"
        assert set(batch) <= unlabelled, f"/status batch {batch} holds labelled or unknown tasks"
        ordered = [task for task in ls.tasks(pid, ordering="-tasks:predictions_score") if not task["total_annotations"]]
        head = [task["id"] for task in ordered[:QUERY_SIZE]]
        assert head == batch, f"Label Studio's first {QUERY_SIZE} by score {head} are not the selected batch {batch}"
        scores = [task["predictions_score"] for task in ordered]
        assert None not in scores and all(0.0 <= score <= 1.0 for score in scores), "batch_bald scores outside [0, 1]"
        assert min(scores[:QUERY_SIZE]) > max(scores[QUERY_SIZE:]), "the batch's scores are not above every other"
        print(f"    {batch_version!r}: batch {batch} heads the order (scores {scores[0]:.3f} .. {scores[QUERY_SIZE - 1]:.3f}, "
              f"then {scores[QUERY_SIZE]:.3f} ..)")

    entropy_params = {**EXTRA_PARAMS, "score_mode": "uncertainty", "heuristic": "entropy"}
    with step("heuristic entropy: a new version, re-scored with no click, the project follows"):
        entropy_version = change_heuristic(ls, adapter_url, pid, ml["id"], entropy_params, f"{new}-entropy", unlabelled)
        assert project_status(adapter_url, pid)["pool"]["batch"] == [], "a per-sample heuristic selected a batch"
        ordered = [task for task in ls.tasks(pid, ordering="-tasks:predictions_score") if not task["total_annotations"]]
        scores = [task["predictions_score"] for task in ordered]
        assert None not in scores and scores == sorted(scores, reverse=True), "entropy scores not ordered descending"
        assert all(0.0 <= score <= 1.0 for score in scores), "entropy shares outside [0, 1]"

    with step("restart the adapter: the first /setup answers the trained version"):
        adapter.stop()
        processes.remove(adapter)
        adapter = start_adapter(args, tmp, ls, grpc_port, adapter_port)
        processes.append(adapter)
        answered = ls.ml_backends(pid)[0]["model_version"]  # LS calls /health, then /setup
        assert answered == entropy_version, f"the first /setup after a restart answered {answered!r}, not {entropy_version!r}"
        stored = len(ls.predictions(pid))
        pool = wait_for("the restarted adapter's pool run", lambda: (project_status(adapter_url, pid).get("pool") or {})
                        .get("state") == "complete" and project_status(adapter_url, pid)["pool"], SYNC_TIMEOUT)
        assert pool["version"] == entropy_version and pool["scored"] == 0 and pool["fresh"] == len(unlabelled), \
            f"after a restart the pool run rewrote predictions: {pool}"
        assert len(ls.predictions(pid)) == stored, "predictions were added after the restart"
        assert ls.project(pid)["model_version"] == entropy_version
        print(f"    first /setup after the restart: {answered!r}; pool run {pool['state']}, {pool['scored']} rewritten")


def start_adapter(args, tmp: Path, ls: LabelStudio, grpc_port: int, adapter_port: int) -> Process:
    """Starts alps-label-studio on `adapter_port` and waits until its /health reports the core ready."""
    adapter_url = f"http://127.0.0.1:{adapter_port}"
    adapter = Process("alps-label-studio", [str(args.bin_dir / "alps-label-studio")], {
        **ADAPTER_ENV,
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": ls.pat,
        "ALPS_CORE_URL": f"http://127.0.0.1:{grpc_port}",
        "ALPS_LS_LISTEN": f"127.0.0.1:{adapter_port}",
    }, tmp / "alps-label-studio.log")

    def adapter_ready():
        adapter.check_alive()
        health = requests.get(adapter_url + "/health", timeout=2).json()
        return health.get("status") == "UP" and health.get("model_server") == "ready"

    try:
        wait_for("alps-label-studio /health with model_server ready", adapter_ready, 60, 0.2)
    except BaseException:
        adapter.stop()
        raise
    return adapter


def project_status(adapter_url: str, pid: int) -> dict:
    """The project's entry in the adapter's GET /status ({} if absent)."""
    projects = requests.get(adapter_url + "/status", timeout=10).json()["projects"]
    return next((project for project in projects if project["project"] == pid), {})


def change_heuristic(ls: LabelStudio, adapter_url: str, pid: int, ml_id: int, extra_params: dict, expected: str,
                     unlabelled: set) -> str:
    """Changes the connection's extra_params; checks that /setup answers the `expected` version at once, that
    Label Studio's project model_version follows only once every unlabelled task holds a prediction of it,
    and that no task holds two predictions of one version. Returns the version."""
    # LS 1.23 re-validates the connection on PATCH and needs URL and project in the body (else a 500),
    # as its settings form sends them.
    answered = ls.patch_ml_backend(ml_id, url=adapter_url, project=pid, extra_params=extra_params)["model_version"]
    assert answered == expected, f"/setup answered {answered!r} after the heuristic change, expected {expected!r}"
    wait_for(f"project.model_version == {expected!r}", lambda: ls.project(pid)["model_version"] == expected,
             RESCORE_TIMEOUT, 0.5)
    predictions = ls.predictions(pid)  # right after the project followed: the run must be complete
    check_predictions(predictions, expected, len(unlabelled))
    assert {p["task"] for p in predictions if p["model_version"] == expected} == unlabelled, \
        f"{expected!r} is not on exactly the unlabelled tasks"
    pairs = collections.Counter((p["task"], p["model_version"]) for p in predictions)
    twice = [pair for pair, count in pairs.items() if count > 1]
    assert not twice, f"tasks holding two predictions of one version: {twice[:5]}"
    print(f"    {expected!r}: {len(unlabelled)} unlabelled tasks re-scored with no click; "
          f"{len(pairs)} (task, version) pairs, none twice")
    return expected


def wrong(label: str) -> str:
    return LABELS[(LABELS.index(label) + 1) % len(LABELS)]


def retrieve_all(ls: LabelStudio, pid: int, version: str, task_count: int, rounds: int = 5) -> list[dict]:
    """'Retrieve predictions' until every task has one of `version` (the adapter may defer tasks past its
    predict budget; the next retrieval continues). Returns all the project's predictions."""
    for _ in range(rounds):
        started = time.monotonic()
        ls.retrieve_predictions(pid)
        predictions = ls.predictions(pid)
        done = len({p["task"] for p in predictions if p["model_version"] == version})
        print(f"    retrieval: {done}/{task_count} tasks predicted, {time.monotonic() - started:.1f} s")
        if done >= task_count:
            break
    return predictions


def wait_for_pool(ls: LabelStudio, pid: int, version: str, task_ids: set, timeout: float = 300.0) -> list[dict]:
    """Waits, without any 'Retrieve predictions', until every task of `task_ids` holds a prediction of
    `version` written by the adapter's background scorer. Returns all the project's predictions."""
    started = time.monotonic()

    def fresh():
        predictions = ls.predictions(pid)
        done = {p["task"] for p in predictions if p["model_version"] == version} >= task_ids
        return predictions if done else None

    predictions = wait_for(f"every task holds {version!r}", fresh, timeout)
    print(f"    {len(task_ids)} tasks hold {version!r} after {time.monotonic() - started:.1f} s, no click")
    return predictions


def check_predictions(predictions: list[dict], version: str, task_count: int) -> list[dict]:
    """One prediction of `version` per task, each with a score in [0, 1] and one label of the config.
    Returns those predictions."""
    versions = collections.Counter(p["model_version"] for p in predictions)
    predictions = [p for p in predictions if p["model_version"] == version]
    tasks = [p["task"] for p in predictions]
    assert len(set(tasks)) == task_count, \
        f"{len(set(tasks))} of {task_count} tasks have a prediction of {version!r}; stored versions: {dict(versions)}"
    assert len(tasks) == task_count, f"{len(tasks) - task_count} tasks have more than one prediction of {version!r}"
    for p in predictions:
        assert p["score"] is not None and 0.0 <= p["score"] <= 1.0, f"prediction {p['id']}: score {p['score']}"
        assert len(p["result"]) == 1, f"prediction {p['id']}: {len(p['result'])} result items"
        item = p["result"][0]
        assert (item["from_name"], item["to_name"], item["type"]) == ("label", "image", "choices"), \
            f"prediction {p['id']}: result item {item}"
        assert len(item["value"]["choices"]) == 1 and item["value"]["choices"][0] in LABELS, \
            f"prediction {p['id']}: choices {item['value']['choices']} not one of {LABELS}"
    return predictions


def accuracy(predictions: list[dict], task_label: dict, task_ids: set) -> tuple[float, int]:
    """Share of `task_ids` whose predicted label is the true one, and the number correct."""
    predicted = {p["task"]: p["result"][0]["value"]["choices"][0] for p in predictions}
    correct = sum(predicted[task_id] == task_label[task_id] for task_id in task_ids)
    return correct / len(task_ids), correct


def check_ordering(ls: LabelStudio, pid: int) -> None:
    """Label Studio's Data Manager sorts by the scores of project.model_version's predictions."""
    tasks = ls.tasks(pid, ordering="tasks:predictions_score")
    # Labelled tasks are not re-scored in the background: only unlabelled ones need this version's score.
    scores = [task["predictions_score"] for task in tasks if not task.get("total_annotations")]
    assert None not in scores, f"{scores.count(None)} unlabelled tasks without a predictions_score"
    assert scores == sorted(scores), "tasks ordered by tasks:predictions_score are not ascending"
    print(f"    ordering by score ascending: {scores[0]:.3f} .. {scores[-1]:.3f}")


if __name__ == "__main__":
    sys.exit(main())
