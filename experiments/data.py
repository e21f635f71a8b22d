"""Data for the experiment: the scikit-learn digits data set (1,797 real 8x8 handwritten digits,
shipped inside the package), written out as PNG files by ``scripts/write_digits.py`` and split
into a fixed, balanced test set and an unlabelled pool in two variants:

* ``balanced``: every digit not in the test set (about 130 per class);
* ``imbalanced``: one majority class keeps all of its non-test digits (about half of the pool),
  each other ("rare") class keeps only a few.

The split is fixed by ``DATA_SEED`` so that every strategy and seed sees the same pool and test
set; the seeds of the experiment vary the initial labelled set, training and acquisition.
"""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CLASSES = [str(d) for d in range(10)]
DATA_SEED = 20170311  # fixed split; not a tuning knob
# Digits at their native resolution: the server reads them as 8x8 grayscale.
IMAGE_SIDE = 8


def _write_digits_module():
    spec = importlib.util.spec_from_file_location("write_digits", ROOT / "scripts" / "write_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Digits:
    """Every digit as PNG bytes, keyed by item id, with its true class (the simulated annotator's
    ground truth)."""

    images: dict[str, bytes]
    labels: dict[str, int]

    @property
    def ids(self) -> list[str]:
        return sorted(self.images)


def load_digits_as_png(out_dir: Path, side: int = IMAGE_SIDE) -> Digits:
    """Writes the digits with ``scripts/write_digits.py`` into ``out_dir`` and reads them back."""
    rows = _write_digits_module().write_digits(out_dir, size=side)
    images, labels = {}, {}
    for index, name, label in rows:
        item = f"digit-{index:04d}"
        images[item] = (out_dir / name).read_bytes()
        labels[item] = int(label)
    # labels.csv is the file other tools would read; check it says the same.
    with open(out_dir / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            assert labels[f"digit-{int(row['index']):04d}"] == int(row["label"])
    return Digits(images, labels)


@dataclass
class Variant:
    """One pool / test split."""

    name: str
    pool: list[str]
    test: list[str]
    # Classes counted as rare (under-represented in the pool); empty for the balanced variant.
    rare_classes: list[int] = field(default_factory=list)
    majority_class: int | None = None

    def describe(self, digits: Digits) -> str:
        counts = np.bincount([digits.labels[i] for i in self.pool], minlength=len(CLASSES))
        return f"{self.name}: pool {len(self.pool)} (per class {counts.tolist()}), test {len(self.test)}"


def make_variants(
    digits: Digits,
    test_per_class: int,
    majority_class: int,
    rare_per_class: int,
    pool_limit: int | None = None,
) -> dict[str, Variant]:
    """The balanced and imbalanced variants over one fixed balanced test set.

    ``pool_limit`` caps the balanced pool (a random, class-stratified subset) for the reduced
    run; the imbalanced pool is capped by ``rare_per_class`` and the majority class's size.
    """
    rng = np.random.default_rng(DATA_SEED)
    by_class: dict[int, list[str]] = {c: [] for c in range(len(CLASSES))}
    for item in digits.ids:
        by_class[digits.labels[item]].append(item)
    test, rest = [], {}
    for c, items in by_class.items():
        shuffled = [items[i] for i in rng.permutation(len(items))]
        test += shuffled[:test_per_class]
        rest[c] = shuffled[test_per_class:]
    balanced = [item for c in rest for item in rest[c]]
    if pool_limit is not None and pool_limit < len(balanced):
        per_class = pool_limit // len(CLASSES)
        balanced = [item for c in rest for item in rest[c][:per_class]]
    majority_size = len(rest[majority_class]) if pool_limit is None else min(len(rest[majority_class]), pool_limit // 2)
    imbalanced = rest[majority_class][:majority_size] + [
        item for c in rest if c != majority_class for item in rest[c][:rare_per_class]
    ]
    rare = [c for c in range(len(CLASSES)) if c != majority_class]
    return {
        "balanced": Variant("balanced", sorted(balanced), sorted(test)),
        "imbalanced": Variant("imbalanced", sorted(imbalanced), sorted(test), rare, majority_class),
    }
