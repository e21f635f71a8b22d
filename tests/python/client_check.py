"""Exercises the installed Python client (`alps-client`, proto/python) against a running
alps-server, as a user of it would: create a project, add a folder of labelled images, train
with the progress bar, rank a folder, predict, and the `alps-client` command line. Prints a
JSON report for tests/python_client.rs.

    .venv/bin/python tests/python/client_check.py --grpc HOST:PORT --workdir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from alps_client import Client, TrainingFailed, pb

SIDE = 8


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((SIDE, SIDE), value, np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def write_folders(root: Path) -> tuple[Path, Path]:
    labelled, pool = root / "labelled", root / "pool"
    for name, value in (("dark", 20), ("light", 230)):
        (labelled / name).mkdir(parents=True)
        for i in range(6):
            (labelled / name / f"{i}.png").write_bytes(png(value + i))
    pool.mkdir()
    for i, value in enumerate((10, 60, 128, 200, 250)):
        (pool / f"item{i}.png").write_bytes(png(value))
    (pool / "notes.txt").write_text("not an image: skipped")
    return labelled, pool


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    args = parser.parse_args()
    labelled, pool = write_folders(args.workdir)
    report: dict = {}
    with Client(args.grpc) as alps:
        project = alps.create_project("shades", ["dark", "light"], width=SIDE, height=SIDE, channels=1, architecture="mlp")
        report["created"] = {"id": project.id, "classes": list(project.classes), "version": project.active_model_version}
        first = alps.add_folder("shades", labelled)
        again = alps.add_folder("shades", labelled)
        report["added"] = [first.inserted, again.inserted, again.unchanged]
        progress = io.StringIO()
        with contextlib.redirect_stderr(progress):
            job = alps.train("shades", epochs=60, learning_rate=0.05, seed=3)
        report["trained"] = {"version": job.model_version, "percent": job.percent, "bar": "100%" in progress.getvalue()}
        ranked = alps.rank_folder("shades", pool, query_size=3, heuristic="bald", seed=5)
        report["ranked"] = [[path.name, score] for path, score in ranked]
        response = alps.predict("shades", [png(15), png(240)], seed=1)
        report["predicted"] = [r.prediction.class_name for r in response.results]
        try:
            alps.create_project("../x", ["a", "b"], width=SIDE, height=SIDE)
        except grpc.RpcError as error:
            report["bad_id"] = error.code().name
        try:
            alps.add_folder("shades", pool)
        except ValueError as error:
            report["flat_folder"] = str(error)
        listed = alps.projects.ListProjects(pb.projects_pb2.ListProjectsRequest())
        report["raw_stub"] = [p.id for p in listed.projects]
        (pool / "broken.png").write_bytes(b"\x89PNG not really")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kept = alps.rank_folder("shades", pool, query_size=10, seed=5)
        report["unreadable"] = {"ranked": len(kept), "warning": str(caught[0].message) if caught else ""}
        (pool / "broken.png").unlink()
        try:
            alps.create_project("bad", ["only"], width=SIDE, height=SIDE, channels=1, architecture="mlp")
            alps.train("bad", epochs=1, progress=False)
        except TrainingFailed as error:
            report["training_failed"] = error.job.error
        except grpc.RpcError as error:
            report["training_failed"] = f"{error.code().name}: {error.details()}"
    cli = [sys.executable, "-m", "alps_client.cli", "--address", args.grpc]
    ranked = subprocess.run([*cli, "rank-folder", "shades", str(pool), "--query-size", "2"], capture_output=True, text=True)
    report["cli_rank"] = {"code": ranked.returncode, "lines": ranked.stdout.strip().splitlines()}
    full = subprocess.run([*cli, "train", "shades", "--epochs", "1", "--seed", "1", "--full"], capture_output=True, text=True)
    report["cli_full"] = {"code": full.returncode, "stdout": full.stdout.strip(), "stderr": full.stderr.strip()}
    # Versions, a rollback and predictions from the command line.
    run = lambda *words: subprocess.run([*cli, *words], capture_output=True, text=True)  # noqa: E731
    counted = run("examples", "shades")
    listed = run("examples", "shades", "--list")
    report["cli_examples"] = {
        "codes": [counted.returncode, listed.returncode],
        "counted": counted.stdout.strip(),
        "listed": [line.split("\t") for line in listed.stdout.strip().splitlines()],
        "listed_total": listed.stderr.strip(),
    }
    before = run("versions", "shades")
    rolled_back = run("activate", "shades", "v1")
    after = run("versions", "shades")
    images = [str(labelled / "dark" / "0.png"), str(labelled / "light" / "0.png")]
    predicted = run("predict", "shades", *images, "--seed", "4")
    unreadable = run("predict", "shades", images[0], str(pool / "notes.txt"))
    unknown = run("activate", "shades", "v9")
    # A third class: the versions no longer fit the project, and the listing says so.
    run("create-project", "shades", "--classes", "dark,light,grey", "--size", str(SIDE), "--channels", "1", "--architecture", "mlp")
    changed = run("versions", "shades")
    report["cli_versions"] = {
        "codes": [r.returncode for r in (before, rolled_back, after, predicted)],
        "before": before.stdout.splitlines(),
        "activated": rolled_back.stdout.strip(),
        "after": after.stdout.splitlines(),
        "predicted": [line.split("\t") for line in predicted.stdout.strip().splitlines()],
        "served": predicted.stderr.strip(),
        "unreadable": {"code": unreadable.returncode, "lines": [line.split("\t") for line in unreadable.stdout.strip().splitlines()]},
        "unknown": {"code": unknown.returncode, "stderr": unknown.stderr.strip()},
        "changed": changed.stdout.splitlines(),
    }
    missing = subprocess.run([*cli, "train", "no-such-project"], capture_output=True, text=True)
    report["cli_missing"] = {"code": missing.returncode, "stderr": missing.stderr.strip()}
    # The README's digits, written by class, added from the command line.
    digits = args.workdir / "digits"
    writer = Path(__file__).resolve().parents[2] / "scripts" / "write_digits.py"
    written = subprocess.run(
        [sys.executable, str(writer), str(digits), "--limit", "40", "--by-class"], capture_output=True, text=True
    )
    classes = ",".join(str(digit) for digit in range(10))
    create = [*cli, "create-project", "digits", "--classes", classes, "--size", "32", "--channels", "1"]
    created = subprocess.run([*create, "--architecture", "small_cnn"], capture_output=True, text=True)
    added = subprocess.run([*cli, "add-folder", "digits", str(digits)], capture_output=True, text=True)
    report["cli_digits"] = {
        "codes": [written.returncode, created.returncode, added.returncode],
        "folders": sorted(p.name for p in digits.iterdir() if p.is_dir()),
        "stdout": added.stdout.strip(),
        "stderr": written.stderr.strip() + created.stderr.strip() + added.stderr.strip(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
