"""The active-learning experiment of ALPS (issues #7 and #15), through the public gRPC API only.

Claims under test: ordering the labelling work by Bayesian uncertainty (MC-Dropout + BALD; Gal,
Islam & Ghahramani 2017, "Deep Bayesian Active Learning with Image Data"; Atighehchian et al.
2020, "Bayesian active learning for production") reaches a given test accuracy with fewer labels
than labelling in random order; and, from zero labels (issue #15), a cold-start acquisition
schedule (TypiClust, Hacohen et al. 2022, until the project has a few labels, then BALD) beats
both random order and uncertainty from a barely trained model at the smallest budgets.

Method (pool-based active learning with a simulated annotator), per variant × strategy × seed:

1. CreateProject: an MLP (8x8 input → 256 → 128, MC-Dropout head) for the ten digits; with an
   explicit empty acquisition schedule, except for ``schedule`` (the server's default schedule).
2. Start from ``initial_size`` labels (0 by default; a random set, the same for every strategy of
   a seed, otherwise). Round 0 evaluates the initial model (version "untrained" from zero).
3. Repeat for ``rounds``: rank the unlabelled pool with the strategy's acquisition function
   (InferenceService.Rank, ``mc_iterations`` MC-Dropout passes, with the active version, which
   is "untrained" until the first training; ``random`` draws client-side; ``schedule`` names no
   heuristic), "label" the top ``query_size`` items from ground truth, retrain once the labels
   cover at least 2 classes (the server cannot train on one; until then the version stays
   "untrained"), and evaluate the active version on the fixed, balanced test set with Predict
   (accuracy and per-class F1 computed here).

Every round is a row of ``<out>/rounds.csv``; ``experiments/report.py`` turns the CSV into the
learning-curve plots and the tables of ``EXPERIMENTS.md``.

``--via label-studio`` runs ``bald`` on the balanced pool for a few rounds (one seed) with Label
Studio as the labelling front end (``experiments/label_studio_annotator.py``): the annotator takes
tasks in Label Studio's order by the adapter's prediction score (BALD) instead of calling Rank,
annotates through Label Studio's API, and training goes through the adapter's webhook path. Its
rows (strategy ``bald-via-ls``) go to ``<out>/label_studio_rounds.csv``, which the report adds.

    .venv/bin/python -m experiments.active_learning --out experiments/results        # full
    .venv/bin/python -m experiments.reproducibility --out experiments/results \
        --without-seeded-untrained --schedule-check 10                                # reproducibility probe
    .venv/bin/python -m experiments.active_learning --reduced --out /tmp/alps-al      # pipeline check
    .venv/bin/python -m experiments.active_learning --via label-studio --server target/debug/alps-server
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from experiments import report
from experiments.annotator import Annotator, make_annotator
from experiments.client import AlpsClient, AlpsServer, TrainingSettings, default_server_binary
from experiments.data import CLASSES, IMAGE_SIDE, Digits, Variant, load_digits_as_png, make_variants
from experiments.strategies import ALL_STRATEGIES, SCHEDULE, STRATEGIES, acquire

ROOT = Path(__file__).resolve().parent.parent
# Seed of the Predict dropout masks on the test set: the evaluation is reproducible on CPU.
EVAL_SEED = 7
# Historical: alps-server used to draw a project's untrained weights from libtorch's
# process-global generator, so the harness put that generator in a known state just before each
# project was created: a seeded one-image Predict on a throwaway project (WARMUP_PROJECT) with
# seed UNTRAINED_SEED_BASE + seed. The server now builds the untrained weights from the project's
# spec and draws every job's dropout masks from a generator of the job's own, so the warm-up
# changes nothing (checked: with --no-seed-untrained, and with --jobs 2, runs give the same rows);
# it is kept so that the published full run is reproduced by the same command.
WARMUP_PROJECT = "rng-warmup"
UNTRAINED_SEED_BASE = 10_000


@dataclass
class Config:
    """Everything that defines a run; written to ``<out>/run.json``."""

    variants: list[str] = field(default_factory=lambda: ["balanced", "imbalanced"])
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    seeds: list[int] = field(default_factory=lambda: list(range(10)))
    # Labels drawn at random before the first acquisition (0 = cold start from zero labels).
    initial_size: int = 0
    query_size: int = 10
    # Acquisition rounds per variant (labels at the end = initial_size + rounds × query_size).
    rounds: dict[str, int] = field(default_factory=lambda: {"balanced": 30, "imbalanced": 18})
    mc_iterations: int = 20
    head_dropout: float = 0.5
    test_per_class: int = 50
    majority_class: int = 1
    rare_per_class: int = 15
    pool_limit: int | None = None
    training: TrainingSettings = field(default_factory=TrainingSettings)
    jobs: int = 2
    # How labels reach the server (the Annotator implementation): "grpc" = simulated annotator
    # calling the API, "label-studio" = simulated annotator working in Label Studio.
    via: str = "grpc"
    reduced: bool = False
    # Put libtorch's global generator in a known state before each project is created (see
    # WARMUP_PROJECT); False only to show what happens without it (experiments/reproducibility.py).
    seed_untrained: bool = True


def reduced_config() -> Config:
    """One seed, three rounds from zero labels (the schedule switches from typiclust to bald at
    20), random + a diversity, a per-item and a batch heuristic + the schedule, small pools:
    checks the pipeline, not the science."""
    return Config(
        strategies=["random", "typiclust", "bald", "batch_bald", SCHEDULE],
        seeds=[0],
        rounds={"balanced": 3, "imbalanced": 3},
        test_per_class=10,
        rare_per_class=6,
        pool_limit=200,
        training=TrainingSettings(epochs=10),
        reduced=True,
    )


def label_studio_config(reduced: bool) -> Config:
    """``--via label-studio``: ``bald`` (the adapter's score), balanced pool, one seed, a few rounds
    (two on the reduced run's small pool)."""
    cfg = reduced_config() if reduced else Config()
    cfg.via, cfg.strategies, cfg.variants, cfg.seeds, cfg.jobs = "label-studio", ["bald"], ["balanced"], [0], 1
    # The Label Studio route starts from 20 random labels (issue #7's design): the adapter's
    # prediction score needs a trained model.
    cfg.initial_size = 20
    cfg.rounds = {"balanced": 2 if reduced else 5}
    return cfg


# Strategy label of the rows of a --via label-studio run.
VIA_LS_SUFFIX = "-via-ls"


def output_names(cfg: Config) -> tuple[str, str]:
    """File names of the rounds CSV and the run metadata in ``--out``."""
    return ("label_studio_rounds.csv", "label_studio_run.json") if cfg.via == "label-studio" else ("rounds.csv", "run.json")


def project_id(variant: str, strategy: str, seed: int) -> str:
    return f"{variant}-{strategy}-s{seed}"


def evaluate(client: AlpsClient, pid: str, digits: Digits, variant: Variant, cfg: Config) -> dict:
    """Accuracy and per-class F1 of the active version on the test set, via Predict."""
    truth = np.asarray([digits.labels[i] for i in variant.test])
    predicted, versions = client.predict_classes(
        pid, [digits.images[i] for i in variant.test], cfg.mc_iterations, EVAL_SEED
    )
    f1 = f1_score(truth, predicted, labels=list(range(len(CLASSES))), average=None, zero_division=0)
    row = {
        "eval_model_version": "|".join(sorted(versions)),
        "accuracy": float(np.mean(predicted == truth)),
        "macro_f1": float(np.mean(f1)),
        "rare_f1": float(np.mean(f1[variant.rare_classes])) if variant.rare_classes else "",
    }
    row.update({f"f1_{c}": float(f1[c]) for c in range(len(CLASSES))})
    return row


def class_counts(labels: list[int]) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=int), minlength=len(CLASSES))


def run_strategy(
    client: AlpsClient, digits: Digits, variant: Variant, strategy: str, seed: int, cfg: Config, label_studio=None
) -> list[dict]:
    """One active-learning run: initial labelled set (possibly empty), then ``rounds``
    acquisition rounds. ``label_studio``: the running front end for ``--via label-studio``."""
    via_ls = cfg.via == "label-studio"
    label = strategy + VIA_LS_SUFFIX if via_ls else strategy
    pid = project_id(variant.name, label, seed)
    if not via_ls:  # else the adapter creates the ALPS project for the Label Studio project
        if cfg.seed_untrained:
            client.predict_classes(WARMUP_PROJECT, [digits.images[digits.ids[0]]], 1, UNTRAINED_SEED_BASE + seed)
        # Only `schedule` keeps the server's default acquisition schedule; every other strategy
        # names its heuristic in Rank anyway, and its project has an explicit empty schedule.
        cold_start = client.create_project(
            pid, CLASSES, IMAGE_SIDE, cfg.mc_iterations, cfg.head_dropout, schedule=strategy == SCHEDULE
        )
        if (cold_start != "") != (strategy == SCHEDULE):
            raise RuntimeError(f"{pid}: stored acquisition schedule has cold start {cold_start!r}")
    annotator: Annotator = make_annotator(cfg.via, client, pid, digits, cfg.training, label_studio, variant.pool)
    # The initial labelled set depends on the seed only, so strategies are compared pairwise.
    initial_rng = np.random.default_rng([seed, 0])
    acquisition_rng = np.random.default_rng([seed, 1])
    pool = list(variant.pool)
    initial = [pool[i] for i in sorted(initial_rng.choice(len(pool), size=cfg.initial_size, replace=False))]
    labelled = set(initial)
    rows = []
    query, acquire_s, scored_by, ranked_by = initial, 0.0, "", ""
    version = client.active_version(annotator.project_id) if not via_ls else ""
    for round_ in range(cfg.rounds[variant.name] + 1):
        counts = class_counts([digits.labels[i] for i in labelled])
        # The server trains on at least 2 classes; before that the active version stays as it is.
        trainable = int((counts > 0).sum()) >= 2
        started = time.monotonic()
        if via_ls:
            version = annotator.label_and_retrain(query, seed * 1000 + round_)
            trained = True
        else:
            version = annotator.label_and_retrain(query, seed * 1000 + round_, train=trainable)
            trained = trainable
        train_s = time.monotonic() - started
        started = time.monotonic()
        metrics = evaluate(client, annotator.project_id, digits, variant, cfg)
        eval_s = time.monotonic() - started
        rows.append(
            {
                "variant": variant.name,
                "strategy": label,
                "seed": seed,
                "round": round_,
                "labels": len(labelled),
                "model_version": version,
                "trained": int(trained),
                "acquired_with_version": scored_by,
                "acquired_with_heuristic": ranked_by,
                **metrics,
                "rare_labelled": int(counts[variant.rare_classes].sum()) if variant.rare_classes else "",
                "classes_labelled": int((counts > 0).sum()),
                "rare_classes_labelled": int((counts[variant.rare_classes] > 0).sum()) if variant.rare_classes else "",
                "class_counts": "|".join(str(int(c)) for c in counts),
                "train_s": round(train_s, 3),
                "acquire_s": round(acquire_s, 3),
                "eval_s": round(eval_s, 3),
            }
        )
        if round_ == cfg.rounds[variant.name]:
            break
        unlabelled = [i for i in pool if i not in labelled]
        started = time.monotonic()
        if via_ls:  # the top of Label Studio's order by the adapter's score (BALD of this version)
            chosen = annotator.take_top_tasks(cfg.query_size)
        else:
            chosen = acquire(
                strategy, client, pid, digits, unlabelled, cfg.query_size, cfg.mc_iterations, acquisition_rng
            )
        acquire_s = time.monotonic() - started
        if chosen.model_version not in ("", version):
            raise RuntimeError(f"{pid}: round {round_ + 1} ranked with {chosen.model_version}, active {version}")
        query, scored_by, ranked_by = chosen.ids, chosen.model_version, chosen.heuristic
        if len(set(query)) != len(query) or labelled & set(query) or len(query) != min(cfg.query_size, len(unlabelled)):
            raise RuntimeError(f"{pid}: acquisition returned duplicate or labelled items, or not {cfg.query_size}: {query}")
        labelled |= set(query)
    return rows


COLUMNS = [
    "variant", "strategy", "seed", "round", "labels", "model_version", "trained", "acquired_with_version",
    "acquired_with_heuristic", "eval_model_version", "accuracy", "macro_f1", "rare_f1",
    *[f"f1_{c}" for c in range(len(CLASSES))],
    "rare_labelled", "classes_labelled", "rare_classes_labelled", "class_counts", "train_s", "acquire_s", "eval_s",
]  # fmt: skip


def write_rounds(path: Path, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: (r["variant"], r["strategy"], r["seed"], r["round"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})


UNTRAINED = "untrained"


def schedule_switch(classes: int = len(CLASSES)) -> int:
    """Labels at which the server's default acquisition schedule (min_labels 0) switches from
    its cold-start heuristic to the project's default: max(2 × classes, 20)."""
    return max(2 * classes, 20)


def check_rounds(path: Path, cfg: Config) -> list[str]:
    """Pipeline checks on the written CSV; returns the problems found (empty = fine)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    problems = []
    expected = sum(
        (cfg.rounds[v] + 1) * len(cfg.strategies) * len(cfg.seeds) for v in cfg.variants
    )
    if len(rows) != expected:
        problems.append(f"{path}: {len(rows)} rows, expected {expected}")
    runs: dict[tuple, list[dict]] = {}
    for row in rows:
        runs.setdefault((row["variant"], row["strategy"], row["seed"]), []).append(row)
    for key, run in runs.items():
        run.sort(key=lambda r: int(r["round"]))
        strategy = key[1].removesuffix(VIA_LS_SUFFIX)
        for i, row in enumerate(run):
            accuracy = float(row["accuracy"])
            if not (math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0):
                problems.append(f"{key} round {i}: accuracy {row['accuracy']} not in [0, 1]")
            if int(row["labels"]) != cfg.initial_size + i * cfg.query_size:
                problems.append(f"{key} round {i}: {row['labels']} labels, expected {cfg.initial_size + i * cfg.query_size}")
            if row["eval_model_version"] != row["model_version"]:
                problems.append(f"{key} round {i}: evaluated {row['eval_model_version']}, trained {row['model_version']}")
            counts = [int(c) for c in row["class_counts"].split("|")]
            if sum(counts) != int(row["labels"]) or sum(c > 0 for c in counts) != int(row["classes_labelled"]):
                problems.append(f"{key} round {i}: class counts {row['class_counts']} do not add up")
            # Training happens exactly when the labels cover 2 classes; a trained round has a new
            # version, an untrained one keeps the previous ("untrained" before the first training).
            if cfg.via == "grpc" and row["trained"] != str(int(int(row["classes_labelled"]) >= 2)):
                problems.append(f"{key} round {i}: trained {row['trained']} with {row['classes_labelled']} classes")
            previous = run[i - 1]["model_version"] if i > 0 else UNTRAINED
            if row["trained"] == "1" and row["model_version"] == previous:
                problems.append(f"{key} round {i}: model version {row['model_version']} did not change")
            if row["trained"] == "0" and row["model_version"] != previous:
                problems.append(f"{key} round {i}: not trained, but the version moved to {row['model_version']}")
            if i == 0:
                continue
            # Every ranking comes from the version active after the previous round.
            if strategy != "random" and row["acquired_with_version"] != run[i - 1]["model_version"]:
                problems.append(f"{key} round {i}: acquired with {row['acquired_with_version']!r}")
            if cfg.via == "grpc" and strategy != "random":
                want = strategy
                if strategy == SCHEDULE:
                    want = "typiclust" if int(run[i - 1]["labels"]) < schedule_switch() else "bald"
                if row["acquired_with_heuristic"] != want:
                    problems.append(f"{key} round {i}: ranked by {row['acquired_with_heuristic']!r}, expected {want!r}")
    return problems


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def git_dirty() -> list[str]:
    """Paths with uncommitted changes (``git status --porcelain``) when the run started: the
    binaries may have been built from them."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line[3:] for line in out.splitlines() if line.strip()]


def run_experiment(cfg: Config, out: Path, server_binary: Path) -> tuple[list[dict], dict]:
    """Starts a private server, runs every variant × strategy × seed, stops the server."""
    started = time.monotonic()
    load_before = os.getloadavg()
    commit, dirty = git_commit(), git_dirty()  # at the start: the binaries were built before
    with tempfile.TemporaryDirectory(prefix="alps-digits-") as images_dir:
        digits = load_digits_as_png(Path(images_dir))
    variants = make_variants(digits, cfg.test_per_class, cfg.majority_class, cfg.rare_per_class, cfg.pool_limit)
    for name in cfg.variants:
        print(f"[data] {variants[name].describe(digits)}", flush=True)
    tasks = [(v, s, seed) for seed in cfg.seeds for v in cfg.variants for s in cfg.strategies]
    # The slowest runs (batch heuristics on the big pool) first, so the workers finish together.
    heavy = ("batch_bald", "typiclust", "badge", "coreset")
    tasks.sort(key=lambda t: (t[1] not in heavy, heavy.index(t[1]) if t[1] in heavy else 0, t[0] != "balanced"))
    rows: list[dict] = []
    with AlpsServer(server_binary) as server, contextlib.ExitStack() as front_end:
        client = AlpsClient(server.address)
        needed = {s for s in cfg.strategies if s not in ("random", SCHEDULE)}
        if SCHEDULE in cfg.strategies:
            needed |= {"typiclust", "bald"}  # the server's default schedule and default heuristic
        missing = needed - client.heuristic_names()
        if missing:
            raise RuntimeError(f"the server has no heuristic {sorted(missing)}; loaded: {sorted(client.heuristic_names())}")
        print(f"[server] {server_binary} on {server.address}, {len(tasks)} runs, {cfg.jobs} at a time", flush=True)
        if cfg.via == "grpc":
            client.create_project(WARMUP_PROJECT, CLASSES, IMAGE_SIDE, 1, cfg.head_dropout, schedule=False)
        label_studio = None
        if cfg.via == "label-studio":
            from experiments.label_studio_annotator import LabelStudioFrontEnd

            adapter = server_binary.parent / "alps-label-studio"
            label_studio = front_end.enter_context(LabelStudioFrontEnd(server.address, adapter, cfg.training))

        def one(task):
            t0 = time.monotonic()
            result = run_strategy(client, digits, variants[task[0]], task[1], task[2], cfg, label_studio)
            return task, result, time.monotonic() - t0

        pool = ThreadPoolExecutor(max_workers=cfg.jobs)
        try:
            futures = [pool.submit(one, t) for t in tasks]
            for done, future in enumerate(as_completed(futures), 1):
                (variant, strategy, seed), result, seconds = future.result()
                rows += result
                last = result[-1]
                print(
                    f"[{done}/{len(tasks)}] {variant} {strategy} seed {seed}: {last['labels']} labels, "
                    f"accuracy {last['accuracy']:.3f}, {seconds:.1f} s ({time.monotonic() - started:.0f} s total)",
                    flush=True,
                )
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            print(f"[server] log tail:\n{server.log_tail()}", file=sys.stderr)
            if label_studio is not None:
                print(label_studio.log_tails(), file=sys.stderr)
            raise
        finally:
            pool.shutdown(wait=True)
            client.close()
            front_end.close()  # Label Studio and the adapter stop before the server
        exit_code = server.stop()
    if exit_code != 0:
        raise RuntimeError(f"alps-server exited with {exit_code} after SIGTERM")
    meta = {
        "config": asdict(cfg),
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine(),
        # Other work on the machine during the run (1, 5, 15 min load averages).
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "server_binary": str(server_binary),
        "git_commit": commit,
        "git_dirty": dirty,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "pool_sizes": {v: len(variants[v].pool) for v in cfg.variants},
        "test_size": len(variants[cfg.variants[0]].test),
        "command": " ".join([".venv/bin/python -m experiments.active_learning", *sys.argv[1:]]),
    }
    return rows, meta


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.active_learning",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results", help="results directory")
    parser.add_argument("--reduced", action="store_true", help="pipeline check: 1 seed, 3 rounds, 5 strategies")
    parser.add_argument(
        "--strategies", nargs="+", choices=ALL_STRATEGIES, help=f"default: {' '.join(STRATEGIES)}"
    )
    parser.add_argument("--seeds", type=int, help="number of seeds (0..N-1); default 10")
    parser.add_argument("--variants", nargs="+", choices=["balanced", "imbalanced"])
    parser.add_argument("--rounds", type=int, help="acquisition rounds on every variant; default balanced 30, imbalanced 18")
    parser.add_argument(
        "--no-seed-untrained", action="store_true",
        help="skip the seeded Predict that puts libtorch's global generator in a known state before each project is "
        "created (the untrained weights then depend on what the server did before)",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, help="runs (projects) in flight at once on the server; default 2")
    parser.add_argument("--server", type=Path, default=None, help="alps-server binary (default: target/release, else target/debug)")
    parser.add_argument(
        "--report", type=Path, default=None,
        help="Markdown report to write (default: EXPERIMENTS.md at the repository root; <out>/EXPERIMENTS.md with --reduced)",
    )  # fmt: skip
    parser.add_argument(
        "--via", choices=["grpc", "label-studio"], default="grpc",
        help="how labels reach the server: grpc (simulated annotator calling AddExamples + Train) or label-studio "
        "(annotations through Label Studio, training through alps-label-studio; bald, balanced pool, 1 seed, 5 rounds "
        "(2 with --reduced); needs .venv-ls and alps-label-studio next to the server binary)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = label_studio_config(args.reduced) if args.via == "label-studio" else reduced_config() if args.reduced else Config()
    if args.via == "label-studio" and (args.strategies or args.seeds is not None or args.variants):
        print("--via label-studio runs bald on the balanced pool with one seed: drop --strategies/--seeds/--variants", file=sys.stderr)
        return 2
    if args.strategies:
        cfg.strategies = args.strategies
    if args.seeds is not None:
        cfg.seeds = list(range(args.seeds))
    if args.variants:
        cfg.variants = args.variants
    if args.rounds is not None:
        cfg.rounds = {v: args.rounds for v in cfg.variants}
    if args.jobs is not None:
        cfg.jobs = args.jobs
    if args.no_seed_untrained:
        cfg.seed_untrained = False
    server_binary = args.server or default_server_binary()
    report_path = args.report or (args.out / "EXPERIMENTS.md" if args.reduced else ROOT / "EXPERIMENTS.md")

    rows, meta = run_experiment(cfg, args.out, server_binary)
    csv_name, meta_name = output_names(cfg)
    rounds_csv = args.out / csv_name
    write_rounds(rounds_csv, rows)
    (args.out / meta_name).write_text(json.dumps(meta, indent=2) + "\n")
    problems = check_rounds(rounds_csv, cfg)
    for problem in problems:
        print(f"[check] FAIL {problem}", file=sys.stderr)
    report.write_report(args.out, report_path)
    print(f"[done] {len(rows)} rounds in {meta['seconds']} s → {rounds_csv}, {report_path}", flush=True)
    if problems:
        return 1
    print("[check] pipeline checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
