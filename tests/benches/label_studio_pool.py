"""Benchmark: a Label Studio pool of N digit images scored with no click vs the "Retrieve predictions" click path.

    .venv/bin/python tests/benches/label_studio_pool.py --tasks 10000      # run by `make bench`

Starts a real Label Studio 1.23 (.venv-ls, tests/e2e/label_studio.py), the release alps-server and
two alps-label-studio adapters on loopback, and measures side by side in one run:

  (a) connect: from POST /api/ml until every task of project A holds a prediction, with no click
      (the adapter's background pool scorer; adapter 1, with Label Studio's API);
  (b) retrain: from "Start training" (POST /api/ml/{id}/train after --annotate labels) until every
      unlabelled task holds a prediction of the new version, and until the project's
      model_version follows, with no click;
  (c) the click path for the same pool: adapter 2 has no Label Studio API key, so its background
      scorer is off and every prediction comes from "Retrieve predictions". Label Studio's button
      (data_manager/actions/basic.py: retrieve_tasks_predictions -> MLBackend.predict_tasks) sends
      every selected task lacking the backend's version in one /predict call and stores what comes
      back; the adapter answers what it finished within its predict budget (90 s) and defers the
      rest, so a pool takes one click per budget's worth of tasks. Measured as: real clicks
      ("select all" + the action) on a project of --click-sample tasks until all hold a
      prediction, and the adapter's part for the whole pool by posting LS's /predict body
      (all tasks lacking a prediction, again and again until none is deferred) to adapter 2. The
      full-pool click path is extrapolated from those two, and said so;
  (d) the rate at which Label Studio accepts bulk predictions
      (POST /api/projects/{id}/import/predictions, chunks of 250 and 1,000).

Tasks are imported in bulk as JSON ({"image": URL}, 1,000 per request) pointing at distinct PNG
files served from a local HTTP server on 127.0.0.1 (sklearn's 1,797 digits, shifted by a pixel or
two per copy, 32x32 grayscale). Prints a Markdown table; numbers go to BENCHMARKS.md.
"""

import argparse
import contextlib
import functools
import http.server
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from label_studio import LabelStudio, choice, free_port  # noqa: E402
from test_label_studio import LABEL_CONFIG, Process, report_failure, tear_down, wait_for  # noqa: E402

IMPORT_CHUNK = 1000  # tasks per bulk import request
T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f} s] {message}", flush=True)


def write_images(out_dir: Path, count: int) -> list[tuple[str, int]]:
    """`count` distinct 32x32 PNGs: sklearn digit i % 1797, copy k = i // 1797 rolled by a pixel or
    two (so no two files are equal). Returns (file name, label) per task."""
    digits = load_digits()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    shifts = [(0, 0), (1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1), (2, 0), (0, 2)]
    for i in range(count):
        index, copy = i % len(digits.target), i // len(digits.target)
        pixels = (digits.images[index] * (255.0 / 16.0)).round().astype(np.uint8)
        image = np.asarray(Image.fromarray(pixels, mode="L").resize((32, 32), Image.Resampling.NEAREST))
        dy, dx = shifts[copy % len(shifts)]
        image = np.roll(image, (dy, dx), axis=(0, 1))
        name = f"{i:05d}.png"
        Image.fromarray(image, mode="L").save(out_dir / name)
        rows.append((name, int(digits.target[index])))
    return rows


def serve_directory(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A quiet threaded static file server on 127.0.0.1 (stands in for the site's image store)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def import_tasks(ls: LabelStudio, pid: int, urls: list[str]) -> float:
    """Bulk JSON import, IMPORT_CHUNK tasks per request; returns the seconds it took."""
    started = time.monotonic()
    for start in range(0, len(urls), IMPORT_CHUNK):
        body = [{"image": url} for url in urls[start:start + IMPORT_CHUNK]]
        answer = ls.api.post(f"/api/projects/{pid}/import", json=body, timeout=600)
        if answer.status_code != 201:
            raise RuntimeError(f"import: {answer.status_code} {answer.text[:300]}")
    return time.monotonic() - started


def task_list(ls: LabelStudio, pid: int) -> list[dict]:
    """Every task of the project (id, data), by id."""
    tasks = ls.tasks(pid, fields="all", page_size=1000)
    return sorted(({"id": t["id"], "data": t["data"]} for t in tasks), key=lambda t: t["id"])


def holding(ls: LabelStudio, pid: int, version: str) -> tuple[set, int]:
    """Tasks holding a prediction of `version`, and how many such predictions there are."""
    predictions = [p for p in ls.predictions(pid) if p["model_version"] == version]
    return {p["task"] for p in predictions}, len(predictions)


def pool_status(adapter_url: str, pid: int) -> dict:
    for project in requests.get(adapter_url + "/status", timeout=10).json()["projects"]:
        if project["project"] == pid:
            return project
    return {}


def wait_pool_fresh(adapter_url: str, pid: int, version: str, timeout: float) -> dict:
    """Polls the adapter's /status until its pool run of `version` is complete."""

    def done():
        status = pool_status(adapter_url, pid)
        pool = status.get("pool") or {}
        ok = status.get("model_version") == version and pool.get("version") == version and pool.get("state") == "complete"
        return status if ok else None

    return wait_for(f"the pool of {version!r} complete", done, timeout, 0.5)


def start_adapter(name: str, bin_dir: Path, tmp: Path, grpc_port: int, env: dict) -> tuple[Process, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = Process(name, [str(bin_dir / "alps-label-studio")], {
        "ALPS_CORE_URL": f"http://127.0.0.1:{grpc_port}",
        "ALPS_LS_LISTEN": f"127.0.0.1:{port}",
        "ALPS_LS_MEDIA_ALLOW_PRIVATE": "true",  # images come from the local file server
        "ALPS_LS_TRAIN_DEBOUNCE_MS": "1000",
        "RUST_LOG": "info",
        **env,
    }, tmp / f"{name}.log")

    def ready():
        process.check_alive()
        health = requests.get(url + "/health", timeout=2).json()
        return health.get("status") == "UP" and health.get("model_server") == "ready"

    wait_for(f"{name} /health", ready, 60, 0.2)
    return process, url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10000, help="pool size N (default 10000)")
    parser.add_argument("--annotate", type=int, default=200, help="labels before 'Start training' (default 200)")
    parser.add_argument("--click-sample", type=int, default=1000,
                        help="tasks of the project clicked through for real (default 1000)")
    parser.add_argument("--model", default="small-cnn", help="adapter preset (ALPS_LS_MODELS entry or built-in name)")
    parser.add_argument("--write-chunk", type=int, default=None,
                        help="ALPS_LS_POOL_WRITE_CHUNK of the background adapter (default: the adapter's, 1000)")
    parser.add_argument("--no-click-path", action="store_true", help="measure (a) and (b) only")
    parser.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args()
    for binary in ("alps-server", "alps-label-studio"):
        if not (args.bin_dir / binary).exists():
            print(f"label_studio_pool: {args.bin_dir / binary} not found (cargo build --release first)", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="alps-bench-ls-"))
    processes: list = []
    try:
        rows = run(args, tmp, processes)
        print_table(args, rows)
        return 0
    except BaseException as error:
        report_failure(error, processes)
        return 1
    finally:
        tear_down(processes, tmp, args.keep)


def run(args, tmp: Path, processes: list) -> dict:
    n, sample = args.tasks, min(args.click_sample, args.tasks)
    model_env = {}
    name = args.model
    if "=" in args.model:  # a preset definition: NAME=ARCHITECTURE,...
        name = args.model.split("=", 1)[0]
        model_env = {"ALPS_LS_MODELS": args.model}
    model_env["ALPS_LS_DEFAULT_MODEL"] = name
    extra_params = {"model": name, "score_mode": "confidence"}
    out: dict = {"n": n, "sample": sample, "load_start": os.getloadavg()}

    log(f"writing {n} digit PNGs")
    labels = write_images(tmp / "digits", n)
    server, base = serve_directory(tmp / "digits")
    urls = [f"{base}/{file}" for file, _ in labels]

    log("starting alps-server, Label Studio, adapters")
    grpc_port, metrics_port = free_port(), free_port()
    core = Process("alps-server", [
        str(args.bin_dir / "alps-server"), "--listen", f"127.0.0.1:{grpc_port}",
        "--metrics-listen", f"127.0.0.1:{metrics_port}", "--http-listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp / "alps-data"),
    ], {"RUST_LOG": "info"}, tmp / "alps-server.log")
    processes.append(core)
    wait_for("alps-server", lambda: requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).ok, 60, 0.2)
    ls = LabelStudio(log_path=tmp / "label-studio.log")
    processes.append(ls)
    ls.start()
    write_env = {"ALPS_LS_POOL_WRITE_CHUNK": str(args.write_chunk)} if args.write_chunk else {}
    scorer, scorer_url = start_adapter("adapter-background", args.bin_dir, tmp, grpc_port, {
        **model_env, **write_env, "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.pat})
    processes.append(scorer)
    clicker, clicker_url = start_adapter("adapter-click-path", args.bin_dir, tmp, grpc_port, model_env)
    processes.append(clicker)

    log(f"importing {n} + {sample} tasks in bulk ({IMPORT_CHUNK} per request)")
    pool_pid = ls.create_project("bench-pool", LABEL_CONFIG)["id"]
    out["import_secs"] = import_tasks(ls, pool_pid, urls)
    click_pid = ls.create_project("bench-click-path", LABEL_CONFIG)["id"]
    import_tasks(ls, click_pid, urls[:sample])
    pool = task_list(ls, pool_pid)
    assert len(pool) == n, f"{len(pool)} tasks imported for {n}"
    label_of = {task["id"]: labels[i][1] for i, task in enumerate(pool)}
    log(f"import: {n} tasks in {out['import_secs']:.1f} s ({n / out['import_secs']:.0f} tasks/s)")

    # (a) connect -> every task holds a prediction, no click.
    started = time.monotonic()
    ml = ls.connect_ml_backend(pool_pid, scorer_url, title="alps", extra_params=extra_params)
    version = ml["model_version"]
    status = wait_pool_fresh(scorer_url, pool_pid, version, 3600)
    out["connect_secs"] = time.monotonic() - started
    tasks_holding, count = holding(ls, pool_pid, version)
    assert tasks_holding == set(label_of) and count == n, f"{len(tasks_holding)} tasks / {count} predictions of {version}"
    log(f"(a) connect: {n} tasks hold {version!r} after {out['connect_secs']:.1f} s; adapter: {status['pool']}")

    # (b) annotations, "Start training" -> the whole unlabelled pool holds the new version, no click.
    labelled = [task["id"] for task in pool[:args.annotate]]
    for task_id in labelled:
        ls.annotate(task_id, "label", "image", str(label_of[task_id]))
    log(f"annotated {len(labelled)} tasks")
    started = time.monotonic()
    ls.start_training(ml["id"])
    new = wait_for("a new version", lambda: (v := pool_status(scorer_url, pool_pid).get("model_version")) != version and v,
                   3600, 0.5)
    out["train_secs"] = time.monotonic() - started
    training = pool_status(scorer_url, pool_pid).get("training")
    status = wait_pool_fresh(scorer_url, pool_pid, new, 3600)
    out["retrain_secs"] = time.monotonic() - started
    wait_for("project.model_version follows", lambda: ls.project(pool_pid)["model_version"] == new, 600, 0.5)
    out["follow_secs"] = time.monotonic() - started
    unlabelled = set(label_of) - set(labelled)
    tasks_holding, count = holding(ls, pool_pid, new)
    assert tasks_holding == unlabelled and count == len(unlabelled), \
        f"{len(tasks_holding)} tasks / {count} predictions of {new} for {len(unlabelled)} unlabelled"
    predicted = {p["task"]: p["result"][0]["value"]["choices"][0] for p in ls.predictions(pool_pid) if p["model_version"] == new}
    out["accuracy"] = sum(predicted[t] == str(label_of[t]) for t in unlabelled) / len(unlabelled)
    out["version"], out["new"], out["training"], out["pool_run"] = version, new, training, status["pool"]
    log(f"(b) retrain: {new!r} active after {out['train_secs']:.1f} s, pool fresh after {out['retrain_secs']:.1f} s, "
        f"project follows after {out['follow_secs']:.1f} s; accuracy {out['accuracy']:.3f}; training {training}")

    out["load_end"] = os.getloadavg()
    if args.no_click_path:
        return out
    # (c) click path: real clicks on the sample project ...
    ml2 = ls.connect_ml_backend(click_pid, clicker_url, title="alps", extra_params=extra_params)
    clicks, click_secs, done = [], 0.0, 0
    while done < sample and len(clicks) < 50:
        started = time.monotonic()
        ls.retrieve_predictions(click_pid, timeout=3600)
        elapsed = time.monotonic() - started
        now = len(holding(ls, click_pid, ml2["model_version"])[0])
        clicks.append((elapsed, now - done))
        click_secs += elapsed
        done = now
        log(f"(c) click {len(clicks)}: {elapsed:.1f} s, {clicks[-1][1]} predictions stored ({done}/{sample})")
    out["clicks_sample"], out["click_secs_sample"] = clicks, click_secs
    # ... and the adapter's side of the clicks for the whole pool: LS's /predict body, again and
    # again with the tasks still lacking a prediction (adapter 2 has no score of these task ids).
    body = {"project": f"{click_pid}.{int(time.time())}", "label_config": LABEL_CONFIG,
            "params": {"login": None, "password": None, "context": None}}
    remaining = [{**task, "annotations": [], "predictions": [], "project": click_pid} for task in pool]
    calls = []
    while remaining and len(calls) < 200:
        started = time.monotonic()
        answer = requests.post(clicker_url + "/predict", json={**body, "tasks": remaining}, timeout=600)
        answer.raise_for_status()
        elapsed = time.monotonic() - started
        results = answer.json()["results"]
        remaining = [task for task, result in zip(remaining, results) if not result.get("result")]
        calls.append((elapsed, len(results) - len(remaining)))
        log(f"(c) adapter /predict call {len(calls)}: {elapsed:.1f} s, {calls[-1][1]} answered, {len(remaining)} deferred")
    out["predict_calls"] = calls

    # (d) Label Studio's bulk prediction import rate.
    out["bulk"] = {}
    targets = [t["id"] for t in pool if t["id"] not in set(labelled)][:5000]
    for chunk in (250, 1000):
        started = time.monotonic()
        for start in range(0, len(targets), chunk):
            items = [{"task": t, "result": [choice("label", "image", "0")], "score": 0.5,
                      "model_version": f"bench-bulk-{chunk}"} for t in targets[start:start + chunk]]
            answer = ls.api.post(f"/api/projects/{pool_pid}/import/predictions", json=items, timeout=600)
            if answer.status_code != 201:
                raise RuntimeError(f"import/predictions: {answer.status_code} {answer.text[:300]}")
        out["bulk"][chunk] = (len(targets), time.monotonic() - started)
        log(f"(d) bulk predictions, chunks of {chunk}: {len(targets)} in {out['bulk'][chunk][1]:.1f} s")
    out["load_end"] = os.getloadavg()
    server.shutdown()
    return out


def print_table(args, out: dict) -> None:
    n, sample = out["n"], out["sample"]
    if args.no_click_path:
        print(f"\nN = {n}, model {args.model}, write chunk {args.write_chunk or 1000}, {args.annotate} labels; load average "
              f"{out['load_start'][0]:.2f} at start, {out['load_end'][0]:.2f} at end")
        print(f"| connect → every task holds a prediction | {out['connect_secs']:.1f} s |")
        print(f"| Start training → new version active | {out['train_secs']:.1f} s |")
        print(f"| Start training → whole pool holds the new version | {out['retrain_secs']:.1f} s |")
        print(f"| … and the project's model_version follows | {out['follow_secs']:.1f} s |")
        print(f"accuracy {out['accuracy']:.3f}; training {json.dumps(out['training'])}")
        return
    clicks, click_secs = out["clicks_sample"], out["click_secs_sample"]
    calls = out["predict_calls"]
    adapter_secs = sum(t for t, _ in calls)
    adapter_rate = n / adapter_secs
    # Label Studio's own share of a click (serialising the tasks, storing predictions one by one):
    # the sample's click time minus what the adapter needs for that many tasks at its measured rate.
    ls_secs_per_task = max(click_secs - sample / adapter_rate, 0.0) / sample
    full_click_secs = adapter_secs + ls_secs_per_task * n
    per_click = calls[0][1]
    print()
    print(f"Label Studio pool benchmark: N = {n} tasks, model {args.model}, {args.annotate} labels before training; "
          f"{os.cpu_count()} CPUs, load average {out['load_start'][0]:.2f} at start, {out['load_end'][0]:.2f} at end")
    print()
    print("| measure | no click (background scoring) | click path (Retrieve predictions) |")
    print("| --- | --- | --- |")
    print(f"| connect → every task holds a prediction ({n} tasks) | {out['connect_secs']:.1f} s "
          f"({n / out['connect_secs']:.0f} tasks/s) | {len(calls)} click(s), ≈ {full_click_secs:.0f} s in all "
          f"(extrapolated, see below) |")
    fresh = n - args.annotate
    print(f"| Start training → new version active ({args.annotate} labels) | {out['train_secs']:.1f} s | same |")
    print(f"| Start training → whole pool holds the new version ({fresh} tasks) | {out['retrain_secs']:.1f} s "
          f"(rescoring {out['retrain_secs'] - out['train_secs']:.1f} s) | + {len(calls)} click(s), "
          f"≈ {adapter_secs / n * fresh + ls_secs_per_task * fresh:.0f} s after training |")
    print(f"| … and the project's model_version follows | {out['follow_secs']:.1f} s | when someone sets it |")
    print(f"| real clicks on a {sample}-task project | — | {len(clicks)} click(s), {click_secs:.1f} s "
          f"({sample / click_secs:.0f} tasks/s) |")
    print(f"| adapter's side of the clicks for {n} tasks (LS's /predict body, deferred tasks re-sent) | — | "
          f"{len(calls)} call(s), {adapter_secs:.1f} s ({adapter_rate:.0f} tasks/s; first call answered {per_click}) |")
    for chunk, (count, secs) in out["bulk"].items():
        print(f"| Label Studio bulk import of predictions, chunks of {chunk} | {count / secs:.0f} predictions/s "
              f"({count} in {secs:.1f} s) | — |")
    print(f"| Label Studio bulk import of tasks (JSON, {IMPORT_CHUNK} per request) | {n / out['import_secs']:.0f} tasks/s | — |")
    print()
    target = 300.0
    verdict = "met" if out["retrain_secs"] <= target else "not met"
    print(f"Target: the {n}-task pool fresh within 5 minutes of 'Start training': {verdict} "
          f"({out['retrain_secs']:.1f} s, of which training {out['train_secs']:.1f} s).")
    print(f"Click path for {n} tasks extrapolated: adapter {adapter_secs:.0f} s (measured on all {n}) + Label Studio "
          f"{ls_secs_per_task * 1000:.1f} ms per task stored (from the {sample}-task clicks) × {n}.")
    print(f"Accuracy of {out['new']} on the {fresh} unlabelled tasks: {out['accuracy']:.3f}; "
          f"pool run: {json.dumps({k: out['pool_run'][k] for k in ('scored', 'failed', 'elapsed_secs')})}; "
          f"training: {json.dumps(out['training'])}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
