"""The active-learning experiment of ALPS (issue #7), through the public gRPC API only.

Claim under test (Gal, Islam & Ghahramani 2017, "Deep Bayesian Active Learning with Image Data";
Atighehchian et al. 2020, "Bayesian active learning for production"): ordering the labelling
work by Bayesian uncertainty (MC-Dropout + BALD) reaches a given test accuracy with fewer labels
than labelling in random order, and helps most on under-represented classes.

Method (pool-based active learning with a simulated annotator), per variant × strategy × seed:

1. CreateProject: an MLP (8x8 input → 256 → 128, MC-Dropout head) for the ten digits.
2. Label an initial labelled set drawn at random from the pool (the same set for every strategy
   of a seed), train, make sure the new model version is active.
3. Repeat for ``rounds``: rank the unlabelled pool with the strategy's acquisition function
   (InferenceService.Rank, ``mc_iterations`` MC-Dropout passes; ``random`` draws client-side),
   "label" the top ``query_size`` items from ground truth, retrain, and evaluate the new version
   on the fixed, balanced test set with Predict (accuracy and per-class F1 computed here).

Every round is a row of ``<out>/rounds.csv``; ``experiments/report.py`` turns the CSV into the
learning-curve plots and the tables of ``EXPERIMENTS.md``.

``--via label-studio`` runs ``bald`` on the balanced pool for a few rounds (one seed) with Label
Studio as the labelling front end (``experiments/label_studio_annotator.py``): the annotator takes
tasks in Label Studio's order by the adapter's prediction score (BALD) instead of calling Rank,
annotates through Label Studio's API, and training goes through the adapter's webhook path. Its
rows (strategy ``bald-via-ls``) go to ``<out>/label_studio_rounds.csv``, which the report adds.

    .venv/bin/python -m experiments.active_learning --out experiments/results        # full
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
from experiments.strategies import STRATEGIES, acquire

ROOT = Path(__file__).resolve().parent.parent
# Seed of the Predict dropout masks on the test set: the evaluation is reproducible on CPU.
EVAL_SEED = 7


@dataclass
class Config:
    """Everything that defines a run; written to ``<out>/run.json``."""

    variants: list[str] = field(default_factory=lambda: ["balanced", "imbalanced"])
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    initial_size: int = 20
    query_size: int = 10
    # Acquisition rounds per variant (labels at the end = initial_size + rounds × query_size).
    rounds: dict[str, int] = field(default_factory=lambda: {"balanced": 28, "imbalanced": 18})
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


def reduced_config() -> Config:
    """One seed, two rounds, three strategies (random, a per-item and a batch heuristic), small
    pools: checks the pipeline, not the science."""
    return Config(
        strategies=["random", "bald", "batch_bald"],
        seeds=[0],
        rounds={"balanced": 2, "imbalanced": 2},
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


def run_strategy(
    client: AlpsClient, digits: Digits, variant: Variant, strategy: str, seed: int, cfg: Config, label_studio=None
) -> list[dict]:
    """One active-learning run: initial labelled set, then ``rounds`` acquisition rounds.
    ``label_studio``: the running front end for ``--via label-studio``."""
    via_ls = cfg.via == "label-studio"
    label = strategy + VIA_LS_SUFFIX if via_ls else strategy
    pid = project_id(variant.name, label, seed)
    if not via_ls:  # else the adapter creates the ALPS project for the Label Studio project
        client.create_project(pid, CLASSES, IMAGE_SIDE, cfg.mc_iterations, cfg.head_dropout)
    annotator: Annotator = make_annotator(cfg.via, client, pid, digits, cfg.training, label_studio, variant.pool)
    # The initial labelled set depends on the seed only, so strategies are compared pairwise.
    initial_rng = np.random.default_rng([seed, 0])
    acquisition_rng = np.random.default_rng([seed, 1])
    pool = list(variant.pool)
    initial = [pool[i] for i in sorted(initial_rng.choice(len(pool), size=cfg.initial_size, replace=False))]
    labelled = set(initial)
    rows = []
    query, acquire_s, scored_by = initial, 0.0, ""
    for round_ in range(cfg.rounds[variant.name] + 1):
        started = time.monotonic()
        version = annotator.label_and_retrain(query, seed * 1000 + round_)
        train_s = time.monotonic() - started
        started = time.monotonic()
        metrics = evaluate(client, annotator.project_id, digits, variant, cfg)
        eval_s = time.monotonic() - started
        labels = [digits.labels[i] for i in labelled]
        rows.append(
            {
                "variant": variant.name,
                "strategy": label,
                "seed": seed,
                "round": round_,
                "labels": len(labelled),
                "model_version": version,
                "acquired_with_version": scored_by,
                **metrics,
                "rare_labelled": sum(1 for y in labels if y in variant.rare_classes) if variant.rare_classes else "",
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
            raise RuntimeError(f"{pid}: round {round_ + 1} ranked with {chosen.model_version}, trained {version}")
        query, scored_by = chosen.ids, chosen.model_version
        if len(set(query)) != len(query) or labelled & set(query) or len(query) != min(cfg.query_size, len(unlabelled)):
            raise RuntimeError(f"{pid}: acquisition returned duplicate or labelled items, or not {cfg.query_size}: {query}")
        labelled |= set(query)
    return rows


COLUMNS = [
    "variant", "strategy", "seed", "round", "labels", "model_version", "acquired_with_version",
    "eval_model_version", "accuracy", "macro_f1", "rare_f1",
    *[f"f1_{c}" for c in range(len(CLASSES))],
    "rare_labelled", "train_s", "acquire_s", "eval_s",
]  # fmt: skip


def write_rounds(path: Path, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: (r["variant"], r["strategy"], r["seed"], r["round"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})


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
        for i, row in enumerate(run):
            accuracy = float(row["accuracy"])
            if not (math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0):
                problems.append(f"{key} round {i}: accuracy {row['accuracy']} not in [0, 1]")
            if int(row["labels"]) != cfg.initial_size + i * cfg.query_size:
                problems.append(f"{key} round {i}: {row['labels']} labels, expected {cfg.initial_size + i * cfg.query_size}")
            if row["eval_model_version"] != row["model_version"]:
                problems.append(f"{key} round {i}: evaluated {row['eval_model_version']}, trained {row['model_version']}")
            if i > 0 and row["model_version"] == run[i - 1]["model_version"]:
                problems.append(f"{key} round {i}: model version {row['model_version']} did not change")
            if i > 0 and key[1] != "random" and row["acquired_with_version"] != run[i - 1]["model_version"]:
                problems.append(f"{key} round {i}: acquired with {row['acquired_with_version']!r}")
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


def run_experiment(cfg: Config, out: Path, server_binary: Path) -> tuple[list[dict], dict]:
    """Starts a private server, runs every variant × strategy × seed, stops the server."""
    started = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="alps-digits-") as images_dir:
        digits = load_digits_as_png(Path(images_dir))
    variants = make_variants(digits, cfg.test_per_class, cfg.majority_class, cfg.rare_per_class, cfg.pool_limit)
    for name in cfg.variants:
        print(f"[data] {variants[name].describe(digits)}", flush=True)
    tasks = [(v, s, seed) for seed in cfg.seeds for v in cfg.variants for s in cfg.strategies]
    # The slowest runs (batch heuristics on the big pool) first, so the workers finish together.
    tasks.sort(key=lambda t: (t[1] != "batch_bald", t[0] != "balanced"))
    rows: list[dict] = []
    with AlpsServer(server_binary) as server, contextlib.ExitStack() as front_end:
        client = AlpsClient(server.address)
        missing = {s for s in cfg.strategies if s != "random"} - client.heuristic_names()
        if missing:
            raise RuntimeError(f"the server has no heuristic {sorted(missing)}; loaded: {sorted(client.heuristic_names())}")
        print(f"[server] {server_binary} on {server.address}, {len(tasks)} runs, {cfg.jobs} at a time", flush=True)
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
        "git_commit": git_commit(),
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
    parser.add_argument("--reduced", action="store_true", help="pipeline check: 1 seed, 2 rounds, 3 strategies")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, help="default: all six")
    parser.add_argument("--seeds", type=int, help="number of seeds (0..N-1); default 5")
    parser.add_argument("--variants", nargs="+", choices=["balanced", "imbalanced"])
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
    if args.jobs is not None:
        cfg.jobs = args.jobs
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
