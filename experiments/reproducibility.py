"""Does a fixed seed reproduce its numbers? (issue #15)

Runs ``typiclust`` × seed 0 × 3 rounds on both pools twice with ``--jobs 1`` (each run on its own
fresh alps-server), and compares every column of the two ``rounds.csv`` files except the timings.
``--without-seeded-untrained`` adds the same pair of runs without the harness's seeded Predict
before each project (``--no-seed-untrained``), to show where run-to-run differences come from.
If ``<out>/rounds.csv`` (the full run) holds the same rows, they are compared with the first
probe too: the full run usually has more runs in flight at once (``--jobs``), and libtorch's
random generator is process-global on the server. ``--schedule-check`` runs ``typiclust`` and
``schedule`` for the first 20 labels (2 rounds) on both pools, every seed of the experiment,
with ``--jobs 1``: the schedule ranks with typiclust there, so the two must agree row by row;
it also counts the seeds whose first 20 labels cover every rare class.

Writes ``<out>/reproducibility.json``, which ``experiments/report.py`` adds to the report.

    .venv/bin/python -m experiments.reproducibility --out experiments/results --server target/release/alps-server \
        --without-seeded-untrained --schedule-check 10
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMINGS = {"train_s", "acquire_s", "eval_s"}
STRATEGY, SEEDS, ROUNDS = "typiclust", 1, 3


def read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted(rows, key=lambda r: (r["variant"], r["strategy"], int(r["seed"]), int(r["round"])))


def probe(
    server: Path, out: Path, seeded: bool, strategies: tuple[str, ...] = (STRATEGY,), seeds: int = SEEDS, rounds: int = ROUNDS
) -> list[dict]:
    command = [
        sys.executable, "-m", "experiments.active_learning", "--strategies", *strategies, "--seeds", str(seeds),
        "--rounds", str(rounds), "--jobs", "1", "--server", str(server), "--out", str(out),
        "--report", str(out / "EXPERIMENTS.md"),
    ]  # fmt: skip
    if not seeded:
        command.append("--no-seed-untrained")
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return read(out / "rounds.csv")


def compare(a: list[dict], b: list[dict]) -> dict:
    """Exact comparison of every non-timing column, plus the largest accuracy difference."""
    columns = [c for c in a[0] if c not in TIMINGS] if a else []
    keys = lambda rows: [(r["variant"], r["strategy"], r["seed"], r["round"]) for r in rows]  # noqa: E731
    if keys(a) != keys(b):
        return {"verdict": "different rows", "rows": len(a), "compared_columns": len(columns)}
    differing = [i for i, (x, y) in enumerate(zip(a, b)) if any(x[c] != y[c] for c in columns)]
    max_diff = max((abs(float(x["accuracy"]) - float(y["accuracy"])) for x, y in zip(a, b)), default=0.0)
    return {
        "verdict": "identical" if not differing else "differ",
        "rows": len(a),
        "compared_columns": len(columns),
        "differing_rows": len(differing),
        "max_accuracy_difference": round(max_diff, 6),
        "differences": [
            {
                "row": f"{a[i]['variant']} {a[i]['strategy']} seed {a[i]['seed']} round {a[i]['round']}",
                "accuracy": [a[i]["accuracy"], b[i]["accuracy"]],
                "class_counts": [a[i]["class_counts"], b[i]["class_counts"]],
            }
            for i in differing
        ],
    }


def schedule_check(server: Path, out: Path, seeds: int) -> dict:
    """typiclust and schedule, first 20 labels, --jobs 1: identical rows, and rare-class coverage."""
    rows = probe(server, out, True, ("typiclust", "schedule"), seeds, 2)
    by = {s: [r for r in rows if r["strategy"] == s] for s in ("typiclust", "schedule")}
    skip = TIMINGS | {"strategy"}
    columns = [c for c in rows[0] if c not in skip]
    differing = [
        f"{a['variant']} seed {a['seed']} round {a['round']}"
        for a, b in zip(by["typiclust"], by["schedule"])
        if any(a[c] != b[c] for c in columns)
    ]
    coverage = {
        s: sum(1 for r in rs if r["variant"] == "imbalanced" and r["labels"] == "20" and r["rare_classes_labelled"] == "9")
        for s, rs in by.items()
    }
    return {
        "seeds": seeds,
        "verdict": "identical" if not differing else "differ",
        "rows": len(by["typiclust"]),
        "compared_columns": len(columns),
        "differing": differing,
        "all_rare_covered_at_20": coverage,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    parser.add_argument("--server", type=Path, default=ROOT / "target" / "release" / "alps-server")
    parser.add_argument("--without-seeded-untrained", action="store_true", help="also run the pair without the seeded Predict")
    parser.add_argument("--schedule-check", type=int, metavar="SEEDS", help="typiclust vs schedule, first 20 labels, SEEDS seeds")
    args = parser.parse_args(argv)
    result: dict = {"command": " ".join([".venv/bin/python -m experiments.reproducibility", *sys.argv[1:]])}
    with tempfile.TemporaryDirectory(prefix="alps-repro-") as tmp:
        first = probe(args.server, Path(tmp) / "a", seeded=True)
        second = probe(args.server, Path(tmp) / "b", seeded=True)
        result.update(compare(first, second))
        if args.without_seeded_untrained:
            result["unseeded"] = compare(probe(args.server, Path(tmp) / "c", False), probe(args.server, Path(tmp) / "d", False))
        if args.schedule_check:
            result["schedule_check"] = schedule_check(args.server, Path(tmp) / "e", args.schedule_check)
    full_path = args.out / "rounds.csv"
    if full_path.exists():
        wanted = {(r["variant"], r["strategy"], r["seed"], r["round"]) for r in first}
        full = [r for r in read(full_path) if (r["variant"], r["strategy"], r["seed"], r["round"]) in wanted]
        meta_path = args.out / "run.json"
        jobs = json.loads(meta_path.read_text()).get("config", {}).get("jobs") if meta_path.exists() else None
        if len(full) == len(first):
            result["full_run"] = {"jobs": jobs, **compare(first, full)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reproducibility.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "differences"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
